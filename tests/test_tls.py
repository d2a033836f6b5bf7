"""wss:// on the same port for both dialects, with certificates the tests make (trustme)."""
import asyncio
import json
import re
import signal
import ssl
import subprocess
import warnings

import pytest
import trustme
import websockets
from conftest import recv, send, subscribe
from processes import TICKCAST

from tickcast.feeds.market import SimulatedMarket
from tickcast.keys import KeyStore


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def files(ca, tmp_path, name="server"):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def client(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def tls_server(make_server, ca, tmp_path):
    certfile, keyfile = files(ca, tmp_path)
    return await make_server(feed=SimulatedMarket(seed=1, tick=0.05), certfile=certfile,
                             keyfile=keyfile)


async def test_market_ai_over_wss(tls_server, key, ca):
    async with websockets.connect(f"wss://127.0.0.1:{tls_server.port}/?key={key}", ssl=client(ca)) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        updates = [await recv(ws) for _ in range(5)]            # a snapshot, then ticks: corked writes
        assert all(u["type"] == "update" and u["channel"] == "quotes" for u in updates)
        await send(ws, {"action": "ping"})
        while (msg := await recv(ws))["type"] != "pong":
            assert msg["type"] == "update"


async def test_v4_over_wss(tls_server, ca):
    async with websockets.connect(f"wss://127.0.0.1:{tls_server.port}/v4/public/ws", ssl=client(ca)) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 3) == "pong"


async def test_a_refusal_over_wss_is_the_json_body(tls_server, ca):
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"wss://127.0.0.1:{tls_server.port}/?key=mk_live_{'x' * 32}", ssl=client(ca))
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == "UNAUTHORIZED"


async def test_old_tls_and_plain_ws_are_refused(tls_server, key, ca):
    old = client(ca)
    with warnings.catch_warnings():               # deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        await websockets.connect(f"wss://127.0.0.1:{tls_server.port}/?key={key}", ssl=old, open_timeout=3)
    with pytest.raises((websockets.InvalidMessage, websockets.InvalidHandshake, OSError, asyncio.TimeoutError)):
        await websockets.connect(f"ws://127.0.0.1:{tls_server.port}/?key={key}", open_timeout=3)
    # The server serves on.
    async with websockets.connect(f"wss://127.0.0.1:{tls_server.port}/?key={key}", ssl=client(ca)) as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_sighup_loads_a_renewed_certificate(ca, tmp_path):
    certfile, keyfile = files(ca, tmp_path)
    store = KeyStore(tmp_path / "k.sqlite3")
    key = store.add("max")
    store.close()
    proc = subprocess.Popen([*TICKCAST, "serve", "--port", "0", "--keys", str(tmp_path / "k.sqlite3"),
                             "--certfile", certfile, "--keyfile", keyfile, "--feed", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        while port is None:
            line = proc.stderr.readline()
            assert line, "the server did not start"
            m = re.search(r"serving wss://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        held = await websockets.connect(f"wss://127.0.0.1:{port}/?key={key}", ssl=client(ca))
        other = trustme.CA()                        # renewed by another authority, in place
        renewed = other.issue_cert("127.0.0.1")
        renewed.private_key_and_cert_chain_pem.write_to_path(certfile)
        renewed.private_key_pem.write_to_path(keyfile)
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        async with websockets.connect(f"wss://127.0.0.1:{port}/?key={key}", ssl=client(other)) as ws:
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
        await send(held, {"action": "ping"})        # the open connection keeps its session
        assert await recv(held) == {"type": "pong"}
        await held.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert "TLS certificate reloaded" in err


@pytest.mark.parametrize("case", ["missing", "garbage", "alone"])
def test_bad_certificate_files_get_one_line(tmp_path, ca, case):
    certfile, keyfile = files(ca, tmp_path)
    KeyStore(tmp_path / "k.sqlite3").close()
    if case == "missing":
        flags = ["--certfile", str(tmp_path / "nope.pem"), "--keyfile", keyfile]
        reason = "no such file"
    elif case == "garbage":
        (tmp_path / "bad.pem").write_text("not a certificate\n")
        flags = ["--certfile", str(tmp_path / "bad.pem"), "--keyfile", keyfile]
        reason = "cannot use --certfile"
    else:
        flags = ["--certfile", certfile]
        reason = "--certfile and --keyfile go together"
    out = subprocess.run([*TICKCAST, "serve", "--port", "0", "--keys", str(tmp_path / "k.sqlite3"), *flags],
                         capture_output=True, text=True, timeout=30)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and reason in lines[-1] and "Traceback" not in out.stderr, out.stderr
    assert len([line for line in lines if "tickcast serve" in line]) == 1
