# cython: language_level=3, boundscheck=False, wraparound=False
"""Plain-TCP connections of our own, from accept to close.

A uvloop transport with its libuv handle costs an idle connection about
1,150 bytes, and making one, with the loop's Python socket object and its
calls, was a sixth of a connection's CPU in a connection storm. The hub
writes through write_c (the C contract in _socket.pxd: send now, queue the
rest, nothing once closed) and the connection's protocols (the handshake,
then a FrameReader) parse what the client sends, so a transport has little
to do: tell its protocol what arrived, queue what the socket would not take,
and close; its descriptor is its own, closed only by _lose. A SocketTransport does that for one descriptor; one Poller (an
epoll set, watched by the loop as a single reader) wakes them all; an
Acceptor accepts onto them. They keep asyncio's transport interface (write,
get_write_buffer_size, pause_reading, close, write_eof, abort; the
protocol's get_buffer, buffer_updated, pause_writing, resume_writing,
connection_lost, called as asyncio calls them), so the protocols and the hub
do not know which transport they have. Linux only (epoll); elsewhere, and
under TLS, the loop's transports are used.
"""
from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport EAGAIN, EINTR, EMFILE, ENFILE, ENOBUFS, ENOMEM, errno
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

from tickcast._reader cimport READ_SIZE, FrameReader, read_buffer

cdef extern from "<sys/socket.h>" nogil:
    ctypedef long ssize_t
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int setsockopt(int fd, int level, int name, const void* value, unsigned int size)
    enum: MSG_DONTWAIT
    enum: MSG_NOSIGNAL
    enum: SHUT_WR
    enum: SOL_SOCKET
    enum: SO_SNDBUF

cdef extern from "Python.h":
    object PyUnicode_InternFromString(const char* s)

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

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
    #include <arpa/inet.h>
    #include <netinet/in.h>
    /* accept4, non-blocking; the peer's address as text in host. TCP_NODELAY
       and SO_SNDBUF come from the listener (Linux copies them). */
    static int tc_accept(int lfd, char* host, int hostlen) {
        struct sockaddr_storage a;
        socklen_t n = sizeof(a);
        int fd = accept4(lfd, (struct sockaddr*)&a, &n, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return fd;
        host[0] = '?'; host[1] = 0;
        if (a.ss_family == AF_INET) {
            /* by hand: inet_ntop goes through sprintf, a twentieth of a
               connection's user time in a storm */
            const unsigned char* b = (const unsigned char*)&((struct sockaddr_in*)&a)->sin_addr;
            char* h = host;
            for (int i = 0; i < 4; i++) {
                unsigned v = b[i];
                if (v >= 100) { *h++ = '0' + v / 100; v %= 100; *h++ = '0' + v / 10; v %= 10; }
                else if (v >= 10) { *h++ = '0' + v / 10; v %= 10; }
                *h++ = '0' + v;
                *h++ = i < 3 ? '.' : 0;
            }
        }
        else if (a.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6*)&a)->sin6_addr, host, hostlen);
        return fd;
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
    static int tc_accept(int lfd, char* host, int hostlen) { return -1; }
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
    int tc_accept(int lfd, char* host, int hostlen)
    int TC_ADD, TC_MOD, TC_DEL
    unsigned int TC_IN, TC_OUT, TC_HUP, TC_RDHUP

def set_sndbuf(int fd, int size):
    """SO_SNDBUF on a socket of the loop's (TLS, or no epoll): uvloop's
    socket stand-in would make a Python socket object for the call (7% of a
    connection's CPU in a py-spy profile of a connection storm). Ours get it
    from the listener."""
    if setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size)) != 0:
        raise OSError("setsockopt(SO_SNDBUF) failed")


cdef Py_ssize_t HIGH_WATER = 64 * 1024      # uvloop's defaults: pause_writing above,
cdef Py_ssize_t LOW_WATER = 16 * 1024       # resume_writing once below


cdef class Poller:
    """One epoll set for every SocketTransport of a loop."""

    def __init__(self, loop):
        self.loop = loop
        self.ep = tc_epoll_create()
        self.count = 0
        self.lost = []
        if self.ep >= 0:
            loop.add_reader(self.ep, self.poll)

    @property
    def ready(self):
        """False where there is no epoll."""
        return self.ep >= 0

    def poll(self):
        """Dispatch what is ready. Ends come first: the losses found since
        the last poll (a send that failed in a flush), then the hangups of
        this batch, so that a connection that ended has given back its
        key's place before a request read here asks for it (a client that
        reconnects at once after a reset must not meet its own dead
        connection)."""
        cdef void* ptrs[256]
        cdef unsigned int events[256]
        cdef int k, i
        while True:
            self.tell_lost()
            k = tc_epoll_wait(self.ep, ptrs, events, 256)
            for i in range(k):
                if events[i] & TC_HUP:
                    (<SocketTransport>ptrs[i])._ready(events[i])
            for i in range(k):
                if not events[i] & TC_HUP:
                    (<SocketTransport>ptrs[i])._ready(events[i])
            if k < 256:
                return

    def tell_lost(self):
        """Tell the protocols of the transports lost since the last poll."""
        cdef SocketTransport tr
        while self.lost:
            batch, self.lost = self.lost, []
            for tr, exc in batch:
                tr._tell_lost(exc)

    def close(self):
        if self.ep >= 0:
            self.loop.remove_reader(self.ep)
            close(self.ep)
            self.ep = -1

    def adopt(self, int fd, protocol):
        """A SocketTransport that owns ``fd`` from now on (a connected,
        non-blocking socket whose Python object was detached): for tests
        and benchmarks, which have no Acceptor."""
        tr = self._watch(fd, protocol)
        if tr is None:
            raise OSError("epoll refused the descriptor")
        return tr

    cdef SocketTransport _watch(self, int fd, protocol):
        """A SocketTransport for ``fd`` (non-blocking), registered; None if epoll refuses it."""
        cdef SocketTransport tr = SocketTransport.__new__(SocketTransport)
        tr.poller = self
        tr.fd = fd
        tr.protocol = protocol
        tr.out = None
        tr.events = TC_IN | TC_RDHUP
        if tc_epoll_ctl(self.ep, TC_ADD, fd, tr.events, <void*>tr) != 0:
            return None
        tr.registered = True
        Py_INCREF(tr)                  # the poller's reference, while registered
        self.count += 1
        return tr


cdef class Acceptor:
    """A listening socket watched by the loop. Each connection it accepts is
    a SocketTransport from the start, whose protocol ``factory(transport,
    peer)`` makes (peer: the client's address as a string): no loop
    transport is made for it, nor any Python socket object."""
    cdef Poller poller
    cdef object sock                # the listening socket
    cdef int fd
    cdef object factory
    cdef bint watching
    cdef bint paused

    def __init__(self, Poller poller, sock, factory):
        if poller.ep < 0:
            raise OSError("no epoll here")
        self.poller = poller
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        self._watch()

    def _watch(self):
        if self.fd >= 0 and not self.watching and not self.paused:
            self.watching = True
            self.poller.loop.add_reader(self.fd, self._accept)

    def pause(self):
        """Accept nothing until resume(): new connections wait in the
        kernel's listen backlog (the server is answering as many refusals
        as it may at once)."""
        self.paused = True
        if self.watching:
            self.poller.loop.remove_reader(self.fd)
            self.watching = False

    def resume(self):
        self.paused = False
        self._watch()

    def close(self):
        """Stop accepting and close the listening socket."""
        if self.watching:
            self.poller.loop.remove_reader(self.fd)
            self.watching = False
        self.fd = -1
        self.sock.close()

    def _accept(self):
        cdef int fd, i
        cdef char host[64]
        cdef SocketTransport tr
        for i in range(128):             # then let the loop run other work
            fd = tc_accept(self.fd, host, sizeof(host))
            if fd < 0:
                if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                    # Out of descriptors: the kernel keeps the connection queued
                    # and the listener stays readable, so look again shortly.
                    self.poller.loop.remove_reader(self.fd)
                    self.watching = False
                    self.poller.loop.call_later(0.1, self._watch)
                    return
                if errno == EAGAIN or errno == EINTR:
                    return
                continue                  # ECONNABORTED and the like: that connection only
            tr = self.poller._watch(fd, None)
            if tr is None:
                close(fd)
                continue
            # Interned: the connections of one address share one string.
            tr.protocol = self.factory(tr, PyUnicode_InternFromString(host))
            tr.protocol.connection_made(tr)
            if self.paused:
                return                    # by that connection's admission


cdef class SocketTransport:
    # One per connection, so laid out small: 88 bytes with its headers.
    # Its fields are declared in _socket.pxd, the hub's contract with it.

    # -- what the hub calls, in C ------------------------------------------------

    cdef Py_ssize_t write_c(self, const char* p, Py_ssize_t n) except -1:
        """Send n bytes now, or queue what the socket does not take; returns
        the bytes queued after it. Once the transport is closing or closed,
        nothing is written: this check, on the transport's own descriptor,
        is what keeps a writer off a number the kernel has handed to another
        connection since."""
        cdef ssize_t sent = 0
        cdef Py_ssize_t have
        if self.fd < 0 or self.closing:
            return 0
        if self.out is None:
            sent = send(self.fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL)
            if sent < 0:
                if errno != EAGAIN and errno != EINTR:
                    self._lose(OSError(errno, "send failed"))
                    return 0
                sent = 0
            if sent == n:
                return 0
            self.out = PyByteArray_FromStringAndSize(p + sent, n - sent)
            self.out_at = 0
            self._want(self.events | TC_OUT)
        else:
            have = PyByteArray_GET_SIZE(self.out)
            PyByteArray_Resize(self.out, have + n)
            memcpy(PyByteArray_AS_STRING(self.out) + have, p, n)
        if not self.paused and self.queued() > HIGH_WATER:
            self.paused = True
            self.protocol.pause_writing()
        return self.queued()

    cdef Py_ssize_t queued(self) noexcept:
        return 0 if self.out is None else PyByteArray_GET_SIZE(self.out) - self.out_at

    # -- asyncio's transport interface -------------------------------------------

    def get_write_buffer_size(self):
        return self.queued()

    def write(self, bytes data):
        self.write_c(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    def pause_reading(self):
        self.reading_paused = True
        self._want(self.events & ~(TC_IN | TC_RDHUP))

    def resume_reading(self):
        self.reading_paused = False
        self._want(self.events | TC_IN | TC_RDHUP)

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
        """The descriptor, for a look at its options: valid only while the
        transport is open, and kept by nothing of the server's."""
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
        if self.reading_paused:
            if events & TC_HUP and self.fd >= 0:     # only HUP and ERR are watched meanwhile
                self._lose(None, True)
            return 0
        if self.fd >= 0 and events & (TC_IN | TC_HUP):
            reader = self.protocol
            if type(reader) is FrameReader:       # an upgraded connection: its reader's C contract
                n = recv(self.fd, read_buffer(), READ_SIZE, MSG_DONTWAIT)
                if n > 0:
                    (<FrameReader>reader).received(n)
            else:                                 # a handshake: any buffered protocol
                PyObject_GetBuffer(reader.get_buffer(-1), &view, PyBUF_WRITABLE)
                try:
                    n = recv(self.fd, view.buf, view.len, MSG_DONTWAIT)
                finally:
                    PyBuffer_Release(&view)
                if n > 0:
                    reader.buffer_updated(n)
            if n == 0:
                self.protocol.eof_received()
                self._lose(None, True)
            elif n < 0 and errno != EAGAIN and errno != EINTR:
                self._lose(OSError(errno, "recv failed"), True)
        return 0

    cdef int _drain(self) except -1:
        cdef Py_ssize_t left = self.queued()
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
        self._want(self.events & ~TC_OUT)
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

    cdef int _lose(self, exc, bint now=False) except -1:
        """Close the descriptor now. The protocol hears of it from the
        poller, when this is called from its own code or the hub's (a send
        that failed, a close it asked for), as asyncio tells it, in a
        callback of its own; with ``now`` (the poller saw the end, no other
        code is under way) at once."""
        if self.fd < 0:
            return 0
        cdef SocketTransport keep = self     # alive until the protocol is told
        cdef bint registered = self.registered != 0
        if registered:
            tc_epoll_ctl(self.poller.ep, TC_DEL, self.fd, 0, NULL)
            self.registered = False
            self.poller.count -= 1
        close(self.fd)
        self.fd = -1
        self.closing = True
        self.out = None
        if registered:
            Py_DECREF(self)
        if now:
            self._tell_lost(exc)
            return 0
        # Told at the start of the next poll, or by the loop if that is later;
        # the list holds a reference of its own.
        if not self.poller.lost:
            self.poller.loop.call_soon(self.poller.tell_lost)
        self.poller.lost.append((self, exc))
        return 0

    cdef _tell_lost(self, exc):
        if not self.lost:
            self.lost = True
            self.protocol.connection_lost(exc)
