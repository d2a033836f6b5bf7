"""A node's side of the bus: messages in, the dialects' deliver calls out.

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

from tickcast.bus.record import read_header, unpack
from tickcast.logs import Throttle

MAX_ROUTES = 1 << 17          # distinct headers remembered (about 25 MB at most); past it the memo starts again


class Intake:
    def __init__(self, marketai: Callable[[str, str, tuple | None, bytes], int],
                 v4: Callable[[tuple, str | None, bytes], int], throttle: Throttle) -> None:
        """``marketai(channel, symbol, state, payload)`` and ``v4(identity,
        latest, payload)``: where a record of each dialect goes."""
        self.deliver = {"m": marketai, "v4": v4}
        self.throttle = throttle
        self.routes: dict[bytes, tuple] = {}
        self.parser = simdjson.Parser()
        self.records = 0
        self.dropped = 0

    def latest(self, header: bytes, payload: bytes) -> None:
        """A state key's latest record, read when the node starts."""
        self.record(header, payload)

    def message(self, message: bytes) -> None:
        parts = unpack(message)
        record = self.record
        for i in range(0, len(parts) - 1, 2):
            record(parts[i], parts[i + 1])
        if len(parts) % 2:
            self.drop(parts[-1][:80], "a header without its payload")

    def record(self, header: bytes, payload: bytes) -> None:
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
        route[0](*route[1], payload)

    def route(self, header: bytes) -> tuple | None:
        try:
            route = read_header(header)
        except (ValueError, TypeError) as exc:
            self.drop(header, str(exc))
            return None
        route = (self.deliver[route[0]], route[1:])
        if len(self.routes) >= MAX_ROUTES:
            self.routes.clear()
        self.routes[header] = route
        return route

    def drop(self, header: bytes, why: str) -> None:
        self.dropped += 1
        self.throttle.warning("dropped a record from the bus (%s): %r", why, header[:120])
