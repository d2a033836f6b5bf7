"""The same fan-out over uvloop's transports (--socket-layer uvloop)."""
import asyncio
import socket

import websockets
from conftest import closed_with, recv, send, subscribe, url

from tickcast.feeds.bench import BenchFeed


async def test_delivery_order_and_replies(make_server, key):
    server = await make_server(socket_layer="uvloop")
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        for i in range(50):
            server.marketai.publish("trades", "BTC/USDT", {"n": i})
        await send(ws, {"action": "ping"})
        got = [await recv(ws) for _ in range(51)]
        assert [m["data"]["n"] for m in got[:50]] == list(range(50))
        assert got[50] == {"type": "pong"}


async def test_slow_consumer(make_server, key):
    server = await make_server(feed=BenchFeed(rate=0, batch=20), socket_layer="uvloop",
                               max_queue=128 * 1024, sndbuf=32 * 1024)
    slow = await websockets.connect(url(server, key), max_queue=1)
    slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    await send(slow, subscribe({"type": "trades"}))
    for _ in range(300):                       # read nothing until the server gives up
        if not any(server.hub.is_open(s) for s in server.connections):
            break
        await asyncio.sleep(0.05)
    code, reason = await closed_with(slow, timeout=30)
    assert (code, reason) == (1008, "slow consumer")
    await asyncio.sleep(0.1)
    assert server.connections == {}
