"""The benchmark feed's contract (external harnesses measure tickcast with it)."""
import asyncio
import time

import orjson
import websockets
from conftest import recv, send, subscribe, url

from tickcast.feeds.bench import LATE_MAX, BenchFeed


async def test_updates_carry_per_symbol_seq_and_publish_time(make_server, key):
    server = await make_server(feed=BenchFeed(symbols=3, rate=3000, batch=6, size=400))
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades"}))
        assert (await recv(ws))["type"] == "subscribed"
        seqs: dict[str, list[int]] = {}
        sizes = []
        for _ in range(300):
            raw = await asyncio.wait_for(ws.recv(), 3)
            msg = orjson.loads(raw)
            assert msg["type"] == "update" and msg["channel"] == "trades"
            data = msg["data"]
            assert abs(time.time_ns() - data["pub_ns"]) < 2e9
            seqs.setdefault(data["symbol"], []).append(data["seq"])
            sizes.append(len(raw))
    assert sorted(seqs) == ["BENCH0/USDT", "BENCH1/USDT", "BENCH2/USDT"]
    for got in seqs.values():
        assert got == list(range(got[0], got[0] + len(got))), "a symbol's seq skipped or repeated"
    assert all(385 <= n <= 405 for n in sizes), f"updates should be about 400 bytes: {min(sizes)}-{max(sizes)}"


async def test_a_late_tick_publishes_what_has_come_due(make_server, key):
    # One update a tick at 1,000/s; the loop is then held for 50 ms, as a
    # server under load would be. The next tick publishes the updates that
    # came due meanwhile (up to LATE_MAX's worth), not just its one.
    rate = 1000
    server = await make_server(feed=BenchFeed(symbols=1, rate=rate, batch=1))
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades"}))
        assert (await recv(ws))["type"] == "subscribed"
        await recv(ws)
        before = server.hub.published
        time.sleep(0.05)                               # hold the loop
        for _ in range(1000):
            await asyncio.sleep(0)
            if server.hub.published != before:
                break
        assert server.hub.published - before == int(rate * LATE_MAX)
        seqs = [(await recv(ws))["data"]["seq"] for _ in range(60)]
        assert seqs == list(range(seqs[0], seqs[0] + 60))
