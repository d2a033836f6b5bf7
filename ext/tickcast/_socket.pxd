from libc.stdint cimport uint8_t, uint32_t


cdef class Poller:
    cdef int ep
    cdef object loop
    cdef public Py_ssize_t count           # transports registered
    cdef list lost                         # (transport, exc): lost, their protocols not told yet

    cdef SocketTransport _watch(self, int fd, protocol)


cdef class SocketTransport:
    # The descriptor is this object's alone: it is closed only by _lose,
    # which sets fd to -1 in the same step, and nothing else keeps its
    # number. A writer that holds the transport (the hub) can therefore
    # never write to a descriptor that has since been given to another
    # connection: it writes through write_c, which checks fd first.
    cdef Poller poller
    cdef object protocol
    cdef bytearray out              # bytes the socket would not take yet, else None
    cdef Py_ssize_t out_at          # how much of `out` is sent
    cdef int fd
    cdef uint32_t events
    cdef uint8_t registered, closing, eof_pending, paused, lost, reading_paused

    cdef Py_ssize_t write_c(self, const char* p, Py_ssize_t n) except -1
    cdef Py_ssize_t queued(self) noexcept
    cdef int _ready(self, uint32_t events) except -1
    cdef int _drain(self) except -1
    cdef int _want(self, uint32_t events) except -1
    cdef int _lose(self, exc, bint now=*) except -1
    cdef _tell_lost(self, exc)
