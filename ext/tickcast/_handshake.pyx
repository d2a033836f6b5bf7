# cython: language_level=3
"""A connection from accept to upgrade.

A Handshake is the transport's protocol until the WebSocket upgrade is
done: it gathers the request head (_http.pyx reads it and makes the 101),
has the server route it (a dialect's connection, or a refusal) and answers.
Around that it guards the server:
- knows the client's address before the request is routed, so the server
  can bound connections per address;
- refuses a connection at once while the server is at its capacity (HTTP
  503), before the descriptor limit would make the kernel drop it silently;
- answers a request head longer than MAX_REQUEST with 431, a request that
  is not a WebSocket upgrade with 400, a version other than 13 with 426,
  and is cut after --handshake-timeout (the server's sweep);
- with --limits, asks the cluster for the place of the request's key before
  the request is routed (reading paused meanwhile): HTTP 429 if there is none.
On success the connection's FrameReader becomes the transport's protocol and
takes whatever came after the request in the same read (the client's first
frames, perhaps half of one).
"""
import sys

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

cdef extern from "string.h":
    void* memmem(const void* haystack, size_t n, const void* needle, size_t m)

from tickcast.http import BadRequest, Refusal, UnsupportedVersion, read_upgrade
from tickcast.keys.places import connection_limit

MAX_REQUEST = 8 * 1024            # bytes of request line and headers
cdef int _MAX_REFUSING = 32       # refused connections waiting for their request, at once

cdef inline Py_ssize_t _head_end(bytearray data, Py_ssize_t start, Py_ssize_t n):
    """Where the blank line after the request head starts in data[start:n], or -1
    (bytearray.find's argument parsing alone cost more than the search)."""
    cdef const char* p = PyByteArray_AS_STRING(data)
    cdef const char* at = <const char*>memmem(p + start, n - start, b"\r\n\r\n", 4)
    return at - p if at != NULL else -1

cdef enum:
    HANDSHAKING, REFUSING, LEASING, ANSWERED, DONE
# Reads land here (the loop hands data to one protocol at a time); a
# handshake keeps bytes of its own only while its request head is partial.
cdef bytearray _BUFFER = bytearray(64 * 1024)
cdef object _VIEW = memoryview(_BUFFER)
_TOO_LARGE = Refusal(431, "REQUEST_TOO_LARGE", f"The request head is over {MAX_REQUEST} bytes.")
_INTERNAL = Refusal(500, "INTERNAL_ERROR", "The server failed to handle the request.")
_VERSION = Refusal(426, "UNSUPPORTED_VERSION", "This server speaks WebSocket version 13.",
                   {"Sec-WebSocket-Version": "13"})          # RFC 6455 §4.4


cdef class Handshake:
    """An asyncio buffered protocol, compiled: one is made for every
    connection, and in a storm its Python steps were a tenth of the
    connection's user time."""
    cdef object server
    cdef readonly object transport
    cdef object peer                # the client's address (None: ask the transport)
    cdef bytearray head             # a partial request head
    cdef object refusal             # refused at accept: the answer, once the request is in
    cdef int state
    cdef bint counted               # in the server's count of handshaking or refusing connections
    cdef object placed              # (principal, its key's place in the cluster) until the connection has it

    def __init__(self, server, transport=None, peer=None):
        self.server = server
        self.transport = transport
        self.peer = peer
        self.state = HANDSHAKING

    # -- asyncio protocol ------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        server = self.server
        if self.peer is None:
            peer = transport.get_extra_info("peername")
            # Interned, as the Acceptor's: the connections of one address share one string.
            self.peer = sys.intern(peer[0]) if isinstance(peer, tuple) else "?"
        admission = server.admission
        self.refusal = admission.admit(self, self.peer, server.loop.time())
        self.counted = True
        if self.refusal is None:
            return
        # Refused: answered once its request is in (an answer before it confuses
        # clients; closing before it is read would reset the answer away),
        # within a second, and only so many at a time: at that many the
        # server stops accepting, and the connections after them wait in the
        # kernel's listen backlog for their turn.
        server.refused(503, self.refusal.code)
        if admission.refusing >= _MAX_REFUSING and not server.pauses_accepting:
            # The loop's listener (TLS) cannot be paused: past the bound, cut.
            self.counted = False
            transport.abort()
            return
        self.state = REFUSING
        admission.refusing += 1
        if admission.refusing == _MAX_REFUSING:
            server.accepting(False)
        server.loop.call_later(1.0, transport.abort)

    def get_buffer(self, size_hint):
        return _VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef bytearray data
        cdef Py_ssize_t n, end, start
        if self.state > REFUSING:
            return                     # answered, or waiting for the cluster: nothing more is read
        if self.head is None:          # read where it lies, copied only if partial
            data, n = _BUFFER, nbytes
            end = _head_end(data, 0, n)
        else:
            start = max(0, PyByteArray_GET_SIZE(self.head) - 3)
            self.head += _VIEW[:nbytes]
            data, n = self.head, PyByteArray_GET_SIZE(self.head)
            end = _head_end(data, start, n)
        if (end if end >= 0 else n) > MAX_REQUEST:
            self.server.refused(431, "REQUEST_TOO_LARGE", self.peer)
            self._answer(_TOO_LARGE)
        elif end < 0:
            if self.head is None:
                self.head = _BUFFER[:nbytes]
        elif self.state == REFUSING:
            self._answer(self.refusal)
        else:
            self.head = None
            self._request(data, end, bytes(data[end + 4:n]) if end + 4 < n else b"")

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self._uncount()
        self.head = None

    def pause_writing(self):
        pass                           # nothing but the handshake's reply is written

    def resume_writing(self):
        pass

    # -- internals -------------------------------------------------------------

    cdef _request(self, bytearray data, Py_ssize_t end, bytes rest):
        """``data[:end]``: the request head; ``rest``: what came after it."""
        try:
            target, switching = read_upgrade(data, end)
        except BadRequest as exc:
            self._refuse(Refusal(400, "BAD_REQUEST", f"Not a WebSocket upgrade request: {exc}."))
            return
        except UnsupportedVersion:
            self._refuse(_VERSION)
            return
        server = self.server
        if server.places.clustered:
            principal = server.principal(target)
            if principal is not None:
                self.state = LEASING
                self.transport.pause_reading()
                server.spawn(self._place(principal, target, switching, rest))
                return
        self._upgrade(target, switching, rest)

    cdef _upgrade(self, bytes target, bytes switching, bytes rest):
        server = self.server
        try:
            result = server.route(target, self.peer, self.placed)
        except Exception as exc:
            server.internal_error(self.peer, exc)
            result = _INTERNAL
        if type(result) is Refusal:
            self._answer(result)
            return
        self._uncount()
        self.state = DONE
        self.placed = None             # the connection holds it now
        transport = self.transport
        transport.write(switching)
        result.connected(transport)    # its FrameReader is the transport's protocol now
        if rest:
            transport.get_protocol().feed(rest)

    async def _place(self, principal, bytes target, bytes switching, bytes rest):
        """The key's place in the cluster, then the upgrade (or 429)."""
        places = self.server.places
        place = await places.take(principal)
        if self.transport.is_closing():      # gone meanwhile
            if place is not None:
                places.give_back(principal, place)
            return
        self.transport.resume_reading()
        self.state = HANDSHAKING
        if place is None:
            self._refuse(connection_limit(principal))
            return
        self.placed = (principal, place)
        try:
            self._upgrade(target, switching, rest)
        finally:
            if self.placed is not None:    # refused after all: give it back
                places.give_back(principal, place)
                self.placed = None

    cdef _refuse(self, refusal):
        self.server.refused(refusal.status, refusal.code, self.peer)
        self._answer(refusal)

    cdef _answer(self, refusal):
        """Send an HTTP refusal and end our side. What the client still sends
        is read and dropped until it hangs up: closing at once would reset
        the answer away before the client reads it."""
        self.head = None
        self.state = ANSWERED          # still counted: it holds a descriptor until it goes
        self.transport.write(refusal.response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:                          # TLS: no half-close; the answer is flushed, then closed
            self.transport.close()
        self.server.loop.call_later(1.0, self.transport.abort)

    cdef _uncount(self):
        if self.counted:
            self.counted = False
            if self.refusal is not None:
                self.server.admission.refusing -= 1
                if self.server.admission.refusing == _MAX_REFUSING - 1:
                    self.server.accepting(True)
            else:
                self.server.admission.handshakes.pop(self, None)
