"""One WebSocket connection: frames in, the hub out.

Dialects subclass Connection and implement ``on_message`` (and the hooks
below). Everything sent goes through the hub's outbox for this connection,
so replies, snapshots and updates keep their order and share one write per
event-loop iteration.
"""
from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from tickcast.limits import TokenBucket

if TYPE_CHECKING:
    from tickcast.server import Server


_ECHOABLE = {int(c) for c in WSCloseCode} - {0, 1005, 1006}


class Connection(WSListener):
    __slots__ = ("server", "transport", "slot", "bucket", "strikes", "closing",
                 "_frags", "_frag_text", "_abort_handle")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: WSTransport | None = None
        self.slot = -1
        self.bucket = TokenBucket(server.settings.rate, server.settings.burst)
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

    # -- picows callbacks ------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        server = self.server
        self.slot = server.hub.attach_ws(transport)
        server.connections[self.slot] = self
        if server.settings.sndbuf:
            sock = transport.underlying_transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server.settings.sndbuf)
        self.opened()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            # No extension is negotiated, so RSV bits fail the connection (RFC 6455 5.2).
            self.close(WSCloseCode.PROTOCOL_ERROR, "reserved bits set")
            return
        t = frame.msg_type
        if t == WSMsgType.TEXT or t == WSMsgType.BINARY:
            if self._frags is not None:
                self.close(WSCloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            elif frame.fin:
                self._message(frame.get_payload_as_bytes(), t == WSMsgType.TEXT)
            else:
                self._frags = bytearray(frame.get_payload_as_memoryview())
                self._frag_text = t == WSMsgType.TEXT
        elif t == WSMsgType.CONTINUATION:
            if self._frags is None:
                self.close(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                return
            self._frags += frame.get_payload_as_memoryview()
            if len(self._frags) > self.server.settings.max_frame_size:
                self._frags = None
                self.close(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            elif frame.fin:
                payload, self._frags = bytes(self._frags), None
                self._message(payload, self._frag_text)
        elif t == WSMsgType.PONG:
            self.server.hub.pong(self.slot)
        elif t == WSMsgType.CLOSE:
            # Answer the peer's close with its own code, then hang up.
            code = int(frame.get_close_code())
            code = code if code in _ECHOABLE else WSCloseCode.OK
            self.close(code, "", abort_after=False)
        # PING is answered by picows itself (enable_auto_pong).

    def on_ws_disconnected(self, transport: WSTransport) -> None:
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
        self.server.hub.close(self.slot, flush)
        tr = self.transport
        if not tr.is_close_frame_sent:
            tr.send_close(code, reason.encode())
        tr.disconnect(graceful=True)
        if abort_after:
            self._abort_handle = self.server.loop.call_later(
                self.server.settings.close_timeout, tr.disconnect, False)

    # -- internals -------------------------------------------------------------

    def _message(self, payload: bytes, is_text: bool) -> None:
        if self.closing:
            return
        if not self.bucket.take():
            self.strikes += 1
            if self.strikes > self.server.settings.burst:
                self.close(WSCloseCode.POLICY_VIOLATION, "rate limit exceeded")
            else:
                self.rate_limited(payload)
            return
        self.strikes = 0
        self.on_message(payload, is_text)
