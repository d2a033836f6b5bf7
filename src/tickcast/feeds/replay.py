"""A recording as the feed: every update published again, at its recorded spacing.

The frames' ``data`` is parsed and serialised again by the dialect, which
for a recording of tickcast gives the same bytes (orjson both ways).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson

from tickcast.tools.recording import read

if TYPE_CHECKING:
    from tickcast.feeds.sink import Sink


class ReplayFeed:
    def __init__(self, path: str, speed: float = 1.0, loop: bool = False) -> None:
        self.path = path
        self.speed = speed
        self.loop = loop
        read(path).close()                     # a missing or foreign file is said now, in one line

    async def run(self, sink: Sink) -> None:
        clock = asyncio.get_running_loop()
        while True:
            start, first = clock.time(), None
            for received, frame in read(self.path):
                first = received if first is None else first
                wait = start + (received - first) / self.speed - clock.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                msg = orjson.loads(frame)
                data = msg.get("data") if isinstance(msg, dict) else None
                if not isinstance(data, dict) or msg.get("type") != "update":
                    continue
                symbol = data.get("symbol") or data.get("coin")
                try:
                    sink.marketai.publish(msg.get("channel"), symbol, data, msg.get("ts"))
                except (ValueError, KeyError, TypeError):
                    continue                    # a record this server cannot route
            if not self.loop:
                return
