# cython: language_level=3, boundscheck=False, wraparound=False
"""Load-generator client: picows with Cython callbacks, so the client is not
the bottleneck. Counts frames and bytes, checks the per-topic ``seq`` for loss
and order, and samples publish-to-receive latency from ``pub_ns``."""
from libc.stdint cimport int64_t
from libc.string cimport memcmp
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

cdef extern from "string.h":
    void* memmem(const void* h, size_t hl, const void* n, size_t nl) nogil


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t field_int(const char* p, Py_ssize_t n, const char* key, Py_ssize_t kl) noexcept nogil:
    cdef const char* at = <const char*>memmem(p, n, key, kl)
    if at == NULL:
        return -1
    at += kl
    cdef const char* end = p + n
    cdef int64_t v = 0
    while at < end and at[0] >= 48 and at[0] <= 57:
        v = v * 10 + (at[0] - 48)
        at += 1
    return v


cdef unsigned long long _made = 0


cdef class Sink(WSListener):
    cdef public unsigned long long frames, nbytes, gaps, reorders, others
    cdef public int close_code
    cdef public list latencies
    cdef public bytes hello
    cdef public int sample_every
    cdef unsigned long long phase     # staggers the sampled frames across sinks
    cdef public object transport
    cdef int64_t last_seq[4096]    # per (channel, BENCH{i}/USDT) topic; 0: not seen yet

    def __init__(self, bytes hello, int sample_every=97):
        self.hello = hello
        global _made
        self.sample_every = sample_every
        self.phase = _made % sample_every   # sinks with few frames each still give samples
        _made += 1
        self.latencies = []

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport

    cpdef on_ws_disconnected(self, WSTransport transport):
        if transport.close_handshake is not None and transport.close_handshake.recv is not None:
            self.close_code = transport.close_handshake.recv.code
        else:
            self.close_code = -1

    def start(self):
        """Send the subscribe message (after every client is connected)."""
        if self.hello:
            (<WSTransport>self.transport).send(WSMsgType.TEXT, self.hello)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef const char* p
        cdef Py_ssize_t n
        cdef int64_t seq, pub, sym, prev
        cdef const char* chan
        if frame.msg_type != WSMsgType.TEXT:
            return
        p = frame.payload_ptr
        n = frame.payload_size
        if n < 20 or memcmp(p, b'{"type":"update"', 16) != 0:
            self.others += 1
            return
        self.frames += 1
        self.nbytes += n
        seq = field_int(p, n, b'"seq":', 6)
        if seq > 0:
            sym = field_int(p, n, b'"symbol":"BENCH', 15)
            chan = <const char*>memmem(p, n, b'"channel":"', 11)
            if chan != NULL and sym >= 0:
                # trades, quotes, book, anything else: 0, 1, 2, 3
                sym += 1024 * (0 if chan[11] == 116 else 1 if chan[11] == 113 else 2 if chan[11] == 98 else 3)
            if 0 <= sym < 4096:
                prev = self.last_seq[sym]
                if prev and seq != prev + 1:
                    if seq <= prev:
                        self.reorders += 1
                    else:
                        self.gaps += seq - prev - 1
                self.last_seq[sym] = seq
        if (self.frames + self.phase) % self.sample_every == 0:
            pub = field_int(p, n, b'"pub_ns":', 9)
            if pub > 0:
                self.latencies.append(now_ns() - pub)

    def reset(self):
        self.frames = self.nbytes = self.others = 0
        self.latencies = []
