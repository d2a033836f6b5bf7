# cython: language_level=3, boundscheck=False, wraparound=False
"""A transport of our own for an upgraded plain-TCP connection.

A uvloop transport with its libuv handle costs an idle connection about
1,150 bytes (the transport, the handle, the loop's weak map entry): most of
what it costs. Once the handshake is done, the hub writes to the socket
itself and a FrameReader parses what the client sends, so the transport is
left with little to do: tell the reader what arrived, queue what the socket
would not take, and close. A SocketTransport does that for one descriptor,
and one Poller (an epoll set, watched by the loop as a single reader) wakes
them all. The connection keeps asyncio's transport interface (write,
get_write_buffer_size, close, write_eof, abort; the protocol's
buffer_updated, pause_writing, resume_writing, connection_lost, called as
asyncio calls them), so the hub and the connection do not know which they
have. Linux only (epoll); elsewhere, and under TLS, the loop's transport stays.
"""
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint32_t

cdef extern from "<sys/socket.h>" nogil:
    ctypedef long ssize_t
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    enum: MSG_DONTWAIT
    enum: MSG_NOSIGNAL
    enum: SHUT_WR

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    int dup(int fd)

cdef extern from *:
    """
    #ifdef __linux__
    #include <sys/epoll.h>
    static int tc_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
    static int tc_epoll_ctl(int ep, int op, int fd, unsigned int events, void* ptr) {
        struct epoll_event ev;
        ev.events = events;
        ev.data.ptr = ptr;
        return epoll_ctl(ep, op, fd, &ev);
    }
    /* Up to n ready (pointer, events) pairs, without waiting. */
    static int tc_epoll_wait(int ep, void** ptrs, unsigned int* events, int n) {
        struct epoll_event evs[256];
        int k = epoll_wait(ep, evs, n < 256 ? n : 256, 0);
        for (int i = 0; i < k; i++) { ptrs[i] = evs[i].data.ptr; events[i] = evs[i].events; }
        return k;
    }
    #define TC_ADD EPOLL_CTL_ADD
    #define TC_MOD EPOLL_CTL_MOD
    #define TC_DEL EPOLL_CTL_DEL
    #define TC_IN EPOLLIN
    #define TC_OUT EPOLLOUT
    #define TC_HUP (EPOLLHUP | EPOLLERR | EPOLLRDHUP)
    #define TC_RDHUP EPOLLRDHUP
    #else
    static int tc_epoll_create(void) { return -1; }
    static int tc_epoll_ctl(int ep, int op, int fd, unsigned int events, void* ptr) { return -1; }
    static int tc_epoll_wait(int ep, void** ptrs, unsigned int* events, int n) { return 0; }
    #define TC_ADD 0
    #define TC_MOD 0
    #define TC_DEL 0
    #define TC_IN 0
    #define TC_OUT 0
    #define TC_HUP 0
    #define TC_RDHUP 0
    #endif
    """
    int tc_epoll_create()
    int tc_epoll_ctl(int ep, int op, int fd, unsigned int events, void* ptr)
    int tc_epoll_wait(int ep, void** ptrs, unsigned int* events, int n)
    int TC_ADD, TC_MOD, TC_DEL
    unsigned int TC_IN, TC_OUT, TC_HUP, TC_RDHUP

cdef Py_ssize_t HIGH_WATER = 64 * 1024      # uvloop's defaults: pause_writing above,
cdef Py_ssize_t LOW_WATER = 16 * 1024       # resume_writing once below


cdef class Poller:
    """One epoll set for every SocketTransport of a loop."""
    cdef int ep
    cdef object loop
    cdef public Py_ssize_t count           # transports registered

    def __init__(self, loop):
        self.loop = loop
        self.ep = tc_epoll_create()
        self.count = 0
        if self.ep >= 0:
            loop.add_reader(self.ep, self.poll)

    def poll(self):
        cdef void* ptrs[256]
        cdef unsigned int events[256]
        cdef int k, i
        while True:
            k = tc_epoll_wait(self.ep, ptrs, events, 256)
            for i in range(k):
                (<SocketTransport>ptrs[i])._ready(events[i])
            if k < 256:
                return

    def close(self):
        if self.ep >= 0:
            self.loop.remove_reader(self.ep)
            close(self.ep)
            self.ep = -1

    def adopt(self, transport, protocol):
        """Take an upgraded connection off the loop's ``transport``: a
        SocketTransport on a duplicate of its descriptor, ``protocol`` its
        protocol; the loop's transport is closed (its descriptor only: the
        socket stays open through ours). None when that cannot be done here
        (no epoll, or the loop's transport still holds bytes to write)."""
        if self.ep < 0 or transport.get_write_buffer_size():
            return None
        cdef int fd = dup(transport.get_extra_info("socket").fileno())
        if fd < 0:
            return None
        cdef SocketTransport tr = SocketTransport.__new__(SocketTransport)
        tr.poller = self
        tr.loop = self.loop
        tr.fd = fd
        tr.protocol = protocol
        tr.out = None
        tr.events = TC_IN | TC_RDHUP
        if tc_epoll_ctl(self.ep, TC_ADD, fd, tr.events, <void*>tr) != 0:
            close(fd)
            return None
        tr.registered = True
        Py_INCREF(tr)                  # the poller's reference, while registered
        self.count += 1
        transport.set_protocol(_Gone())
        transport.abort()
        return tr


cdef class _Gone:
    """What the loop's transport tells once we have taken its connection: nothing."""
    def connection_lost(self, exc):
        pass

    def data_received(self, data):
        pass

    def eof_received(self):
        return False


cdef class SocketTransport:
    cdef Poller poller
    cdef object loop
    cdef int fd
    cdef object protocol
    cdef bytearray out              # bytes the socket would not take yet, else None
    cdef Py_ssize_t out_at          # how much of `out` is sent
    cdef uint32_t events
    cdef bint registered, closing, eof_pending, paused, lost

    # -- asyncio's transport interface -------------------------------------------

    def get_write_buffer_size(self):
        return self._queued()

    cdef inline Py_ssize_t _queued(self) noexcept:
        return 0 if self.out is None else PyByteArray_GET_SIZE(self.out) - self.out_at

    def write(self, data):
        """The hub calls this only with what the socket did not take."""
        cdef const char* p
        cdef Py_ssize_t n
        cdef ssize_t sent = 0
        if self.fd < 0 or self.closing:
            return
        if self.out is None:
            p = PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
            sent = send(self.fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
            if sent < 0:
                if errno != EAGAIN and errno != EINTR:
                    self._lose(OSError(errno, "send failed"))
                    return
                sent = 0
            if sent == n:
                return
            self.out = bytearray(data[sent:])
            self.out_at = 0
            self._want(TC_IN | TC_RDHUP | TC_OUT)
        else:
            self.out += data
        if not self.paused and self._queued() > HIGH_WATER:
            self.paused = True
            self.protocol.pause_writing()

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self.fd < 0 or self.eof_pending:
            return
        if self.out is None:
            shutdown(self.fd, SHUT_WR)
        else:
            self.eof_pending = True       # after what is queued

    def close(self):
        """Close once what is queued has been written."""
        if self.fd < 0 or self.closing:
            return
        self.closing = True
        if self.out is None:
            self._lose(None)

    def abort(self):
        self._lose(None)

    def is_closing(self):
        return self.closing or self.fd < 0

    def fileno(self):
        return self.fd

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_extra_info(self, name, default=None):
        return default

    # -- from the poller ---------------------------------------------------------------

    cdef int _ready(self, uint32_t events) except -1:
        cdef ssize_t n
        cdef Py_buffer view
        if self.fd < 0:
            return 0
        if events & TC_OUT and self.out is not None:
            self._drain()
        if self.fd >= 0 and events & (TC_IN | TC_HUP):
            PyObject_GetBuffer(self.protocol.get_buffer(-1), &view, PyBUF_WRITABLE)
            try:
                n = recv(self.fd, view.buf, view.len, MSG_DONTWAIT)
            finally:
                PyBuffer_Release(&view)
            if n > 0:
                self.protocol.buffer_updated(n)
            elif n == 0:
                self.protocol.eof_received()
                self._lose(None)
            elif errno != EAGAIN and errno != EINTR:
                self._lose(OSError(errno, "recv failed"))
        return 0

    cdef int _drain(self) except -1:
        cdef Py_ssize_t left = self._queued()
        cdef ssize_t sent = send(self.fd, PyByteArray_AS_STRING(self.out) + self.out_at, left,
                                 MSG_DONTWAIT | MSG_NOSIGNAL)
        if sent < 0:
            if errno != EAGAIN and errno != EINTR:
                self._lose(OSError(errno, "send failed"))
            return 0
        self.out_at += sent
        if sent < left:
            if self.out_at > 65536:                # give back what is sent, now and then
                del self.out[:self.out_at]
                self.out_at = 0
            if self.paused and left - sent < LOW_WATER:
                self.paused = False
                self.protocol.resume_writing()
            return 0
        self.out = None
        self.out_at = 0
        self._want(TC_IN | TC_RDHUP)
        if self.paused:
            self.paused = False
            self.protocol.resume_writing()
        if self.eof_pending:
            self.eof_pending = False
            shutdown(self.fd, SHUT_WR)
        if self.closing:
            self._lose(None)
        return 0

    cdef int _want(self, uint32_t events) except -1:
        if events != self.events and self.registered:
            self.events = events
            tc_epoll_ctl(self.poller.ep, TC_MOD, self.fd, events, <void*>self)
        return 0

    cdef int _lose(self, exc) except -1:
        """Close the descriptor now; the protocol hears of it from the loop,
        as asyncio tells it, in a callback of its own."""
        if self.fd < 0:
            return 0
        cdef bint registered = self.registered
        if registered:
            tc_epoll_ctl(self.poller.ep, TC_DEL, self.fd, 0, NULL)
            self.registered = False
            self.poller.count -= 1
        close(self.fd)
        self.fd = -1
        self.closing = True
        self.out = None
        self.loop.call_soon(self._tell_lost, exc)     # holds a reference of its own
        if registered:
            Py_DECREF(self)
        return 0

    def _tell_lost(self, exc):
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)
