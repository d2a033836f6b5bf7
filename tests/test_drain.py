"""Graceful drain: a real server process, real clients, a real SIGTERM."""
import asyncio
import signal
import time

import pytest
import websockets
from conftest import recv, send, subscribe, until


@pytest.fixture
def node(serve_process):
    return lambda *extra: serve_process("--feed", "market", "--tick-interval", "0.02", *extra)

async def test_sigterm_closes_every_client_1001_spread_over_the_drain(node):
    server = node("--drain-seconds", "1")
    clients = []
    for _ in range(20):
        ws = await websockets.connect(server.url())
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        clients.append(ws)

    async def until_closed(ws):
        updates = 0
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
                updates += 1
        except websockets.ConnectionClosed as closed:
            return time.monotonic(), closed.rcvd.code, closed.rcvd.reason, updates

    waits = [asyncio.create_task(until_closed(ws)) for ws in clients]
    await asyncio.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert await until(lambda: any("draining:" in line for line in server.log), 5)
    with pytest.raises(OSError):                     # no longer accepting
        await websockets.connect(server.url(), open_timeout=2)
    results = await asyncio.gather(*waits)
    assert all(code == 1001 and reason == "server shutting down" for _, code, reason, _ in results)
    assert all(updates > 0 for *_, updates in results)     # served until their turn
    times = sorted(t - sent for t, *_ in results)
    assert times[0] < 0.3 and 0.7 < times[-1] < 2.0, times  # spread over the second, not all at once
    assert server.proc.wait(10) == 0
    assert "draining: no new connections; closing 20 over 1 s" in server.stop()


async def test_a_second_signal_stops_at_once(node):
    server = node("--drain-seconds", "60")
    clients = [await websockets.connect(server.url()) for _ in range(10)]
    server.proc.send_signal(signal.SIGTERM)
    assert await until(lambda: any("draining:" in line for line in server.log), 5)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)           # Ctrl-C counts the same
    assert server.proc.wait(5) == 1
    assert time.monotonic() - started < 3
    assert "stopped at once by a second signal" in server.stop()
    for ws in clients:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
