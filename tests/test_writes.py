"""The hub's writes: send(2) straight to the socket while its transport has
nothing queued, the transport's queue once the socket is full, and the same
order either way."""
import asyncio
import socket

import pytest
import websockets
from conftest import recv, send, subscribe, url

from tickcast._fanout import Hub
from tickcast._frames import encode_frame


async def test_replies_keep_their_place_among_updates(server, key):
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        for i in range(50):
            server.marketai.publish("trades", "BTC/USDT", {"n": i})
        await send(ws, {"action": "ping"})
        got = [await recv(ws) for _ in range(51)]
        assert [m["data"]["n"] for m in got[:50]] == list(range(50))
        assert got[50] == {"type": "pong"}


async def test_order_survives_a_full_socket(make_server, key):
    # A reader that keeps stalling (websockets reads no further than one
    # queued message) behind small kernel buffers: the server's sends come up
    # short and the rest waits in the transport while later updates arrive.
    server = await make_server(sndbuf=16 * 1024)
    ws = await websockets.connect(url(server, key), max_queue=1)
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024)
    await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
    assert (await recv(ws))["type"] == "subscribed"
    (conn,) = server.connections.values()
    transport = conn.transport
    total, queued_seen = 1000, False
    for n in range(1, total + 1):
        server.marketai.publish("trades", "BTC/USDT", {"n": n, "pad": "x" * 300})
        if n % 100 == 0:
            await asyncio.sleep(0.01)
            queued_seen |= transport.get_write_buffer_size() > 0
    assert queued_seen, "the socket never filled: the test did not reach the transport's queue"
    await send(ws, {"action": "ping"})
    got = [await recv(ws, timeout=10) for _ in range(total + 1)]
    assert [m["data"]["n"] for m in got[:total]] == list(range(1, total + 1))
    assert got[total] == {"type": "pong"}
    assert server.hub.is_open(conn.slot)
    await ws.close()


async def test_bytes_queue_behind_what_the_transport_holds():
    # The socket has room, but the transport still holds earlier bytes: the
    # hub must hand it the new ones rather than send past them.
    class Holding:
        def __init__(self):
            self.held = bytearray(b"earlier")

        def write(self, data):
            self.held += data

        def get_write_buffer_size(self):
            return len(self.held)

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    hub = Hub(asyncio.get_running_loop())
    tr = Holding()
    topic = hub.index.topic("t")
    hub.index.add(topic, hub.attach(tr, a.fileno()))
    hub.publish(topic, b"later")
    hub.flush()
    assert bytes(tr.held) == b"earlier" + encode_frame(b"later")
    with pytest.raises(BlockingIOError):
        b.recv(100)
    tr.held.clear()                        # drained: the next flush goes to the socket
    hub.publish(topic, b"next")
    hub.flush()
    assert b.recv(100) == encode_frame(b"next") and not tr.held
    a.close()
    b.close()


async def test_one_write_per_connection_per_tick(server, key):
    async with websockets.connect(url(server, key)) as a, websockets.connect(url(server, key)) as b:
        for ws in (a, b):
            await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
            assert (await recv(ws))["type"] == "subscribed"
        writes = server.hub.writes
        for i in range(20):
            server.marketai.publish("trades", "BTC/USDT", {"n": i})
        for ws in (a, b):
            assert [(await recv(ws))["data"]["n"] for _ in range(20)] == list(range(20))
        assert server.hub.writes - writes == 2
