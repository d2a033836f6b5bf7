"""Hostile input: what one client sends must never cost the others anything.

Each input here was found by probing the server as an attacker would; each
test sends it over a real socket and checks the documented answer, that the
connection (or at least every other one) goes on, and that nothing was
logged as a traceback.
"""
import asyncio
import json
import logging
import os
import struct
import sys

import pytest
import websockets
from conftest import Raw, closed_with, masked, recv, run, send, subscribe, until, url

from tickcast.dialects.marketai import MAX_SYMBOLS, MarketAiConnection

DEEP = "[" * 10_000 + "]" * 10_000
BIGINT = '{"action":"ping","n":123456789012345678901234567890}'
V4 = "/v4/public/ws"


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if anything was logged with a traceback."""
    caplog.set_level(logging.WARNING)
    yield caplog
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def still_open(ws, v4: bool = False) -> None:
    if v4:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 3) == "pong"
    else:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


# -- 1. malformed JSON ------------------------------------------------------------

@pytest.mark.parametrize("message", [DEEP, BIGINT, '{"action":"subscribe","channels":[{"type":"quotes",'
                                     '"symbols":[18446744073709551616]}]}'])
async def test_malformed_json_gets_invalid_message_and_the_connection_stays(server, key, message,
                                                                           no_tracebacks):
    async with websockets.connect(url(server, key)) as ws:
        await ws.send(message)
        assert await recv(ws) == {"type": "error", "code": "INVALID_MESSAGE", "message": "Invalid JSON"}
        await still_open(ws)
    assert server.stats["internal_errors"] == 0


@pytest.mark.parametrize("message", [DEEP, BIGINT])
async def test_malformed_json_before_authentication(server, message, no_tracebacks):
    async with websockets.connect(url(server)) as ws:          # no key: the auth message is due
        await ws.send(message)
        assert await recv(ws) == {"type": "error", "code": "INVALID_MESSAGE", "message": "Invalid JSON"}
        await send(ws, {"action": "ping"})
        assert (await recv(ws))["code"] == "UNAUTHORIZED"     # open, and still waiting for auth


@pytest.mark.parametrize("message,rid", [
    (DEEP, None),
    (BIGINT, None),
    ('{"id":123456789012345678901234567890,"method":"SUBSCRIBE","params":{"type":"common","chainId":143}}', None),
    ('{"id":5,"method":"SUBSCRIBE","params":{"type":"common","chainId":123456789012345678901234567890}}', None),
    ('{"id":6,"method":"SUBSCRIBE","params":{"type":[]}}', 6),
    ('{"id":7,"method":"SUBSCRIBE","params":{"type":{}}}', 7),
    ('{"id":8,"method":"SUBSCRIBE","params":{"type":"common","chainId":"' + "9" * 5000 + '"}}', 8),
    ('{"id":9,"method":"SUBSCRIBE","params":{"type":"common","chainId":1e300}}', 9),
    ('{"id":10,"method":["SUBSCRIBE"],"params":{"type":"common","chainId":143}}', 10),
])
async def test_v4_malformed_requests_get_400_and_the_connection_stays(server, message, rid, no_tracebacks):
    async with websockets.connect(url(server, path=V4)) as ws:
        await ws.send(message)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 3))
        assert reply["id"] == rid and reply["result"] == "error" and reply["code"] == 400, reply
        await still_open(ws, v4=True)
    assert server.stats["internal_errors"] == 0


async def test_v4_rate_limited_path_takes_malformed_json(make_server, no_tracebacks):
    server = await make_server(rate=1, burst=3)
    async with websockets.connect(url(server, path=V4)) as ws:
        for _ in range(3):
            await ws.send("ping")
            assert await ws.recv() == "pong"
        for message in (DEEP, BIGINT):
            await ws.send(message)
            assert json.loads(await ws.recv()) == {"id": None, "result": "error", "code": 429,
                                                   "msg": "too many requests"}
        await asyncio.sleep(1.1)
        await still_open(ws, v4=True)


async def test_an_error_in_a_dialect_is_answered_counted_and_logged_sparingly(
        server, key, monkeypatch, caplog):
    # Stands for a bug of ours that some input reaches: the boundary answers
    # with the generic error, keeps the connection and logs a line, not a
    # traceback per message.
    def broken(self, msg):
        raise KeyError("a bug")

    monkeypatch.setattr(MarketAiConnection, "_subscribe", broken)
    caplog.set_level(logging.WARNING, logger="tickcast")
    async with websockets.connect(url(server, key)) as ws:
        for _ in range(30):
            await send(ws, subscribe({"type": "quotes"}))
        for _ in range(30):
            assert await recv(ws) == {"type": "error", "code": "INTERNAL_ERROR",
                                      "message": "The server could not handle this message."}
        await still_open(ws)
    async with websockets.connect(url(server, path=V4)) as v4:
        monkeypatch.setattr("tickcast.dialects.monday.parse_identity", lambda p: 1 / 0)
        await v4.send('{"id":3,"method":"SUBSCRIBE","params":{}}')
        assert json.loads(await v4.recv()) == {"id": 3, "result": "error", "code": 500, "msg": "internal error"}
        await still_open(v4, v4=True)
    assert server.stats["internal_errors"] == 31
    lines = [r for r in caplog.records if r.name == "tickcast"]
    assert 1 <= len(lines) <= 6, len(lines)                  # a few a second in total
    assert not [r for r in lines if r.exc_info]
    assert "KeyError" in lines[0].getMessage() and "test_hostile.py" in lines[0].getMessage()


# -- 2. bounded work per control message ------------------------------------------------

async def test_a_message_naming_too_many_symbols_is_refused_whole(server, keystore):
    free = keystore.add("free")
    symbols = [f"S{i}/U" for i in range(5101)] + ["bad symbol"]
    async with websockets.connect(url(server, free), max_size=None) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": symbols}))
        reply = await recv(ws)
        assert reply["code"] == "INVALID_MESSAGE" and str(MAX_SYMBOLS) in reply["message"]
        await still_open(ws)
        assert server.hub.index.topics < 20      # nothing of it was interned


async def test_the_tier_limit_is_checked_as_symbols_are_taken(server, keystore):
    free = keystore.add("free")
    names = [f"A{i}/USDT" for i in range(MAX_SYMBOLS - 1)] + ["not a symbol"]
    async with websockets.connect(url(server, free)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": names}))
        assert (await recv(ws))["symbols"] == names[:5]
        over = await recv(ws)
        assert over["code"] == "SYMBOL_LIMIT_EXCEEDED"
        # Named, not validated, past the limit: the malformed last one is only counted.
        assert over["message"] == ("Symbol limit (5) exceeded. Rejected: "
                                   + ", ".join(names[5:15]) + f" and {MAX_SYMBOLS - 15} more")
        # At the limit, a repeat is still confirmed (compared with what is held).
        await send(ws, subscribe({"type": "trades", "symbols": ["a0/usdt", "A1/USDT", "A1/USDT", "A99/USDT"]}))
        assert (await recv(ws))["symbols"] == ["A0/USDT", "A1/USDT"]
        assert (await recv(ws))["message"] == "Symbol limit (5) exceeded. Rejected: A99/USDT"


async def test_duplicates_are_confirmed_once(server, key):
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["btc/usdt", "BTC/USDT", " BTC/USDT "] * 300}))
        assert (await recv(ws))["symbols"] == ["BTC/USDT"]


async def test_the_budget_is_charged_by_size(make_server, key):
    server = await make_server(rate=1, burst=40)
    big = json.dumps({"action": "ping", "pad": "x" * 60_000})       # 15 units of 4 KiB
    async with websockets.connect(url(server, key)) as ws:
        for _ in range(3):
            await ws.send(big)
        assert [(await recv(ws)).get("code", "pong") for _ in range(3)] == ["pong", "pong", "RATE_LIMITED"]
        await send(ws, {"action": "ping"})          # a small one still fits what is left
        assert await recv(ws) == {"type": "pong"}


# -- 3. connections without a key -----------------------------------------------------

async def test_keyless_connections_are_bounded_per_address(make_server, keystore, no_tracebacks):
    server = await make_server(max_pending_auth_per_ip=3)
    waiting = [await websockets.connect(url(server)) for _ in range(3)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url(server))
    assert refused.value.response.status_code == 429
    assert json.loads(refused.value.response.body)["error"]["code"] == "TOO_MANY_PENDING"
    # A client with a key is not held up, and one that authenticates frees a place.
    async with websockets.connect(url(server, keystore.add("pro"))) as keyed:
        await still_open(keyed)
    await send(waiting[0], {"action": "auth", "key": keystore.add("pro")})
    assert (await recv(waiting[0]))["type"] == "authenticated"
    async with websockets.connect(url(server)) as again:
        await send(again, {"action": "ping"})
        assert (await recv(again))["code"] == "UNAUTHORIZED"
    for ws in waiting:
        await ws.close()
    assert server.refusals[(429, "TOO_MANY_PENDING")] == 1


async def test_connections_awaiting_auth_are_bounded_in_all(make_server, keystore):
    server = await make_server(max_pending_auth=4, max_pending_auth_per_ip=100)
    waiting = [await websockets.connect(url(server)) for _ in range(4)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url(server))
    assert refused.value.response.status_code == 503
    for ws in waiting[:2]:
        await ws.close()
    assert await until_pending(server, 2)
    async with websockets.connect(url(server, keystore.add("pro"))) as keyed:
        await still_open(keyed)
    for ws in waiting[2:]:
        await ws.close()


async def until_pending(server, n: int) -> bool:
    for _ in range(100):
        if len(server.admission.pending) + server.admission.handshaking == n:
            return True
        await asyncio.sleep(0.01)
    return False


async def test_over_capacity_a_connection_gets_503_and_the_others_go_on(make_server, key):
    server = await make_server(max_connections=3)
    held = [await websockets.connect(url(server, key)) for _ in range(3)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url(server, key))
    assert refused.value.response.status_code == 503
    assert json.loads(refused.value.response.body)["error"]["code"] == "SERVER_FULL"
    for ws in held:
        await still_open(ws)
    await held[0].close()
    assert await until(lambda: len(server.connections) == len(held) - 1)
    async with websockets.connect(url(server, key)) as ws:      # recovered
        await still_open(ws)
    for ws in held[1:]:
        await ws.close()


# -- 4. RFC 6455 details --------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", V4])
async def test_invalid_utf8_in_a_text_frame_closes_1007(server, key, path):
    raw = Raw(server.port)
    await run(raw.handshake, key if path == "/" else None, b"", path)
    raw.s.sendall(masked(b'{"action":"\xff\xfe"}'))
    assert await run(raw.close_code) == 1007
    raw.s.close()


@pytest.mark.parametrize("payload,answer", [
    (b"\x03", 1002),
    *[(struct.pack(">H", c), 1002) for c in (999, 1004, 1005, 1006, 1016, 2999, 5000)],
    (struct.pack(">H", 1000) + b"\xff", 1007),
    (struct.pack(">H", 4000) + "bye ✓".encode(), 4000),
    (struct.pack(">H", 1001), 1001),
    (b"", 1000),
])
async def test_close_codes_are_checked(server, key, payload, answer):
    raw = Raw(server.port)
    await run(raw.handshake, key)
    raw.s.sendall(masked(payload, opcode=0x8))
    assert await run(raw.close_code) == answer
    raw.s.close()


async def test_an_unknown_websocket_version_gets_426(server, key):
    from conftest import upgrade_request
    raw = Raw(server.port)
    head = await run(raw.request, upgrade_request(key, version="12"))
    assert head.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nSec-WebSocket-Version: 13" in head
    raw.s.close()


@pytest.mark.parametrize("size", [9_000, 20_000, 100_000])
async def test_a_request_head_over_the_limit_gets_431(server, key, size, no_tracebacks):
    from conftest import upgrade_request
    raw = Raw(server.port)
    request = upgrade_request(key, extra=f"X-Pad: {'p' * size}\r\n")
    head = await run(raw.request, request)
    assert head.startswith(b"HTTP/1.1 431 ")
    raw.s.close()
    async with websockets.connect(url(server, key)) as ws:
        await still_open(ws)


_GOOD_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _request(line: str = "GET /?key={key} HTTP/1.1", drop: str = "", extra: str = "", **replace) -> str:
    headers = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": _GOOD_KEY, "Sec-WebSocket-Version": "13", **replace}
    return line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k != drop) + extra + "\r\n"


@pytest.mark.parametrize("request_text", [
    _request("POST /?key={key} HTTP/1.1"),
    _request("GET /?key={key} HTTP/1.0"),
    _request("GET  HTTP/1.1"),
    _request("GARBAGE"),
    _request(drop="Upgrade"),
    _request(Upgrade="h2c"),
    _request(drop="Connection"),
    _request(drop="Sec-WebSocket-Key"),
    _request(**{"Sec-WebSocket-Key": "c2hvcnQ="}),             # 5 bytes, not 16
    _request(**{"Sec-WebSocket-Key": "not base64!"}),
    _request(extra="Content-Length: 5\r\n"),
    _request(extra="Transfer-Encoding: chunked\r\n"),
    _request(extra="no colon here\r\n"),
    _request(extra=" folded: header\r\n"),
    _request(extra="Bad Name: x\r\n"),
])
async def test_requests_that_are_not_websocket_upgrades_get_400(server, key, request_text, no_tracebacks):
    raw = Raw(server.port)
    head = await run(raw.request, request_text.format(key=key).encode())
    assert head.startswith(b"HTTP/1.1 400 "), head
    body = await run(raw.rest)
    assert json.loads(body)["error"]["code"] == "BAD_REQUEST"
    raw.s.close()
    for _ in range(100):                   # counted until it is gone
        if server.admission.handshaking == 0 and server.poller.count == 0:
            break
        await asyncio.sleep(0.01)
    assert server.admission.handshaking == 0 and server.poller.count == 0 and not server.connections
    async with websockets.connect(url(server, key)) as ws:
        await still_open(ws)


async def test_a_request_sent_a_byte_at_a_time_is_upgraded(server, key):
    raw = Raw(server.port)
    text = _request(Connection="keep-alive, Upgrade").format(key=key).encode()   # as Firefox sends it

    def dribble():
        for i in range(len(text) - 1):
            raw.s.sendall(text[i:i + 1])
        return raw.request(text[-1:])
    head = await run(dribble)
    assert head.startswith(b"HTTP/1.1 101 "), head
    raw.s.sendall(masked(b'{"action":"ping"}'))
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    raw.s.close()


async def test_an_unfinished_request_is_cut_after_the_handshake_timeout(make_server, key):
    server = await make_server(handshake_timeout=0.5)
    raw = Raw(server.port)
    raw.s.sendall(_request().format(key=key).encode()[:40])
    t0 = asyncio.get_running_loop().time()
    assert await run(raw.closes) in (True, False)          # the server hangs up, in order or not
    waited = asyncio.get_running_loop().time() - t0
    assert 0.4 < waited < 2.5, waited                      # the sweep runs every second
    assert server.admission.handshaking == 0 and server.poller.count == 0
    raw.s.close()


async def test_a_frame_split_across_the_upgrade_read_is_kept(server, key):
    ping = masked(b'{"action":"ping"}')
    raw = Raw(server.port)
    await run(raw.handshake, key, masked(b'{"action":"ping"}') + ping[:7])
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    await asyncio.sleep(0.05)
    raw.s.sendall(ping[7:])
    assert await run(raw.frame) == (0x1, b'{"type":"pong"}')
    raw.s.close()


# -- 5. the closing handshake ------------------------------------------------------------

async def test_a_client_closed_while_sending_reads_every_reply(server, key):
    # 120 subscribes back to back over a budget of 40: 40 confirmations, 40
    # RATE_LIMITED, then close 1008; the client is still sending when the
    # server closes, and must not lose what was sent before the close.
    for _ in range(3):
        async with websockets.connect(url(server, key)) as ws:
            message = json.dumps(subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
            for _ in range(120):
                await ws.send(message)
            got = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    got.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
            assert closed.value.rcvd is not None, "no close frame: the server reset the connection"
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "rate limit exceeded")
            assert sum(m["type"] == "subscribed" for m in got) == 40
            assert sum(m.get("code") == "RATE_LIMITED" for m in got) == 40


async def test_after_its_close_frame_the_server_reads_until_the_peer_is_done(server, key):
    raw = Raw(server.port)
    await run(raw.handshake, key)
    raw.s.sendall(masked(b"\x80" * 10, opcode=0x3))           # a reserved opcode: close 1002
    assert await run(raw.close_code) == 1002
    for _ in range(50):                                         # the peer goes on sending a while
        raw.s.sendall(masked(b'{"action":"ping"}'))
    await asyncio.sleep(0.1)
    raw.s.sendall(masked(struct.pack(">H", 1000), opcode=0x8))
    assert await run(raw.closes), "the server reset the connection"
    raw.s.close()
    assert await until(lambda: not server.connections)


async def test_a_peer_that_never_answers_the_close_is_cut_after_the_timeout(make_server, key):
    server = await make_server(close_timeout=0.3)
    raw = Raw(server.port)
    await run(raw.handshake, key)
    raw.s.sendall(masked(b"", opcode=0x3))
    assert await run(raw.close_code) == 1002
    # It reads, but never closes: cut once close_timeout is over.
    assert await until(lambda: not server.connections, 2)
    raw.s.close()


async def test_others_are_untouched_while_a_client_is_closed(server, key):
    async with websockets.connect(url(server, key)) as other:
        async with websockets.connect(url(server, key)) as ws:
            await ws.send("x" * (64 * 1024 + 1))
            assert (await closed_with(ws))[0] == 1009
        await still_open(other)


@pytest.mark.skipif(sys.platform != "linux", reason="uses loopback addresses past 127.0.0.1 (Linux has them all)")
def test_at_the_descriptor_limit_the_server_answers_logs_sparingly_and_recovers(tmp_path):
    # 300 connections without a key from 20 addresses, against a server whose
    # descriptor limit is 256: those past the bounds get an HTTP answer, a
    # client with a key still gets in, the log says so a few times, and once
    # they go the server takes keyless connections again, without a restart.
    import re
    import resource
    import subprocess
    import time

    import websockets.sync.client
    from conftest import upgrade_request

    from tickcast.keys import KeyStore

    keys = tmp_path / "keys.sqlite3"
    store = KeyStore(keys)
    key = store.add("pro")
    store.close()

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.Popen([sys.executable, "-m", "tickcast", "serve", "--port", "0", "--keys", str(keys),
                             "--feed", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)
    try:
        port = None
        while port is None:
            line = proc.stderr.readline()
            assert line, "the server did not start"
            m = re.search(r"serving ws://127\.0\.0\.1:(\d+)/", line)
            port = int(m.group(1)) if m else None
        held, answers = [], {}
        for i in range(300):
            raw = Raw(port, source=f"127.0.0.{2 + i % 20}")
            head = raw.request(upgrade_request())
            status = int(head.split(b" ", 2)[1])
            answers[status] = answers.get(status, 0) + 1
            if status == 101:
                held.append(raw)
            else:
                raw.s.close()
        assert set(answers) == {101, 503} and answers[101] < 100, answers
        with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/?key={key}") as ws:
            ws.send('{"action":"ping"}')
            assert ws.recv(timeout=5) == '{"type":"pong"}'
        for raw in held:
            raw.s.close()
        time.sleep(0.5)
        again = Raw(port, source="127.0.0.2")
        again.handshake(None)
        again.s.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    refusals = [line for line in err.splitlines() if "refused a connection" in line]
    assert 1 <= len(refusals) <= 15, len(refusals)
    assert "Traceback" not in err


async def test_two_thousand_keyless_connections_from_one_address(server, key):
    # The probe's flood: all held until the auth timeout, before. Now 16 wait
    # for their auth message and the rest are refused at once.
    from conftest import upgrade_request

    def flood():
        held, statuses = [], {}
        for _ in range(2000):
            raw = Raw(server.port)
            status = int(raw.request(upgrade_request()).split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            (held.append(raw) if status == 101 else raw.s.close())
        return held, statuses

    held, statuses = await run(flood)
    assert statuses == {101: 16, 429: 1984}
    async with websockets.connect(url(server, key)) as ws:
        await still_open(ws)
    for raw in held:
        raw.s.close()


def test_the_accept_key_is_rfc_6455s_for_any_key():
    """The accept key (ext/tickcast/_http.pyx: its base64 is ours) on the
    RFC's example and against a base64 of hashlib's on random keys."""
    import base64
    import hashlib

    from tickcast._http import accept_key
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    for _ in range(2000):
        k = base64.b64encode(os.urandom(16))
        assert accept_key(k) == base64.b64encode(hashlib.sha1(k + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def test_the_memos_of_client_strings_stay_bounded():
    """Symbols and keys are memoised for storms; whatever clients name, the
    memos hold at most so many short strings."""
    from tickcast.keys.tiers import key_digest
    from tickcast.wire import marketai
    memo = marketai.SYMBOL_MEMO["trades"]
    for i in range(marketai._MEMO * 2 + 7):
        assert marketai.channel_symbol("trades", f"S{i}/USDT") == f"S{i}/USDT"
        assert len(memo) <= marketai._MEMO
    long = "A" * 100 + "/USDT"
    assert marketai.channel_symbol("trades", long) is None and long not in memo
    assert marketai.channel_symbol("trades", " btc/usdt ") == "BTC/USDT"
    for i in range(20_000):
        key_digest(f"mk_live_{i:032d}")
    assert key_digest.cache_info().currsize <= key_digest.cache_info().maxsize
