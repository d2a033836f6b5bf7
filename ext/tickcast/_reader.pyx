# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Client frames in, once the handshake (_handshake.pyx) is done.

A general WebSocket protocol object keeps a read buffer of at least 2 KiB
and a handful of objects for the life of a connection: most of what an idle
connection costs. A push server's clients send little (subscribe, ping,
pong, close), so after the handshake the connection's transport is handed a
FrameReader. All readers read into one shared buffer (the event loop hands data
to one protocol at a time) and a reader keeps bytes of its own only while a
frame is incomplete.

The reader checks what RFC 6455 asks of client frames (masked, known opcode,
no RSV bits without an extension, control frames final and at most 125
bytes, at most ``max_frame`` bytes) and hands each frame to its connection:
``on_frame(opcode, fin, payload)``, ``on_protocol_error(code, reason)`` once,
then nothing more; ``on_lost()`` when the socket is gone.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint64_t

# Reads land here (READ_SIZE: _reader.pxd).
cdef bytearray _SHARED = bytearray(READ_SIZE)
cdef object _SHARED_VIEW = memoryview(_SHARED)


cdef char* read_buffer() noexcept:
    return PyByteArray_AS_STRING(_SHARED)

cdef enum:
    PROTOCOL_ERROR = 1002
    MESSAGE_TOO_BIG = 1009


cdef class FrameReader:
    """An asyncio buffered protocol for the client side of one connection
    (our own transports call ``received`` instead: _reader.pxd)."""

    def __init__(self, conn, int max_frame):
        self.conn = conn
        self.pending = None
        self.max_frame = max_frame
        self.failed = False

    # -- asyncio protocol ------------------------------------------------------

    def connection_made(self, transport):
        pass

    def get_buffer(self, Py_ssize_t size_hint):
        return _SHARED_VIEW

    def buffer_updated(self, Py_ssize_t nbytes):
        self.received(nbytes)

    cdef int received(self, Py_ssize_t nbytes) except -1:
        cdef const uint8_t* p
        cdef Py_ssize_t used
        if self.failed:
            return 0
        if self.pending is None:
            p = <const uint8_t*>PyByteArray_AS_STRING(_SHARED)
            used = self._parse(p, nbytes)
            if used < nbytes and not self.failed:
                self.pending = bytearray(_SHARED_VIEW[used:nbytes])
        else:
            self.pending += _SHARED_VIEW[:nbytes]
            p = <const uint8_t*>PyByteArray_AS_STRING(self.pending)
            used = self._parse(p, PyByteArray_GET_SIZE(self.pending))
            if self.failed or used == PyByteArray_GET_SIZE(self.pending):
                self.pending = None
            elif used:
                del self.pending[:used]
        return 0

    def feed(self, bytes data):
        """Bytes the client sent before this reader took over: the rest of
        the read that held its upgrade request."""
        cdef Py_ssize_t at = 0, k, n = len(data)
        while at < n and not self.failed:
            k = min(n - at, len(_SHARED))
            _SHARED[:k] = data[at:at + k]
            self.received(k)
            at += k

    def eof_received(self):
        return False            # the transport closes; connection_lost follows

    def connection_lost(self, exc):
        self.pending = None
        self.conn.on_lost()

    def pause_writing(self):
        self.conn.on_writing_paused(True)     # the hub bounds what is queued (max_queue)

    def resume_writing(self):
        self.conn.on_writing_paused(False)

    # -- frames ----------------------------------------------------------------

    cdef Py_ssize_t _parse(self, const uint8_t* p, Py_ssize_t n) except -1:
        """Hand over every complete frame in p[:n]; return the bytes used."""
        cdef Py_ssize_t pos = 0, used
        while pos < n and not self.failed:
            used = self._frame(p + pos, n - pos)
            if used == 0:
                break
            pos += used
        return pos

    cdef Py_ssize_t _frame(self, const uint8_t* p, Py_ssize_t avail) except -1:
        """One frame from p: its size, or 0 if it is not all here yet."""
        if avail < 2:
            return 0
        cdef uint8_t b0 = p[0], b1 = p[1]
        cdef int op = b0 & 0x0F
        cdef bint fin = b0 >> 7
        cdef uint64_t length = b1 & 0x7F
        cdef Py_ssize_t h = 2, i
        if b0 & 0x70:
            return self._fail(PROTOCOL_ERROR, "reserved bits set")
        if not (b1 & 0x80):
            return self._fail(PROTOCOL_ERROR, "client frames must be masked")
        if op > 2 and op < 8 or op > 10:
            return self._fail(PROTOCOL_ERROR, "reserved opcode")
        if op >= 8 and (not fin or length > 125):
            return self._fail(PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
        if length == 126:
            if avail < 4:
                return 0
            length = (<uint64_t>p[2] << 8) | p[3]
            h = 4
        elif length == 127:
            if avail < 10:
                return 0
            length = 0
            for i in range(8):
                length = (length << 8) | p[2 + i]
            h = 10
        if length > <uint64_t>self.max_frame:
            return self._fail(MESSAGE_TOO_BIG, "message too big")
        if avail < h + 4 + <Py_ssize_t>length:
            return 0
        cdef const uint8_t* mask = p + h
        cdef const uint8_t* src = p + h + 4
        cdef bytes payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
        cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(payload)
        for i in range(<Py_ssize_t>length):
            dst[i] = src[i] ^ mask[i & 3]
        self.conn.on_frame(op, fin, payload)
        return h + 4 + <Py_ssize_t>length

    cdef Py_ssize_t _fail(self, int code, str reason) except -1:
        self.failed = True          # buffer_updated drops what is pending
        self.conn.on_protocol_error(code, reason)
        return 0
