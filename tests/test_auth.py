"""Authentication (?key= and the auth message) and tier connection limits."""
import asyncio
import json

import pytest
import websockets
from conftest import closed_with, recv, send, silent, subscribe, until, url

UNAUTHORIZED_BODY = {"ok": False, "error": {"code": "UNAUTHORIZED", "message": "Invalid API key."}}


async def http_error(uri):
    with pytest.raises(websockets.InvalidStatus) as err:
        async with websockets.connect(uri):
            pass
    return err.value.response.status_code, json.loads(err.value.response.body)


async def test_query_key_connects_and_subscribes(server, key):
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        assert await recv(ws) == {"type": "subscribed", "channel": "trades", "symbols": ["BTC/USDT"]}


@pytest.mark.parametrize("bad", ["mk_live_nope", "", "mk_live_" + "A" * 32, "x" * 300])
async def test_bad_query_key_is_401_before_handshake(server, bad):
    assert await http_error(url(server, bad)) == (401, UNAUTHORIZED_BODY)


async def test_revoked_key_is_refused(server, keystore, key):
    assert keystore.revoke(key)
    assert await http_error(url(server, key)) == (401, UNAUTHORIZED_BODY)


async def test_connections_on_one_key_share_its_principal(server, keystore, key):
    # A fleet on one key holds one Principal (and one copy of the hash), not one each.
    other = keystore.add("pro")
    async with websockets.connect(url(server, key)) as a, websockets.connect(url(server, key)) as b, \
            websockets.connect(url(server, other)) as c:
        for ws in (a, b, c):
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
        first, second, third = (conn.principal for conn in server.connections.values())
        assert first is second and first is not third
        assert (first.tier.name, third.tier.name) == ("max", "pro")


async def test_auth_message(server, keystore):
    k = keystore.add("basic")
    async with websockets.connect(url(server)) as ws:
        await send(ws, {"action": "auth", "key": k})
        assert await recv(ws) == {"type": "authenticated", "tier": "basic"}
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_auth_message_bad_key_closes_1008(server):
    async with websockets.connect(url(server)) as ws:
        await send(ws, {"action": "auth", "key": "mk_live_wrong"})
        assert await recv(ws) == {"type": "error", "code": "UNAUTHORIZED", "message": "Invalid API key."}
        assert (await closed_with(ws))[0] == 1008


async def test_actions_before_auth_are_refused_and_get_no_data(server, key):
    async with websockets.connect(url(server)) as ws:
        await send(ws, subscribe({"type": "trades"}))
        assert await recv(ws) == {"type": "error", "code": "UNAUTHORIZED", "message": "Authenticate first."}
        await send(ws, {"action": "ping"})
        assert (await recv(ws))["code"] == "UNAUTHORIZED"
        server.marketai.publish("trades", "BTC/USDT", {"symbol": "BTC/USDT"})
        assert await silent(ws)
        # Still open: auth works afterwards.
        await send(ws, {"action": "auth", "key": key})
        assert (await recv(ws))["type"] == "authenticated"


async def test_auth_timeout_closes_1008(make_server):
    server = await make_server(auth_timeout=0.5)
    async with websockets.connect(url(server)) as ws:
        assert await recv(ws) == {"type": "error", "code": "UNAUTHORIZED", "message": "Authentication timed out."}
        assert (await closed_with(ws))[0] == 1008


async def test_connection_limit_query_key_is_429(server, keystore):
    k = keystore.add("free")
    async with websockets.connect(url(server, k)):
        status, body = await http_error(url(server, k))
        assert status == 429
        assert body == {"ok": False, "error": {"code": "CONNECTION_LIMIT",
                                               "message": "Connection limit (1) reached for your tier."}}


async def test_connection_limit_auth_message_frame_then_1008(server, keystore):
    k = keystore.add("free")
    async with websockets.connect(url(server, k)):
        async with websockets.connect(url(server)) as ws:
            await send(ws, {"action": "auth", "key": k})
            assert await recv(ws) == {"ok": False, "error": {
                "code": "CONNECTION_LIMIT", "message": "Connection limit (1) reached for your tier."}}
            assert (await closed_with(ws))[0] == 1008


async def _try(uri, auth_key=None):
    try:
        ws = await websockets.connect(uri)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, None
    if auth_key is not None:
        await send(ws, {"action": "auth", "key": auth_key})
        reply = await recv(ws)
        if reply.get("type") != "authenticated":
            await ws.close()
            return 1008, None
    return 101, ws


@pytest.mark.parametrize("tier,limit", [("free", 1), ("basic", 5), ("pro", 15)])
async def test_exactly_n_accepted_under_concurrent_connects(server, keystore, tier, limit):
    k = keystore.add(tier)
    # Half by ?key=, half by auth message, all at once.
    attempts = [_try(url(server, k)) if i % 2 else _try(url(server), k) for i in range(limit * 2 + 6)]
    results = await asyncio.gather(*attempts)
    opened = [ws for status, ws in results if ws is not None]
    try:
        assert len(opened) == limit
        assert server.places.count(server.keystore.lookup(k).key_hash) == limit
        assert {s for s, _ in results} <= {101, 429, 1008}
    finally:
        for ws in opened:
            await ws.close()


async def test_limit_released_on_every_kind_of_disconnect(make_server, keystore):
    server = await make_server(max_queue=64 * 1024, sndbuf=16 * 1024)
    k = keystore.add("free")
    key_hash = keystore.lookup(k).key_hash

    async def wait_released():
        assert await until(lambda: server.places.count(key_hash) == 0, 5), "connection not released"

    # 1. A clean close by the client.
    ws = await websockets.connect(url(server, k))
    await ws.close()
    await wait_released()
    # 2. The TCP connection dropped without a close frame.
    ws = await websockets.connect(url(server, k))
    ws.transport.abort()
    await wait_released()
    # 3. Closed by the server (a frame over the size limit).
    ws = await websockets.connect(url(server, k), max_size=None)
    await ws.send("x" * 70_000)
    assert (await closed_with(ws))[0] == 1009
    await wait_released()
    # 4. Authenticated by message, then the client goes away.
    ws = await websockets.connect(url(server))
    await send(ws, {"action": "auth", "key": k})
    await recv(ws)
    assert server.places.count(key_hash) == 1
    await ws.close()
    await wait_released()
    # The key can connect again.
    async with websockets.connect(url(server, k)) as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_failed_handshake_holds_no_place(server, keystore):
    """An upgrade request refused in its handshake (here: no
    Sec-WebSocket-Key, 400, found before the request is routed) holds no
    place of its key."""
    k = keystore.add("free")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /?key={k} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode())
    status = await reader.readline()
    writer.close()
    assert b" 400 " in status
    async with websockets.connect(url(server, k)) as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_any_path_but_v4s_is_the_market_ai_endpoint(server, key):
    # As mounted under a prefix by a reverse proxy; the key is checked there too.
    for path in ("/market", "/api/ws/", "/v4/public/ws/extra"):
        async with websockets.connect(url(server, key, path=path)) as ws:
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
    status, body = await http_error(url(server, "mk_live_" + "x" * 32, path="/market"))
    assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"


async def test_revoking_a_key_closes_its_live_connections(server, keystore, tmp_path):
    # From another process, as an operator would, and from this one: every
    # live connection of the key is closed within a second; other keys' stay.
    import subprocess
    import sys
    import time

    doomed, kept, again = keystore.add("pro"), keystore.add("pro"), keystore.add("pro")
    a1 = await websockets.connect(url(server, doomed))
    a2 = await websockets.connect(url(server))                       # through the auth message
    await send(a2, {"action": "auth", "key": doomed})
    assert (await recv(a2))["type"] == "authenticated"
    b = await websockets.connect(url(server, kept))
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tickcast", "keys", "revoke", doomed,
                                                   "--keys", str(keystore.path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    started = time.monotonic()
    for ws in (a1, a2):
        assert await recv(ws) == {"type": "error", "code": "UNAUTHORIZED", "message": "API key revoked."}
        assert await closed_with(ws) == (1008, "API key revoked")
    assert time.monotonic() - started < 1.5
    assert await http_error(url(server, doomed)) == (401, UNAUTHORIZED_BODY)
    await send(b, {"action": "ping"})
    assert await recv(b) == {"type": "pong"}
    c = await websockets.connect(url(server, again))
    keystore.revoke(again)                                           # in this process
    assert (await recv(c))["code"] == "UNAUTHORIZED"
    assert await closed_with(c) == (1008, "API key revoked")
    await b.close()


@pytest.mark.parametrize("query", ["key={k}", "x=1&key={k}", "key={k}&x=1", "key={k}&key=mk_live_nope"])
async def test_the_key_is_read_from_any_place_in_the_query(server, key, query):
    async with websockets.connect(f"ws://127.0.0.1:{server.port}/?{query.format(k=key)}") as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}
