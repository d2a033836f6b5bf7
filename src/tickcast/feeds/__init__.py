"""Update sources: the simulated markets (default) and the benchmark feed."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from tickcast.config import Settings

if TYPE_CHECKING:
    from tickcast.feeds.sink import Sink


class Together:
    """Several feeds run side by side; if one stops, the others are cancelled."""

    def __init__(self, *feeds):
        self.feeds = feeds

    async def run(self, sink: Sink) -> None:
        tasks = [asyncio.ensure_future(feed.run(sink)) for feed in self.feeds]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def make_feed(settings: Settings):
    if settings.feed == "market":
        from tickcast.feeds.market import SimulatedMarket
        from tickcast.feeds.perp import SimulatedPerpExchange
        return Together(SimulatedMarket(seed=settings.seed, tick=settings.tick_interval),
                        SimulatedPerpExchange(seed=settings.seed, tick=settings.tick_interval))
    if settings.feed == "bench":
        from tickcast.feeds.bench import BenchFeed
        return BenchFeed(settings.bench_symbols, settings.bench_rate, settings.bench_batch,
                         settings.bench_size, tuple(settings.bench_channels.split(",")), settings.bench_zipf)
    if settings.feed == "none":
        return None
    if settings.feed.startswith("replay:"):
        from tickcast.feeds.replay import ReplayFeed
        return ReplayFeed(settings.feed[len("replay:"):], settings.replay_speed, settings.replay_loop)
    raise ValueError(f"unknown feed {settings.feed!r}; expected market, bench or none")
