"""The Monday-style public API v4 at /v4/public/ws: requests, acks, stream frames.

A dialect owns no fan-out: its subscriptions are bits in the hub's index and
its stream frames go out through ``Hub.publish`` like every other update.
The wire format is ../shared/spec/monday-wire.md (the contract).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

import orjson

from tickcast.connection import INVALID, CloseCode, Connection, Host, parse_json
from tickcast.wire import show
from tickcast.wire.monday import INSTRUMENT_KINDS, SNAPSHOTS, RequestError, V4Streams, parse_identity

if TYPE_CHECKING:
    from tickcast.dialects.state import LatestState

def ack(rid, code: int | None = None, msg: str | None = None) -> bytes:
    if code is None:
        return orjson.dumps({"id": rid, "result": "success"})
    return orjson.dumps({"id": rid, "result": "error", "code": code, "msg": msg})


INVALID_JSON = ack(None, 400, "invalid JSON")
_USABLE_ID = (int, float)


# Instruments a publisher named that are remembered as existing; past it the
# least recently published are forgotten (a subscription to one is refused 404
# until it is published again).
MAX_INSTRUMENTS = 100_000


class MondayHost(Host, Protocol):
    """What the v4 dialect and its connections use of their node."""
    monday: Monday
    latest: LatestState


class Monday(V4Streams):
    """The v4 side of a server: topics, latest snapshots, what exists."""

    def __init__(self, server: MondayHost) -> None:
        self.server = server
        self.hub = server.hub
        self.index = server.hub.index
        # topic key -> stream -> latest payload
        self.latest = server.latest
        # What exists (a subscription to anything else is refused 404): the
        # chains and instruments publishers named, the most recent MAX_INSTRUMENTS.
        self.chains: set[int] = set()
        self.instruments: OrderedDict[tuple[int, str, int], None] = OrderedDict()
        self.per_address: dict[str, int] = {}

    def topic(self, ident: tuple) -> int | None:
        """The topic a subscription listens on (None: it never pushes)."""
        if ident[0] == "instrumentBasicInfo":
            return None
        return self.index.topic(("v4", *ident))

    def exists(self, ident: tuple) -> bool:
        if ident[1] not in self.chains:
            return False
        if ident[0] in ("portfolio", "common"):
            return True
        return (ident[1], ident[2], ident[3]) in self.instruments

    # -- publishing: from a feed in this process, or from the bus -------------------

    def route(self, ident: tuple) -> tuple:
        """Where a publisher's frames for ``ident`` go (its topic key, looked
        up on each publish: a publisher interns nothing); the chain and
        instrument it names exist from now on."""
        self.chains.add(ident[1])
        if ident[0] in INSTRUMENT_KINDS:
            known = self.instruments
            inst = (ident[1], ident[2], ident[3])
            if inst in known:
                known.move_to_end(inst)
            else:
                known[inst] = None
                if len(known) > MAX_INSTRUMENTS:
                    known.popitem(last=False)
        return ("v4", *ident)

    def emit(self, ident: tuple, frame: dict, latest: str | None) -> int:
        key = self.route(ident)
        tid = self.index.find(key)
        if latest is None and tid is None:
            self.index.unheard(key)
            return 0                 # nobody listens and nothing is kept: not even serialised
        return self._deliver(key, tid, latest, orjson.dumps(frame))

    def deliver(self, ident: tuple, latest: str | None, payload: bytes) -> int:
        """One serialised frame from the bus to its subscribers."""
        key = self.route(ident)
        return self._deliver(key, self.index.find(key), latest, payload)

    def _deliver(self, key: tuple, tid: int | None, latest: str | None, payload: bytes) -> int:
        """The one path of every update, whether its feed runs here or it
        came from the bus: kept if it is a stream's latest, then published
        to its topic if anybody holds it."""
        if latest is not None:
            self.latest.put(key, None, latest, payload)
        if tid is None:
            self.index.unheard(key)
            return 0
        # A kept stream (an order book, an instrument) is a state: a connection
        # behind gets its latest value; the others are events, and so is a kline
        # (a closed candle is never replaced by the next one).
        return self.hub.publish(tid, payload, None, None if latest is None or latest == "kline" else (key, latest))


class MondayConnection(Connection):
    DIALECT = "v4"
    PARSES_TEXT = True
    __slots__ = ("subs", "address")

    def __init__(self, server: MondayHost, peer: str = "?") -> None:
        super().__init__(server, peer)
        self.subs: dict[tuple, int | None] = {}   # identity -> topic
        self.address: str | None = None          # set while counted in per_address

    def send_error(self, rid, code: int, msg: str) -> None:
        """An error ack, counted for the metrics."""
        self.server.errors_sent[(self.DIALECT, str(code))] += 1
        self.send_raw(ack(rid, code, msg))

    @property
    def dialect(self) -> Monday:
        return self.server.monday

    def opened(self) -> None:
        self.address = self.peer
        counts = self.dialect.per_address
        counts[self.address] = counts.get(self.address, 0) + 1
        if counts[self.address] > self.server.settings.v4_max_connections_per_ip:
            self.send_error(None, 429, "too many connections from this address")
            self.close(CloseCode.POLICY_VIOLATION, "too many connections")

    def released(self) -> None:
        counts = self.dialect.per_address
        if self.address is not None:
            counts[self.address] -= 1
            if counts[self.address] <= 0:
                del counts[self.address]
            self.address = None

    def rate_limited(self, payload: bytes) -> None:
        self.send_error(_request_id(parse_json(payload)), 429, "too many requests")

    def failed(self, payload: bytes) -> None:
        self.send_error(_request_id(parse_json(payload)), 500, "internal error")

    def on_message(self, payload: bytes, is_text: bool) -> None:
        if len(payload) <= 32 and payload.strip().lower() == b"ping":
            self.send_raw(b"pong")
            return
        msg = parse_json(payload)
        if msg is INVALID and is_text and self.not_text(payload):
            return
        rid = _request_id(msg)
        if rid is None:
            self.server.errors_sent[(self.DIALECT, "400")] += 1
            self.send_raw(INVALID_JSON)
            return
        try:
            method = msg.get("method")
            method = method.upper() if isinstance(method, str) else method
            if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
                raise RequestError(400, f"invalid method {show(msg.get('method'), 60)}; expected SUBSCRIBE or UNSUBSCRIBE")
            ident = parse_identity(msg.get("params"))
            if method == "SUBSCRIBE":
                self._subscribe(rid, ident)
            else:
                self._unsubscribe(rid, ident)
        except RequestError as exc:
            self.send_error(rid, exc.code, exc.msg)

    def _subscribe(self, rid, ident: tuple) -> None:
        dialect = self.dialect
        if ident in self.subs:
            self.send_raw(ack(rid))              # a duplicate: success, and nothing twice
            return
        if not dialect.exists(ident):
            what = f"chainId {ident[1]}" if ident[1] not in dialect.chains else \
                f"instrument {ident[2]} with expiry {ident[3]} on chain {ident[1]}"
            raise RequestError(404, f"unknown {what}")
        if len(self.subs) >= self.server.settings.v4_max_subscriptions:
            raise RequestError(429, f"too many subscriptions (at most {self.server.settings.v4_max_subscriptions})")
        tid = dialect.topic(ident)
        self.subs[ident] = tid
        if tid is not None:
            self.server.hub.index.add(tid, self.slot)
        self.send_raw(ack(rid))                  # the ack goes before the first data frame
        key = ("v4", *ident)
        for stream in SNAPSHOTS.get(ident[0], ()):
            snapshot = dialect.latest.stream(key, None, stream)
            if snapshot is not None:
                self.send_raw(snapshot)

    def _unsubscribe(self, rid, ident: tuple) -> None:
        tid = self.subs.pop(ident, None)
        if tid is not None:
            self.server.hub.index.discard(tid, self.slot)
        self.send_raw(ack(rid))


def _request_id(msg: object):
    """The id a reply can carry: a JSON number of the request, else None."""
    rid = msg.get("id") if msg is not INVALID and isinstance(msg, dict) else None
    return rid if isinstance(rid, _USABLE_ID) and not isinstance(rid, bool) else None
