"""Synthetic trades for measuring fan-out from any client.

Channel ``trades`` (or each of ``channels``), symbols BENCH0/USDT ...
BENCH{K-1}/USDT, ``rate`` updates a second in total, ``batch`` updates per
event-loop tick, each about ``size`` bytes on the wire. A tick that starts
late publishes what the rate has made due since (at most LATE_MAX seconds'
worth), as a read from an upstream socket returns all that has arrived: the
rate holds for as long as the server can keep up at all, and a server that
cannot shows it in the delivered rate.

``rate`` 0 is a flood: as fast as the connections take it. The feed waits
while a subscriber's transport is over its high-water mark (the kernel's
buffer is full and the transport holds more), so that the measure is what
clients receive, not how much the server can queue; a connection that stays
there for STUCK seconds is left to the slow-consumer limit and the flood goes on.
With ``zipf`` S above 0 the updates are spread over the streams with a Zipf
skew instead of in turn: the k-th stream (BENCH0 first) is picked with a
weight of 1/k**S, in a sequence fixed by the seed, so that a peer server
given the same flags publishes the same streams in the same order.

Every update's data carries ``seq`` (per channel and symbol, from 1) and ``pub_ns``
(time.time_ns() taken just before the fan-out).
"""
from __future__ import annotations

import asyncio
import itertools
import random
import time
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from tickcast.feeds.sink import Sink

STUCK = 1.0
LATE_MAX = 0.01


class BenchFeed:
    def __init__(self, symbols: int = 1, rate: float = 1000.0, batch: int = 10, size: int = 200,
                 channels: tuple[str, ...] = ("trades",), zipf: float = 0.0):
        self.symbols = [f"BENCH{i}/USDT" for i in range(symbols)]
        self.streams = [(c, s) for s in self.symbols for c in channels]
        self.zipf = zipf
        self.rate = rate
        self.batch = batch
        self.size = size

    def _pad(self) -> str:
        return padding(self.size, self.streams)

    async def run(self, sink: Sink) -> None:
        publish = sink.marketai.publish
        hub = sink.hub
        waited_out = False
        streams = self.streams
        seqs = [0] * len(streams)
        pad = self._pad()
        pick = picker(len(streams), self.zipf)
        sent = 0
        start = time.monotonic()
        while True:
            reached = 0
            n = tick_size(self.batch, self.rate, start, sent)
            for k in pick(n):
                seqs[k] += 1
                channel, symbol = streams[k]
                now_ns = time.time_ns()
                reached += publish(channel, symbol, trade(symbol, seqs[k], now_ns, pad), now_ns // 1_000_000)
            sent += n
            if self.rate > 0:
                delay = start + sent / self.rate - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            elif not reached:
                await asyncio.sleep(0.001)    # nobody listening: do not spin a core
            elif hub is not None and hub.paused and not waited_out:
                deadline = time.monotonic() + STUCK
                while hub.paused and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                waited_out = hub.paused > 0
            else:
                waited_out = waited_out and hub is not None and hub.paused > 0
                await asyncio.sleep(0)


def picker(n: int, zipf: float, seed: int = 25):
    """``pick(count)``: the indices of the next ``count`` of ``n`` streams,
    in turn, or with ``zipf`` above 0 drawn with weights 1/k**zipf."""
    if zipf <= 0:
        turn = itertools.cycle(range(n))
        return lambda count: itertools.islice(turn, count)
    rng = random.Random(seed)
    weights = list(itertools.accumulate(1 / (k + 1) ** zipf for k in range(n)))
    population = range(n)
    return lambda count: rng.choices(population, cum_weights=weights, k=count)


def trade(symbol: str, seq: int, now_ns: int, pad: str) -> dict:
    """One bench update's data: a trade in the API's shape, stamped and padded.
    The peer servers of the benchmarks publish the same."""
    return {"exchange": "bench", "symbol": symbol, "price": "100.00", "quantity": "1.0", "side": "buy",
            "timestamp": now_ns // 1_000_000, "trade_id": f"b{seq}", "is_liquidation": False,
            "seq": seq, "pub_ns": now_ns, "pad": pad}


def padding(size: int, streams: list[tuple[str, str]]) -> str:
    """The ``pad`` that brings an update's frame payload to about ``size`` bytes.

    A trade in the API's shape with ``seq`` and ``pub_ns`` is about 275 bytes:
    smaller sizes get that."""
    channel, symbol = max(streams, key=lambda st: len(st[0]) + len(st[1]))
    ns = 1_763_000_000_000_000_000
    bare = orjson.dumps({"type": "update", "channel": channel, "ts": ns // 1_000_000,
                         "data": trade(symbol, 123_456, ns, "")})
    return "x" * max(0, size - len(bare))


def tick_size(batch: int, rate: float, start: float, sent: int) -> int:
    """Updates for this tick: ``batch``, or what has come due since ``start`` at
    ``rate`` if more (at most LATE_MAX seconds' worth)."""
    if rate <= 0:
        return batch
    due = int((time.monotonic() - start) * rate) - sent
    return max(batch, min(max(batch, int(rate * LATE_MAX)), due))
