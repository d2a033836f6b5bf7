"""Logs: text or JSON lines; a line per connection at debug level; never a key."""
import asyncio
import json
import re
import signal

import pytest
import websockets
from conftest import recv, send, until

from tickcast.keys import KeyStore


@pytest.fixture
def node(serve_process):
    return lambda *extra, keys=None: serve_process("--feed", "none", "--drain-seconds", "0", *extra, keys=keys)

async def test_json_lines_with_a_line_per_connection_and_no_key(node, tmp_path):
    store = KeyStore(tmp_path / "keys.sqlite3")
    key, free = store.add("max"), store.add("free")
    store.close()
    server = node("--log-format", "json", "--log-level", "debug", keys=tmp_path / "keys.sqlite3")
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/?key={key}") as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/") as ws:     # the auth-message path
        await send(ws, {"action": "auth", "key": free})
        assert (await recv(ws))["type"] == "authenticated"
    with pytest.raises(websockets.InvalidStatus):                             # a key not in the store
        await websockets.connect(f"ws://127.0.0.1:{server.port}/?key=mk_live_{'Z' * 32}")
    await asyncio.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(10)
    log = server.stop()
    # Every line is JSON, the command line's own (the key store, the port served) included.
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any(r["msg"].startswith("key store ") for r in lines)
    assert any(" serving ws://127.0.0.1:" in r["msg"] for r in lines)
    opened = [r for r in lines if r["msg"] == "connection opened"]
    closed = [r for r in lines if r["msg"] == "connection closed"]
    assert len(opened) == 2 and len(closed) == 2
    first = next(r for r in closed if r["conn"] == opened[0]["conn"])
    assert first["dialect"] == "marketai" and first["tier"] == "max" and first["key"] == key[:12] + "…"
    assert first["peer"] == "127.0.0.1" and first["code"] == 1000 and first["by"] == "peer"
    assert 0 <= first["duration"] < 5
    second = next(r for r in closed if r["conn"] == opened[1]["conn"])
    assert second["tier"] == "free" and second["key"] == free[:12] + "…"
    refusals = [r for r in lines if r["level"] == "warning" and "refused a connection" in r["msg"]]
    assert len(refusals) == 1 and "401 UNAUTHORIZED" in refusals[0]["msg"]
    # No key ever appears whole, not even a refused one.
    for secret in (key, free, "mk_live_" + "Z" * 32, key[12:], free[12:]):
        assert secret not in log


async def test_refusals_are_logged_a_few_lines_a_second(node):
    server = node()
    for _ in range(200):
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(f"ws://127.0.0.1:{server.port}/?key=mk_live_{'Q' * 32}")
    async with websockets.connect(server.url()) as ws:         # served on
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}
    # Within a second a summary line says how many it held back.
    assert await until(lambda: "more like it held back" in "".join(server.log), 3), "no summary line"
    log = server.stop()
    refused = [line for line in log.splitlines() if "refused a connection" in line]
    assert 5 <= len(refused) <= 40, len(refused)
    # Every refusal is in a line or a summary's count, none twice.
    held = sum(int(m) for m in re.findall(r"and (\d+) more like it held back", log))
    assert len(refused) + held == 200, (len(refused), held)
