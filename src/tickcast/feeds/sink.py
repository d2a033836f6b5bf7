"""What a feed publishes into, and what a feed is."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tickcast.wire.monday import V4Streams


class MarketAiSink(Protocol):
    def publish(self, channel: str, symbol: str, data: dict, ts: int | None = None) -> int:
        """One update; returns how many it reached (a bus: 1)."""


class Sink(Protocol):
    """Where a feed publishes: a server's dialects, or a feed process's
    BusSink (the bus). A feed does not know which."""
    marketai: MarketAiSink
    monday: V4Streams
    hub: object | None        # a server's hub (a flooding feed waits while it is paused); None on the bus


class Feed(Protocol):
    """A source of updates: it publishes into its sink until cancelled."""

    async def run(self, sink: Sink) -> None: ...
