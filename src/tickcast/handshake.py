"""A connection from accept to upgrade: picows' handshake behind a guard of ours.

A Handshake is the transport's protocol until the WebSocket handshake is
done, and forwards the bytes to picows' WSProtocol, which parses the request,
calls the server's router and answers. Around it the guard:
- knows the client's address before the request is routed (picows' router
  is not told), so the server can bound connections per address;
- refuses a connection at once while the server is at its capacity (HTTP
  503), before the descriptor limit would make the kernel drop it silently;
- answers a request head longer than MAX_REQUEST with 431 (picows would hang
  up without a word at its own 16 KiB);
- gives picows the request head only, and hands whatever came after it in
  the same read (the client's first frames, perhaps half of one) to the
  connection's FrameReader intact;
- with --limits, asks the cluster for the place of the request's key before
  picows routes it (reading paused meanwhile): HTTP 429 if there is none.
On success the connection's FrameReader becomes the protocol and the guard
and picows' protocol are dropped.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

import orjson
from picows import WSAutoPingStrategy
from picows.picows import WSProtocol

from tickcast.dialects.marketai import limit_message

if TYPE_CHECKING:
    from tickcast.server import Server

MAX_REQUEST = 8 * 1024            # bytes of request line and headers
_MAX_REFUSING = 32                # refused connections waiting for their request, at once
_END = b"\r\n\r\n"
_HANDSHAKING, _REFUSING, _ANSWERED, _DONE = range(4)
_DISCARD = memoryview(bytearray(4096))   # where a refused connection's bytes go
_REASONS = {429: "Too Many Requests", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}
# picows logs a line per connection at INFO; a logger-like object that is not
# a logging.Logger keeps it from making a child Logger per connection.
_PICOWS_LOG = logging.LoggerAdapter(logging.getLogger("picows.server"), {})


class _Seen:
    """The transport as picows sees it: the real one (``real``), except that
    its socket answers picows' option calls (TCP_NODELAY again, TCP_QUICKACK,
    four options read for a log line that is off) without a syscall each, and
    without the Python socket object uvloop's stand-in makes for each call:
    12 syscalls and 6 socket objects a connection. libuv set TCP_NODELAY at
    accept; QUICKACK does not last on Linux anyway."""
    __slots__ = ("real", "sock")

    def __init__(self, real: asyncio.Transport) -> None:
        self.real = real
        self.sock = _Options(real.get_extra_info("socket").fileno())

    def get_extra_info(self, name: str, default=None):
        return self.sock if name == "socket" else self.real.get_extra_info(name, default)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


class _Options:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def setsockopt(self, *args) -> None:
        pass

    def getsockopt(self, *args) -> int:
        return 0


def http_response(status: int, code: str, message: str) -> bytes:
    """A whole HTTP error response with the JSON refusal body of the API."""
    body = orjson.dumps({"ok": False, "error": {"code": code, "message": message}})
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


_TOO_LARGE = http_response(431, "REQUEST_TOO_LARGE", f"The request head is over {MAX_REQUEST} bytes.")


class Handshake(asyncio.BufferedProtocol):
    __slots__ = ("server", "ws", "transport", "peer", "view", "seen", "last", "refusal", "state",
                 "counted", "head", "lease")

    def __init__(self, server: Server) -> None:
        s = server.settings
        self.server = server
        self.ws: WSProtocol | None = WSProtocol(
            None, None, False,                 # no host, no path: the server side
            self._route, _PICOWS_LOG,
            True, s.handshake_timeout,
            False, 20, 20, WSAutoPingStrategy.PING_WHEN_IDLE,   # one heartbeat timer instead
            False,                             # pongs go through the hub, in order with the rest
            s.max_frame_size, None, s.read_buffer_size)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.view = None
        self.seen = 0                # bytes of the request head so far
        self.last = b""              # its last 3 bytes, to find the end across reads
        self.refusal: bytes | None = None    # refused at accept: the answer, once the request is in
        self.state = _HANDSHAKING
        self.counted = False         # in the server's count of handshaking or refusing connections
        self.head = b""              # the request line so far, when a key's place is asked for (--limits)
        self.lease: tuple | None = None      # (principal, lease) until the connection has it

    def _route(self, request):
        return self.server.route(request, self.peer, self.lease)

    # -- asyncio protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        # Interned: the connections of one address share one string.
        self.peer = sys.intern(peer[0]) if isinstance(peer, tuple) else "?"
        admission = server.admission
        self.refusal = admission.at_accept(self.peer)
        if self.refusal is None:
            admission.handshaking += 1
            self.counted = True
            self.ws.connection_made(_Seen(transport))
            return
        # Refused: answered once its request is in (an answer before it confuses
        # clients), within a second, and only so many at a time.
        server.refused(503, admission.reason(self.refusal))
        self.ws = None
        if admission.refusing >= _MAX_REFUSING:
            transport.abort()
            return
        self.state = _REFUSING
        admission.refusing += 1
        self.counted = True
        server.loop.call_later(1.0, transport.abort)

    def get_buffer(self, size_hint: int):
        self.view = self.ws.get_buffer(size_hint) if self.ws is not None else _DISCARD
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        if self.state == _ANSWERED:
            return                     # what a refused client still sends is dropped
        chunk = bytes(self.view[:nbytes])
        at = (self.last + chunk).find(_END)
        end = at + len(_END) - len(self.last) if at >= 0 else -1   # just past the head, in chunk
        if self.seen + (end if end >= 0 else nbytes) > MAX_REQUEST:
            self.server.refused(431, "REQUEST_TOO_LARGE", self.peer)
            self._answer(_TOO_LARGE)
        elif self.state == _REFUSING:
            if end >= 0:
                self._answer(self.refusal)
            else:
                self.seen += nbytes
                self.last = (self.last + chunk)[-3:]
        elif end < 0:
            self.seen += nbytes
            self.last = (self.last + chunk)[-3:]
            self.ws.buffer_updated(nbytes)
        else:
            if self.server.leases is not None:
                line = (self.head + chunk).split(b"\r\n", 1)[0].split(b" ")
                principal = self.server.principal(line[1]) if len(line) == 3 else None
                if principal is not None:
                    self.transport.pause_reading()
                    self.server.spawn(self._lease(principal, chunk, end, nbytes))
                    return
            self._upgrade(chunk, end, nbytes)
        if self.server.leases is not None and self.state == _HANDSHAKING and len(self.head) < MAX_REQUEST:
            self.head += chunk

    def _upgrade(self, chunk: bytes, end: int, nbytes: int) -> None:
        ws = self.ws
        ws.buffer_updated(end)        # picows answers; on success the connection takes over
        conn = ws.listener
        if conn is not None and conn.transport is not None:
            self._uncount()
            self.state = _DONE
            self.ws = None
            self.lease = None         # the connection holds it now
            if end < nbytes:
                conn.transport.get_protocol().feed(chunk[end:])

    async def _lease(self, principal, chunk: bytes, end: int, nbytes: int) -> None:
        """The key's place in the cluster, then the upgrade (or 429)."""
        leases = self.server.leases
        lease = await leases.acquire(principal.key_hash, principal.tier.max_connections)
        if self.ws is None or self.transport.is_closing():      # gone meanwhile
            if lease is not None:
                leases.release(principal.key_hash, lease)
            return
        self.transport.resume_reading()
        if lease is None:
            self.server.refused(429, "CONNECTION_LIMIT", self.peer)
            self._answer(http_response(429, "CONNECTION_LIMIT", limit_message(principal)))
            return
        self.lease = (principal, lease)
        try:
            self._upgrade(chunk, end, nbytes)
        finally:
            if self.lease is not None:     # refused after all (a bad upgrade): give it back
                leases.release(principal.key_hash, lease)
                self.lease = None

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()
        if self.ws is not None:
            self.ws.connection_lost(exc)
            self.ws = None

    def pause_writing(self) -> None:
        pass                           # nothing but the handshake's reply is written

    def resume_writing(self) -> None:
        pass

    # -- internals -------------------------------------------------------------

    def _answer(self, response: bytes) -> None:
        """Send an HTTP refusal and end our side. What the client still sends
        is read and dropped until it hangs up: closing at once would reset
        the answer away before the client reads it."""
        if self.ws is not None:
            self.ws.connection_lost(None)   # its handshake timer goes
            self.ws = None
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:                          # TLS: no half-close; the answer is flushed, then closed
            self.transport.close()
        self.server.loop.call_later(1.0, self.transport.abort)
        self.state = _ANSWERED         # still counted: it holds a descriptor until it goes

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            if self.refusal is not None:
                self.server.admission.refusing -= 1
            else:
                self.server.admission.handshaking -= 1
