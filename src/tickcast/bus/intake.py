"""A node's side of the bus: messages in, the dialects' deliver calls out.

A feed faster than the node can deliver is shed here, once, rather than by
filling every reader's queue until it is closed: past ``full()`` (the hub
has framed, since its last flush, as much as one connection may queue
before it is behind, or most connections cannot take more now) a state record waits for the next loop iteration, the
latest per state key (conflated), and an event record is dropped (counted
in ``shed``; readers with sequence numbers see the jump), until the hub has
flushed.

Each distinct route header is checked once (record.read_header) and kept
with the delivery it maps to (up to MAX_ROUTES headers), so an update costs a dictionary lookup and a
check that its payload is a JSON object before the dialect looks its topic
up and Hub.publish: no re-encoding, no Python dict per update. A
record that fails a check is counted, logged (throttled) and dropped; it
never reaches a client.
"""
from __future__ import annotations

from typing import Callable

import simdjson

from tickcast.bus.record import read_header, read_positions, unpack
from tickcast.logs import Throttle

MAX_ROUTES = 1 << 17          # distinct headers remembered (about 25 MB at most); past it the memo starts again


class Intake:
    def __init__(self, marketai: Callable[..., int], v4: Callable[[tuple, str | None, bytes], int],
                 throttle: Throttle, remember: Callable[[str, str, bytes, int, str], None] | None = None,
                 full: Callable[[], bool] | None = None, loop=None) -> None:
        """``marketai(channel, symbol, state, payload, seq, epoch)`` and
        ``v4(identity, latest, payload)``: where a record of each dialect
        goes; ``remember(channel, symbol, payload, seq, epoch)``: a numbered
        Market.ai record from before the node started, kept for a resume."""
        self.deliver = {"m": marketai, "v4": v4}
        self.remember = remember
        self.full = full                        # the node has framed all it should this loop iteration
        self.loop = loop
        self.waiting: dict[bytes, tuple] = {}   # header -> (payload, seq, epoch): state records held over
        self.shed = 0                           # event records dropped: the feed outran the node
        self.held_over = 0                      # state records that waited for a later iteration
        self.throttle = throttle
        self.routes: dict[bytes, tuple] = {}
        self.parser = simdjson.Parser()
        self.records = 0
        self.dropped = 0

    def latest(self, header: bytes, payload: bytes) -> None:
        """A state key's latest record, read when the node starts (state, not an update: never numbered)."""
        self.record(header, payload, -1, None)

    def message(self, message: bytes, positions: bytes | None = None) -> None:
        """One message from the bus, with its records' positions if the bus numbered them."""
        parts = unpack(message)
        record = self.record
        epoch, seqs = read_positions(positions)
        if len(seqs) != len(parts) // 2:
            epoch, seqs = None, []                # not ours, or not whole: none of them
        full = self.full
        for i in range(0, len(parts) - 1, 2):
            if full is not None and (self.waiting or full()):
                self._shed(parts[i], parts[i + 1], seqs[i >> 1] if seqs else 0, epoch)
            else:
                record(parts[i], parts[i + 1], seqs[i >> 1] if seqs else 0, epoch)
        if len(parts) % 2:
            self.drop(parts[-1][:80], "a header without its payload")

    def past(self, message: bytes, positions: bytes | None) -> None:
        """A message from before the node started: its numbered Market.ai
        records are kept for a resume; nothing is sent."""
        epoch, seqs = read_positions(positions)
        parts = unpack(message)
        if self.remember is None or not seqs or len(seqs) != len(parts) // 2:
            return
        for i in range(0, len(parts) - 1, 2):
            route = self.routes.get(parts[i]) or self.route(parts[i])
            if route is not None and route[2] and seqs[i >> 1] > 0:
                channel, key, _ = route[1]
                self.remember(channel, key, parts[i + 1], seqs[i >> 1], epoch)

    def _shed(self, header: bytes, payload: bytes, seq: int, epoch: str | None) -> None:
        """The node is full for this iteration: a state record waits (the
        latest per state key), an event record is dropped."""
        route = self.routes.get(header) or self.route(header)
        if route is None:
            return
        if route[3]:
            if not self.waiting:
                self.loop.call_soon(self._after_flush)
            self.waiting.pop(header, None)       # the latest goes last, as it came
            self.waiting[header] = (payload, seq, epoch)
            self.held_over += 1
        else:
            self.shed += 1
            self.throttle.warning("the feed outruns this node: dropping updates it cannot deliver "
                                  "(%d so far; state updates are conflated)", self.shed)

    def _after_flush(self) -> None:
        """The state records that waited, once the hub has flushed (or again later)."""
        if self.full():
            self.loop.call_soon(self._after_flush)
            return
        waiting, self.waiting = self.waiting, {}
        for header, (payload, seq, epoch) in waiting.items():
            self.record(header, payload, seq, epoch)

    def record(self, header: bytes, payload: bytes, seq: int = 0, epoch: str | None = None) -> None:
        route = self.routes.get(header)
        if route is None:
            route = self.route(header)
            if route is None:
                return
        try:
            if not isinstance(self.parser.parse(payload), simdjson.Object):
                self.drop(header, "payload is not a JSON object")
                return
        except (ValueError, RuntimeError):
            self.drop(header, "payload is not JSON")
            return
        self.records += 1
        if route[2]:                              # a Market.ai record: with its position
            route[0](*route[1], payload, seq, epoch)
        else:
            route[0](*route[1], payload)

    def route(self, header: bytes) -> tuple | None:
        try:
            route = read_header(header)
        except (ValueError, TypeError) as exc:
            self.drop(header, str(exc))
            return None
        # (delivery, its arguments, a Market.ai record, a state record)
        state = route[3] is not None if route[0] == "m" else route[2] is not None
        route = (self.deliver[route[0]], route[1:], route[0] == "m", state)
        if len(self.routes) >= MAX_ROUTES:
            self.routes.clear()
        self.routes[header] = route
        return route

    def drop(self, header: bytes, why: str) -> None:
        self.dropped += 1
        self.throttle.warning("dropped a record from the bus (%s): %r", why, header[:120])
