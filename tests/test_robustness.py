"""Hostile or broken clients: budgets, sizes, raw bytes, dead peers, slow readers."""
import asyncio
import json
import os
import socket
import time

import pytest
import websockets
import websockets.sync.client
from conftest import closed_with, recv, send, subscribe, until, upgrade_request, url
from picows import WSListener, WSMsgType, ws_connect

from tickcast.feeds.bench import BenchFeed


async def test_rate_limited_then_closed(make_server, key):
    server = await make_server(rate=5, burst=5)
    async with websockets.connect(url(server, key)) as ws:
        for _ in range(8):
            await send(ws, {"action": "ping"})
        replies = [await recv(ws) for _ in range(8)]
        assert replies[:5] == [{"type": "pong"}] * 5
        limited = [r for r in replies if r.get("code") == "RATE_LIMITED"]
        assert limited and limited[0]["type"] == "error" and limited[0]["message"]
        # Sustained abuse: more than a burst of refused messages in a row.
        for _ in range(20):
            await send(ws, {"action": "ping"})
        code, reason = await closed_with(ws)
        assert code == 1008 and reason == "rate limit exceeded"


async def test_budget_refills(make_server, key):
    server = await make_server(rate=20, burst=2)
    async with websockets.connect(url(server, key)) as ws:
        for _ in range(6):
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
            await asyncio.sleep(0.1)


async def test_frame_over_64k_closes_1009_others_unaffected(server, key):
    async with websockets.connect(url(server, key)) as other:
        async with websockets.connect(url(server, key)) as ws:
            await ws.send("x" * (64 * 1024 + 1))
            assert (await closed_with(ws))[0] == 1009
        await send(other, {"action": "ping"})
        assert await recv(other) == {"type": "pong"}


async def test_frame_at_64k_is_parsed(server, key):
    async with websockets.connect(url(server, key)) as ws:
        msg = '{"action": "ping", "pad": "' + "x" * (64 * 1024 - 40) + '"}'
        assert len(msg) <= 64 * 1024
        await ws.send(msg)
        assert await recv(ws) == {"type": "pong"}


async def test_fragmented_message_is_reassembled(server, key):
    async with websockets.connect(url(server, key)) as ws:
        await ws.send(iter(['{"action":', ' "ping"}']))
        assert await recv(ws) == {"type": "pong"}


async def test_fragmented_message_over_limit_closes_1009(server, key):
    async with websockets.connect(url(server, key)) as ws:
        await ws.send(iter(["x" * 40_000, "x" * 40_000]))
        assert (await closed_with(ws))[0] == 1009


def _handshake(port, key):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    s.sendall(upgrade_request(key))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0]
    return s


@pytest.mark.parametrize("garbage", [
    b"\x81\x05hello",                                  # unmasked client frame
    b"\x8f\x80\x00\x00\x00\x00",                       # reserved opcode
    b"\xf1\x80\x00\x00\x00\x00",                       # RSV bits without an extension
    b"\x89\xfe\x01\x00" + b"\x00" * 4 + b"x" * 256,    # control frame over 125 bytes
    b"\x00\x80\x00\x00\x00\x00",                       # continuation with nothing to continue
    os.urandom(64),
])
async def test_hostile_bytes_close_only_that_connection(server, key, garbage):
    async with websockets.connect(url(server, key)) as other:
        await send(other, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        await recv(other)
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(None, _handshake, server.port, key)
        raw.sendall(garbage)

        def read_until_closed():
            data = b""
            try:
                while chunk := raw.recv(4096):
                    data += chunk
            except (ConnectionResetError, socket.timeout):
                pass
            return data

        data = await loop.run_in_executor(None, read_until_closed)
        raw.close()
        assert data == b"" or data[0] & 0x0F == 0x8          # a close frame, or just hung up
        server.marketai.publish("trades", "BTC/USDT", {"symbol": "BTC/USDT"})
        assert (await recv(other))["data"] == {"symbol": "BTC/USDT"}


class _Deaf(WSListener):
    """A client that does not answer protocol pings."""
    def __init__(self):
        self.pings = 0
        self.close_code = None

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.PING:
            self.pings += 1
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()


async def test_heartbeat_pings_and_closes_a_silent_peer(make_server, key):
    server = await make_server(ping_interval=0.4, ping_timeout=0.3)
    deaf = _Deaf()
    transport, _ = await ws_connect(lambda: deaf, url(server, key), enable_auto_pong=False)
    async with websockets.connect(url(server, key)) as alive:   # answers pings itself
        await asyncio.wait_for(transport.wait_disconnected(), 5)
        assert deaf.pings >= 1
        assert deaf.close_code == 1008
        assert await until(lambda: server.places.count(server.keystore.lookup(key).key_hash) == 1)   # released
        await asyncio.sleep(1.0)                     # two more rounds
        await send(alive, {"action": "ping"})
        assert await recv(alive) == {"type": "pong"}


async def test_a_client_that_answers_is_kept_when_the_timeout_equals_the_interval(make_server, key):
    # Both timers fall on one instant: the check of the last round must run
    # before the next round's pings forget who answered.
    server = await make_server(ping_interval=0.2, ping_timeout=0.2)
    async with websockets.connect(url(server, key)) as alive:   # answers pings itself
        await asyncio.sleep(1.5)                     # seven rounds
        await send(alive, {"action": "ping"})
        assert await recv(alive) == {"type": "pong"}


async def test_flood_waits_for_a_reader_slower_than_the_server(make_server, key):
    # A client in another thread reads far slower than the flood publishes:
    # the feed waits whenever its transport is over the high-water mark
    # instead of queueing past max_queue, so the client stays connected and
    # loses nothing.
    server = await make_server(feed=BenchFeed(symbols=1, rate=0, batch=20, size=200),
                               max_queue=128 * 1024, sndbuf=32 * 1024)
    paused_seen = False

    def read_slowly():
        nonlocal paused_seen
        with websockets.sync.client.connect(url(server, key), max_queue=4, close_timeout=0.5) as ws:
            ws.send(json.dumps(subscribe({"type": "trades"})))
            assert json.loads(ws.recv(timeout=3))["type"] == "subscribed"
            last = None
            for i in range(5_000):
                seq = json.loads(ws.recv(timeout=3))["data"]["seq"]
                assert last is None or seq == last + 1, f"lost or reordered at {last} -> {seq}"
                last = seq
                paused_seen |= server.hub.paused > 0
                if i % 10 == 0:
                    time.sleep(0.001)
            return last

    assert await asyncio.to_thread(read_slowly) >= 5_000
    assert paused_seen, "the transport never filled: the test did not reach the wait"


async def test_slow_consumer_closed_1008_without_hurting_others(make_server, key):
    server = await make_server(feed=BenchFeed(symbols=1, rate=0, batch=20, size=200),
                               max_queue=128 * 1024, sndbuf=32 * 1024)
    slow = await websockets.connect(url(server, key), max_queue=1)   # reads nothing below
    slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    await send(slow, subscribe({"type": "trades"}))
    async with websockets.connect(url(server, key), max_queue=None) as fast:
        await send(fast, subscribe({"type": "trades"}))
        assert (await recv(fast))["type"] == "subscribed"
        last = None
        closed = False
        for _ in range(200_000):
            msg = await recv(fast)
            seq = msg["data"]["seq"]
            assert last is None or seq == last + 1, "the fast client lost or reordered updates"
            last = seq
            if not slow.protocol.state.name == "OPEN" or not server.hub.is_open(0):
                closed = True
                break
        assert closed
    # The slow client reads what was queued before the limit, then the close.
    code, reason = await closed_with(slow, timeout=20)
    assert (code, reason) == (1008, "slow consumer")
    assert await until(lambda: server.places.count(server.keystore.lookup(key).key_hash) == 0)   # both released
    assert all(server.hub.is_open(c.slot) for c in server.connections.values())
