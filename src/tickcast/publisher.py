"""Publishing into the bus: serialise once here, fan out on every node.

- ``Publisher``: the Python API for a team's own feed (``async with
  Publisher("redis://…") as pub: await pub.publish("quotes", "BTC/USDT",
  data)``), checked as the server checks (ValueError otherwise).
- ``BusSink``: what a feed process publishes through (``tickcast feed``): the
  same ``marketai.publish`` and ``monday.publish_*`` calls a feed makes in a
  server, so feeds do not know where their updates go.

Records published in one event-loop iteration leave in one message (a
Corker, as the hub corks its writes): a tick of a feed costs one round trip
to Redis, not one per update.
"""
from __future__ import annotations

import asyncio
import logging

from tickcast.bus import BusError, open_bus
from tickcast.bus.base import Bus
from tickcast.bus.record import Record, marketai_record, v4_record, v4_stream_record
from tickcast.logs import Throttle
from tickcast.wire.monday import V4Streams

log = logging.getLogger("tickcast.publisher")


class Corker:
    """Records put in one loop iteration go to the bus as one message at its
    end. One message is in flight at a time, so that messages arrive in the
    order they were made (two pipelines on two connections may not); what
    is put meanwhile goes as the next message, together."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.pending: list[Record] = []
        self.done: asyncio.Future | None = None    # of the pending records' message
        self.busy = False
        self.sent = 0
        self.failed = 0

    def put(self, header: bytes, payload: bytes, keep: bool, topic: bytes) -> asyncio.Future:
        """Queue a record; the future is done once its message was accepted (or failed)."""
        if self.done is None:
            loop = asyncio.get_running_loop()
            self.done = loop.create_future()
            if not self.busy:
                self.busy = True
                loop.call_soon(self._next)
        self.pending.append((header, payload, keep, topic))
        return self.done

    def _next(self) -> None:
        if self.done is None:
            self.busy = False
            return
        records, done = self.pending, self.done
        self.pending, self.done = [], None
        asyncio.ensure_future(self._send(records, done))

    async def _send(self, records: list[Record], done: asyncio.Future) -> None:
        try:
            await self.bus.send(records)
        except BusError as exc:
            self.failed += len(records)
            if not done.done():
                done.set_exception(exc)
        else:
            self.sent += len(records)
            if not done.done():
                done.set_result(None)
        self._next()


class Publisher:
    """Publish updates to every node on the bus at ``url``.

    ``publish`` and ``publish_v4`` return once the bus has taken the update
    (updates published together, say with asyncio.gather, share one round
    trip) and raise BusError if it did not: then no node got it."""

    def __init__(self, url: str) -> None:
        self.bus = open_bus(url)
        self.corker = Corker(self.bus)

    async def __aenter__(self) -> Publisher:
        try:
            await self.bus.connect()
        except BusError:
            await self.bus.close()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.bus.close()

    async def publish(self, channel: str, symbol: str, data: dict, ts: int | None = None) -> None:
        """A Market.ai update on ``channel`` for ``symbol``; ``ts`` in Unix ms (default: now)."""
        await self.corker.put(*marketai_record(channel, symbol, data, ts))

    async def publish_v4(self, stream: str, chain_id: int, data, *, instrument: str | None = None,
                         expiry: int | None = None, interval: str | None = None,
                         user: str | None = None) -> None:
        """A v4 stream frame: orderBook, instrument, marketPairInfoChanged and
        kline name an instrument and expiry (kline an interval too),
        portfolio a user; blockNumChanged and marketListChanged a chain only."""
        await self.corker.put(*v4_stream_record(stream, chain_id, data, instrument=instrument, expiry=expiry,
                                                interval=interval, user=user))


class _MarketAiOut:
    def __init__(self, sink: BusSink) -> None:
        self.sink = sink

    def publish(self, channel: str, symbol: str, data: dict, ts: int | None = None) -> int:
        self.sink.put(*marketai_record(channel, symbol, data, ts))
        return 1


class _MondayOut(V4Streams):
    def __init__(self, sink: BusSink) -> None:
        self.sink = sink

    def emit(self, ident: tuple, frame: dict, latest: str | None) -> int:
        self.sink.put(*v4_record(ident, frame, latest))
        return 1


class BusSink:
    """Where a feed process publishes: ``marketai.publish`` and
    ``monday.publish_*`` as in a server, into the bus. While the bus is
    unreachable its updates are dropped, counted and logged (a feed does not
    wait: its next updates supersede these)."""

    hub = None                     # no subscribers here to wait for

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.corker = Corker(bus)
        self.marketai = _MarketAiOut(self)
        self.monday = _MondayOut(self)
        self.throttle = Throttle(log)

    def put(self, header: bytes, payload: bytes, keep: bool, topic: bytes) -> None:
        fresh = self.corker.done is None
        done = self.corker.put(header, payload, keep, topic)
        if fresh:
            done.add_done_callback(self._sent)

    def _sent(self, done: asyncio.Future) -> None:
        if done.exception() is not None:
            # Its count of lost updates is in every line: what is held back needs no summary.
            self.throttle.warning("%s (%d updates lost so far)", done.exception(), self.corker.failed)
            self.throttle.held.clear()
