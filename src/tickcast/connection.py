"""One WebSocket connection: frames in, the hub out.

picows does the handshake. From then on the hub writes to the socket and a
FrameReader (ext/tickcast/_reader.pyx) parses what the client sends, so that
no picows object stays alive per connection (they cost more than half of an
idle connection's memory).

Dialects subclass Connection and implement ``on_message`` (and the hooks
below). Everything sent, control frames included, goes through the hub's
outbox for this connection, so replies, snapshots and updates keep their
order and share one write per event-loop iteration.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSTransport

from tickcast._reader import FrameReader
from tickcast.limits import TokenBucket

if TYPE_CHECKING:
    import asyncio

    from tickcast.server import Server


# Close codes a peer's close is answered with; anything else gets 1000.
_ECHOABLE = {int(c) for c in WSCloseCode} - {0, 1005, 1006, 1015} | set(range(3000, 5000))
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Connection(WSListener):
    __slots__ = ("server", "transport", "slot", "bucket", "strikes", "closing",
                 "_frags", "_frag_text", "_abort_handle")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.slot = -1
        self.bucket: TokenBucket | None = None    # made by the first message (it starts full)
        self.strikes = 0
        self.closing = False
        self._frags: bytearray | None = None
        self._frag_text = True
        self._abort_handle = None

    # -- dialect hooks ---------------------------------------------------------

    def opened(self) -> None:
        """The handshake completed and the connection has its slot."""

    def on_message(self, payload: bytes, is_text: bool) -> None:
        raise NotImplementedError

    def rate_limited(self, payload: bytes) -> None:
        """``payload`` went over the budget (the dialect says so in its words)."""

    def released(self) -> None:
        """The connection is gone: give back what it held."""

    # -- from picows: the handshake is done -------------------------------------

    def on_ws_connected(self, ws: WSTransport) -> None:
        server = self.server
        tr = self.transport = ws.underlying_transport
        sock = tr.get_extra_info("socket")
        self.slot = server.hub.attach(tr, sock.fileno())
        server.connections[self.slot] = self
        tr.set_protocol(FrameReader(self, server.settings.max_frame_size))
        if server.settings.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.settings.sndbuf)
        self.opened()

    def on_ws_frame(self, ws: WSTransport, frame: WSFrame) -> None:
        # Only frames that came in the same read as the upgrade request get
        # here (picows parses them before it lets go); the rest come from the reader.
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self.on_protocol_error(WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
        else:
            self.on_frame(int(frame.msg_type), frame.fin, frame.get_payload_as_bytes())

    # -- from the FrameReader ----------------------------------------------------

    def on_frame(self, op: int, fin: bool, payload: bytes) -> None:
        if op == TEXT or op == BINARY:
            if self._frags is not None:
                self.close(WSCloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            elif fin:
                self._message(payload, op == TEXT)
            else:
                self._frags = bytearray(payload)
                self._frag_text = op == TEXT
        elif op == CONTINUATION:
            if self._frags is None:
                self.close(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                return
            self._frags += payload
            if len(self._frags) > self.server.settings.max_frame_size:
                self._frags = None
                self.close(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            elif fin:
                payload, self._frags = bytes(self._frags), None
                self._message(payload, self._frag_text)
        elif op == PING:
            self.server.hub.send(self.slot, payload, PONG)
        elif op == PONG:
            self.server.hub.pong(self.slot)
        elif op == CLOSE:
            # Answer the peer's close with its own code, then hang up.
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close(code if code in _ECHOABLE else WSCloseCode.OK, "", abort_after=False)

    def on_protocol_error(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def on_writing_paused(self, paused: bool) -> None:
        if self.slot >= 0:
            self.server.hub.writing_paused(self.slot, paused)

    def on_lost(self) -> None:
        server = self.server
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if self.slot >= 0:
            server.hub.detach(self.slot)
            server.connections.pop(self.slot, None)
            self.slot = -1
        self.closing = True
        self.released()

    # -- sending and closing ---------------------------------------------------

    def send_json(self, obj: object) -> None:
        self.server.hub.send(self.slot, orjson.dumps(obj))

    def send_raw(self, payload: bytes) -> None:
        self.server.hub.send(self.slot, payload)

    def close(self, code: int, reason: str, *, flush: bool = True,
              abort_after: bool = True) -> None:
        """Close with ``code``: queued bytes first (unless ``flush`` is False),
        then the close frame; the socket is cut if the peer does not drain it
        within close_timeout."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self.server.hub.close(self.slot, flush, int(code).to_bytes(2, "big") + reason.encode()[:123])
        tr = self.transport
        tr.close()                   # once what is queued has been written
        if abort_after:
            self._abort_handle = self.server.loop.call_later(
                self.server.settings.close_timeout, tr.abort)

    # -- internals -------------------------------------------------------------

    def _message(self, payload: bytes, is_text: bool) -> None:
        if self.closing:
            return
        if self.bucket is None:
            self.bucket = TokenBucket(self.server.settings.rate, self.server.settings.burst)
        if not self.bucket.take():
            self.strikes += 1
            if self.strikes > self.server.settings.burst:
                self.close(WSCloseCode.POLICY_VIOLATION, "rate limit exceeded")
            else:
                self.rate_limited(payload)
            return
        self.strikes = 0
        self.on_message(payload, is_text)
