"""Update sources: the simulated market (default) and the benchmark feed."""
from __future__ import annotations

from tickcast.config import Settings


def make_feed(settings: Settings):
    if settings.feed == "market":
        from tickcast.feeds.market import SimulatedMarket
        return SimulatedMarket(seed=settings.seed, tick=settings.tick_interval)
    if settings.feed == "bench":
        from tickcast.feeds.bench import BenchFeed
        return BenchFeed(settings.bench_symbols, settings.bench_rate,
                         settings.bench_batch, settings.bench_size)
    if settings.feed == "none":
        return None
    raise ValueError(f"unknown feed {settings.feed!r}; expected market, bench or none")
