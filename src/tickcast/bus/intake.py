"""A node's side of the bus: messages in, the dialects' deliver calls out.

Each distinct route header is checked once (dialect, channel, canonical
symbol, state key; or a v4 identity) and kept with the delivery it maps to
(up to MAX_ROUTES headers), so an update costs a dictionary lookup and a
check that its payload is a JSON object before the dialect looks its topic
up and Hub.publish: no re-encoding, no Python dict per update. A
record that fails a check is counted, logged (throttled) and dropped; it
never reaches a client.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
import simdjson

from tickcast.bus.base import unpack
from tickcast.dialects.marketai import CHANNELS, STATE_KEYS, channel_symbol
from tickcast.dialects.monday import STREAMS, TYPES, BadRequest, parse_identity

if TYPE_CHECKING:
    from tickcast.server import Server

MAX_ROUTES = 1 << 17          # distinct headers remembered (about 25 MB at most); past it the memo starts again


class Intake:
    def __init__(self, server: Server) -> None:
        self.server = server
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
            why = None
            h = orjson.loads(header)
            if not isinstance(h, list) or not h:
                why = "not a route"
            elif h[0] == "m" and len(h) == 4:
                why, route = self._marketai(*h[1:])
            elif h[0] == "v4" and len(h) == 3:
                why, route = self._v4(*h[1:])
            else:
                why = "unknown dialect"
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            why = f"malformed ({exc})"
        if why is not None:
            self.drop(header, why)
            return None
        if len(self.routes) >= MAX_ROUTES:
            self.routes.clear()
        self.routes[header] = route
        return route

    def _marketai(self, channel, key, state):
        if channel not in CHANNELS:
            return "unknown channel", None
        if not isinstance(key, str) or channel_symbol(channel, key) != key:
            return "malformed symbol", None
        fields = STATE_KEYS.get(channel)
        if fields is None:
            if state is not None:
                return "a state key on a channel without state", None
        elif not isinstance(state, list) or len(state) != len(fields) or \
                not all(v is None or isinstance(v, (str, int, float, bool)) for v in state):
            return f"state key must be the values of {', '.join(fields) or 'nothing'}", None
        else:
            state = tuple(state)
        return None, (self.server.marketai.deliver, (channel, key, state))

    def _v4(self, ident, latest):
        kind = ident[0] if isinstance(ident, list) and ident else None
        if not isinstance(kind, str) or kind not in TYPES or kind == "instrumentBasicInfo" \
                or len(ident) != 1 + len(TYPES[kind]):
            return "unknown v4 identity", None
        try:               # the server's own check of a subscription's identity
            canonical = parse_identity({"type": kind, **dict(zip(TYPES[kind], ident[1:]))})
        except BadRequest as exc:
            return exc.msg, None
        if list(canonical) != ident:
            return "a v4 identity not in its canonical form", None
        if latest is not None and STREAMS.get(latest, (None, False)) != (kind, True):
            return f"{latest!r} is not a kept stream of {kind}", None
        return None, (self.server.monday.deliver, (canonical, latest))

    def drop(self, header: bytes, why: str) -> None:
        self.dropped += 1
        self.server.stats["bus_dropped"] += 1
        self.server.throttle.warning("dropped a record from the bus (%s): %r", why, header[:120])
