"""One WebSocket connection: frames in, the hub out.

The Handshake (ext/tickcast/_handshake.pyx) does the upgrade and the server
routes it to a connection of one dialect. From then on the hub writes to the
socket and a FrameReader (ext/tickcast/_reader.pyx) parses what the client sends.

Dialects subclass Connection and implement ``on_message`` (and the hooks
below). Everything sent, control frames included, goes through the hub's
outbox for this connection, so replies, snapshots and updates keep their
order and share one write per event-loop iteration.

This class is the boundary between a client and the server: whatever a
client sends is answered here or by its dialect, never with a traceback,
and costs it budget in proportion to its size.
"""
from __future__ import annotations

import logging
import time
from enum import IntEnum
from collections import Counter
from typing import TYPE_CHECKING, Protocol

import orjson
import simdjson

from tickcast._reader import FrameReader
from tickcast._socket import SocketTransport, set_sndbuf
from tickcast.budget import spend

log = logging.getLogger("tickcast.connections")

if TYPE_CHECKING:
    import asyncio

    from tickcast._fanout import Hub
    from tickcast.config import Settings


CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class CloseCode(IntEnum):
    """The close codes the server sends (RFC 6455 §7.4.1)."""
    OK = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_TEXT = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009


# Close codes a peer may send (RFC 6455 §7.4): its close is answered with the
# same code; any other code, or a 1-byte payload, is a protocol error (1002).
_SENDABLE = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
# A control message costs one unit of the rate budget per BYTES_PER_UNIT
# started, so that the budget bounds the work a client causes, not its count
# of messages: a subscribe of ordinary size costs one.
BYTES_PER_UNIT = 4096

INVALID = object()
_json = simdjson.Parser()


def parse_json(payload: bytes):
    """The message as Python objects, or INVALID. simdjson raises ValueError
    for malformed JSON or UTF-8, and RuntimeError for nesting past its depth
    limit or an integer past 64 bits: all are a client's malformed message."""
    try:
        return _json.parse(payload, True)
    except (ValueError, RuntimeError):
        return INVALID


class Closing:
    """How a connection is ending, made when it starts to (few are at once)."""
    __slots__ = ("code", "by", "abort", "heavy")

    def __init__(self, code: int | None, by: str) -> None:
        self.code = code                          # the code of our close frame; None: the network's end
        self.by = by
        self.abort: asyncio.TimerHandle | None = None     # cuts it if the peer does not finish
        self.heavy = False                        # closed with a full queue (a slow consumer)


class Host(Protocol):
    """What a connection uses of its node, and all it may use (a dialect's
    connection adds what its dialect needs): the server is one."""
    hub: Hub
    settings: Settings
    loop: asyncio.AbstractEventLoop
    connections: Connections
    cids: int                       # connections numbered so far, for the logs
    heap_dirty: bool                # set when a connection that queued megabytes goes
    stats: Counter                  # what clients provoked, by kind
    errors_sent: Counter            # (dialect, code)
    accepted: Counter               # dialect

    def internal_error(self, peer: str, exc: Exception) -> None: ...


class Connections:
    """The upgraded connections by their hub slot: a list indexed by slot
    (the hub gives the lowest free one), 8 bytes a connection where a dict
    took 37, with the part of a dict's interface the server uses."""
    __slots__ = ("_by_slot", "count")

    def __init__(self) -> None:
        self._by_slot: list[Connection | None] = []
        self.count = 0

    def add(self, slot: int, conn: Connection) -> None:
        by_slot = self._by_slot
        if slot >= len(by_slot):
            by_slot.extend([None] * (slot + 1 - len(by_slot)))
        if by_slot[slot] is None:
            self.count += 1
        by_slot[slot] = conn

    def get(self, slot: int, default=None):
        conn = self._by_slot[slot] if 0 <= slot < len(self._by_slot) else None
        return default if conn is None else conn

    def pop(self, slot: int, default=None):
        conn = self.get(slot)
        if conn is None:
            return default
        self._by_slot[slot] = None
        self.count -= 1
        return conn

    def values(self) -> list[Connection]:
        return [conn for conn in self._by_slot if conn is not None]

    def __len__(self) -> int:
        return self.count


class Connection:
    # Every slot is 8 bytes of every connection: what only a closing
    # connection needs is in its Closing, what only a log line needs is made
    # when one is written.
    __slots__ = ("server", "peer", "transport", "slot", "full_at", "strikes", "closing", "_frags", "_log")

    DIALECT = "?"                                 # its name in metrics and logs
    BUDGETED = True                               # messages cost from a token bucket
    # A dialect whose every text message goes through parse_json need not
    # have it checked as UTF-8 first (simdjson validates it): it calls
    # not_text() when a parse fails instead.
    PARSES_TEXT = False

    def __init__(self, server: Host, peer: str = "?") -> None:
        self.server = server
        self.peer = peer                          # the client's address
        self.transport: asyncio.Transport | None = None
        self.slot = -1
        self.full_at = 0.0                        # its message budget (budget.py): full
        self.strikes = 0
        self.closing: Closing | None = None
        self._frags: tuple[bytearray, bool] | None = None   # a fragmented message so far, and if text
        self._log: tuple[int, float | None] | None = None    # (cid, opened_at), once logged

    @property
    def cid(self) -> int:
        """This process's number for the connection, in logs (given when first logged)."""
        if self._log is None:
            self.server.cids += 1
            self._log = (self.server.cids, None)
        return self._log[0]

    @property
    def opened_at(self) -> float | None:
        """When it opened (loop time), known if debug logs were on then."""
        return None if self._log is None else self._log[1]

    # -- dialect hooks ---------------------------------------------------------

    def opened(self) -> None:
        """The handshake completed and the connection has its slot."""

    def on_message(self, payload: bytes, is_text: bool) -> None:
        raise NotImplementedError

    def rate_limited(self, payload: bytes) -> None:
        """``payload`` went over the budget (the dialect says so in its words)."""

    def failed(self, payload: bytes) -> None:
        """Handling ``payload`` raised: answer with the dialect's generic error."""

    def released(self) -> None:
        """The connection is gone: give back what it held."""

    # -- from the handshake: the upgrade is done ----------------------------------

    def connected(self, tr: asyncio.Transport) -> None:
        """The 101 is written on ``tr``: from now on its protocol is our reader."""
        server = self.server
        tr.set_protocol(FrameReader(self, server.settings.max_frame_size))
        self.transport = tr
        # The hub writes to the transport, never to a descriptor of its own:
        # ours in C, the loop's (TLS) with one write of the whole outbox a flush.
        self.slot = server.hub.attach(tr)
        server.accepted[self.DIALECT] += 1
        if log.isEnabledFor(logging.DEBUG):
            self._log = (self.cid, server.loop.time())
            log.debug("connection opened", extra=self.log_fields())
        server.connections.add(self.slot, self)
        if server.settings.sndbuf and type(tr) is not SocketTransport:   # ours have the listener's
            set_sndbuf(tr.get_extra_info("socket").fileno(), server.settings.sndbuf)
        self.opened()

    # -- from the FrameReader ----------------------------------------------------

    def on_frame(self, op: int, fin: bool, payload: bytes) -> None:
        if self.closing:
            # Our close frame is out: only the peer's close matters now (§7.1.1).
            if op == CLOSE and self.transport is not None:
                self.transport.close()
            return
        if op == TEXT or op == BINARY:
            if self._frags is not None:
                self.close(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            elif fin:
                self._message(payload, op == TEXT)
            else:
                self._frags = (bytearray(payload), op == TEXT)
        elif op == CONTINUATION:
            if self._frags is None:
                self.close(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                return
            frags, is_text = self._frags
            frags += payload
            if len(frags) > self.server.settings.max_frame_size:
                self._frags = None
                self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
            elif fin:
                self._frags = None
                self._message(bytes(frags), is_text)
        elif op == PING:
            self.server.hub.send(self.slot, payload, PONG)
        elif op == PONG:
            self.server.hub.pong(self.slot)
        elif op == CLOSE:
            self._peer_closed(payload)

    def on_protocol_error(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def on_writing_paused(self, paused: bool) -> None:
        if self.slot >= 0:
            self.server.hub.writing_paused(self.slot, paused)

    def on_lost(self) -> None:
        server = self.server
        closing = self.closing
        if closing is None:
            closing = self.closing = Closing(None, "network")
        if closing.abort is not None:
            closing.abort.cancel()
            closing.abort = None
        if self.slot >= 0:
            server.hub.detach(self.slot)
            server.connections.pop(self.slot, None)
            self.slot = -1
        if closing.heavy:
            server.heap_dirty = True
        self.released()
        if log.isEnabledFor(logging.DEBUG):
            opened = self.opened_at
            log.debug("connection closed", extra={
                **self.log_fields(), "duration": None if opened is None else round(server.loop.time() - opened, 3),
                "code": closing.code or 1006, "by": closing.by if closing.code else "network"})

    def log_fields(self) -> dict:
        """Who this connection is, for a log line: never a key, only its prefix."""
        principal = getattr(self, "principal", None)
        return {"conn": self.cid, "peer": self.peer, "dialect": self.DIALECT,
                "tier": principal.tier.name if principal is not None else None,
                "key": f"{principal.prefix}…" if principal is not None else None}

    # -- sending and closing ---------------------------------------------------

    def send_json(self, obj: object) -> None:
        if type(obj) is dict and (obj.get("type") == "error" or obj.get("ok") is False):
            error = obj.get("error", obj)
            self.server.errors_sent[(self.DIALECT, error.get("code"))] += 1
        self.server.hub.send(self.slot, orjson.dumps(obj))

    def send_raw(self, payload: bytes) -> None:
        self.server.hub.send(self.slot, payload)

    def close(self, code: int, reason: str, *, flush: bool = True, answer: bool = False) -> None:
        """Close with ``code``: queued bytes first (unless ``flush`` is False),
        then the close frame.

        RFC 6455 §7.1.1: when we start the closing handshake, our side of TCP
        ends after the close frame (half-close) but we go on reading,
        discarding data, until the peer's close frame or EOF. Closing the
        socket at once would meet what the peer is still sending with a
        reset, and a client that sees the reset drops the replies it had not
        read yet. With ``answer`` the peer started it, and we hang up after
        our close frame. Either way the socket is cut if the peer does not
        finish within close_timeout."""
        if self.closing or self.transport is None:
            return
        closing = self.closing = Closing(int(code), "peer" if answer else "server")
        self.server.hub.close(self.slot, flush, int(code).to_bytes(2, "big") + reason.encode()[:123])
        tr = self.transport
        if answer:
            tr.close()                   # once what is queued has been written
        elif tr.can_write_eof():
            tr.write_eof()
        closing.abort = self.server.loop.call_later(self.server.settings.close_timeout, tr.abort)

    # -- internals -------------------------------------------------------------

    def _peer_closed(self, payload: bytes) -> None:
        """The peer's close frame: echo a valid code (or 1000 for none)."""
        if not payload:
            self.close(CloseCode.OK, "", answer=True)
            return
        code = int.from_bytes(payload[:2], "big")
        if len(payload) < 2 or code not in _SENDABLE:
            self.close(CloseCode.PROTOCOL_ERROR, "invalid close code", answer=True)
            return
        try:
            payload[2:].decode()
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_TEXT, "invalid UTF-8 in close reason", answer=True)
            return
        self.close(code, "", answer=True)

    def _message(self, payload: bytes, is_text: bool) -> None:
        if self.closing:
            return
        if is_text and not self.PARSES_TEXT and self.not_text(payload):
            return
        if self.BUDGETED:
            settings = self.server.settings
            cost = 1 + len(payload) // BYTES_PER_UNIT
            full_at = spend(self.full_at, time.monotonic(), cost if cost < settings.burst else settings.burst,
                            settings.rate, settings.burst)
            if full_at is None:
                self.server.stats["rate_limited"] += 1
                self.strikes += 1
                if self.strikes > settings.burst:
                    self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                else:
                    self.rate_limited(payload)
                return
            self.full_at = full_at
            self.strikes = 0
        self.handle(payload, is_text)

    def not_text(self, payload: bytes) -> bool:
        """Close with 1007 if a text message is not UTF-8 (RFC 6455 §8.1)."""
        try:
            payload.decode()
        except UnicodeDecodeError:
            self.close(CloseCode.INVALID_TEXT, "invalid UTF-8")
            return True
        return False

    def handle(self, payload: bytes, is_text: bool) -> None:
        """The dialect's on_message, behind the boundary."""
        try:
            self.on_message(payload, is_text)
        except Exception as exc:
            # A bug of ours, not the client's: answer, count, log a line (throttled).
            self.server.internal_error(self.peer, exc)
            self.failed(payload)
