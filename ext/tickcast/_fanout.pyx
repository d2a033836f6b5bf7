# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The broadcast loop: frame once, append everywhere, one write per connection.

Every connection owns an outbox indexed by its slot in the SubscriptionIndex.
``publish`` frames an update once, appends it to the tick log (every frame
published since the last flush) and walks the topic's subscribers, then its
parent's (each connection once): about one array entry or one bitset word per
subscriber (_bitsets.pyx), so a publish costs its audience. An outbox that has received every frame since it began
filling is only a range of that log (it *mirrors* it): when one topic reaches
everybody, nothing is copied per connection and every send reads the same hot
bytes. An outbox that misses a frame, or gets a reply of its own, copies its
range into a buffer of its own and goes on from there. ``flush`` runs once per
event-loop iteration and hands each dirty outbox to its socket in a single
send(2): that call is the cost of a fan-out server, so it is paid once per
tick, not per message. The hub holds transports, never descriptors: a
SocketTransport (_socket.pxd) sends at once while it has nothing queued and
queues what the socket does not take, so it owns the ordering; and it
writes nothing once closed, so no frame can reach a descriptor number that
the kernel has since given to another connection.
Under dense traffic even that is a send per frame or two: with ``coalesce``,
a flush that would come less than that long after the previous one waits
until then, so that ticks share writes (like TCP autocorking); after a quiet
spell the next flush goes out at once, so sparse traffic pays no delay.

Everything a connection is sent, control replies included, goes through its
outbox, so replies and updates keep their order.

An update may come in two forms: as published, and with its sequence
number (``seq_payload``) for the connections that asked for them
(``set_seq``). The second form goes to a log of its own, framed once too,
only while such a connection exists, so the others' mirrors stay whole.

A connection that falls behind (more than ``conflate_at`` bytes queued, a
quarter of ``max_queue``) gets the latest value of each state it follows
rather than every one: an update published with a ``state_key`` (a quote, a
book per exchange) is held aside for it, replacing the one held under the
same key, and what is held goes out, in its turn, once the connection has
caught up (half of ``conflate_at``). Being slow on state never closes it.
Events are queued as before: a connection whose queued bytes (outbox,
transport backlog and what is held) would pass ``max_queue`` is a slow
consumer: its outbox is dropped, it gets no more frames, and
``on_overflow(slot)`` is called once from the next flush.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memmove, memset

from tickcast._bitsets cimport CHUNK_BITS, CHUNK_WORDS, Chunk, SubscriptionIndex, Topic
from tickcast._frames cimport OP_CLOSE, OP_TEXT, header_size, write_header
from tickcast._socket cimport SocketTransport

cdef extern from *:
    int ctz64 "__builtin_ctzll"(unsigned long long) nogil

# The coalescing wait is sub-millisecond, and the loop's timers tick in
# milliseconds: on Linux a timerfd, watched by the loop, wakes the flush on
# time; elsewhere the loop's timer does, a millisecond late at worst.
cdef extern from *:
    """
    #include <time.h>
    #ifdef __linux__
    #include <sys/timerfd.h>
    #include <unistd.h>
    static int tc_timer_open(void) {
        return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    }
    static int tc_timer_arm(int fd, double seconds) {
        long long ns = (long long)(seconds * 1e9);
        struct itimerspec t = {{0, 0}, {(time_t)(ns / 1000000000), (long)(ns % 1000000000)}};
        if (ns <= 0) t.it_value.tv_nsec = 1;
        return timerfd_settime(fd, 0, &t, NULL);
    }
    static void tc_timer_clear(int fd) { unsigned long long n; if (read(fd, &n, sizeof n)) {} }
    static void tc_timer_close(int fd) { close(fd); }
    #else
    static int tc_timer_open(void) { return -1; }
    static int tc_timer_arm(int fd, double seconds) { return -1; }
    static void tc_timer_clear(int fd) {}
    static void tc_timer_close(int fd) {}
    #endif
    static double tc_now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec + t.tv_nsec * 1e-9;
    }
    """
    int tc_timer_open() nogil
    int tc_timer_arm(int fd, double seconds) nogil
    void tc_timer_clear(int fd) nogil
    void tc_timer_close(int fd) nogil
    double tc_now() nogil

cdef enum BoxState:
    FREE = 0
    OPEN = 1
    OVERFLOW = 2    # slow consumer, waiting for on_overflow
    CLOSED = 3      # takes no more frames (closing, or overflow reported)
    MIRROR_LOG = 1  # an outbox's bytes are a range of the log
    MIRROR_SEQ = 2  # of the log of updates with their sequence numbers

cdef struct Outbox:
    char* buf
    Py_ssize_t len            # bytes queued: in buf, or [mstart:mstart+len] of the log it mirrors
    Py_ssize_t mstart
    Py_ssize_t cap
    Py_ssize_t backlog        # transport's queued bytes, as of the last look
    PyObject* tr              # owned reference to the byte transport
    uint8_t state
    uint8_t dirty
    uint8_t mirror            # 0: buf holds its bytes; MIRROR_LOG or MIRROR_SEQ: that log does
    uint8_t seq               # it gets an update's form with its sequence number
    uint8_t held              # it is behind: state updates are held aside for it (Hub.held)
    uint8_t own               # tr is a SocketTransport: written in C, through its write_c
    uint8_t awaiting_pong
    uint8_t paused            # the transport is over its high-water mark
    unsigned int gen          # the flush that last wrote this outbox
    uint64_t seen             # the last publish that reached it through a topic with a parent

# An outbox buffer starts at MIN_BUFFER. A connection written in two flushes in a
# row keeps it (malloc and free every tick cost more than the copies); others
# give it back after their flush, as does one larger than KEEP_BUFFER, and one
# kept gives it back at the first flush that does not write it (in a wide
# market most connections get a frame now and then: a buffer held until the
# next ping round would cost each of them 4 KiB).
cdef enum:
    FLUSH_BUCKETS = 21        # flush durations: up to 1, 2, 4 ... 524,288 µs, then more

cdef Py_ssize_t MIN_BUFFER = 4096
# While a connection is behind, its transport draining may say nothing (it
# was never over its high-water mark): the hub looks again this often.
cdef double HELD_POLL = 0.005
cdef Py_ssize_t KEEP_BUFFER = 64 * 1024


cdef class Hub:
    cdef:
        readonly SubscriptionIndex index
        Outbox* boxes
        Py_ssize_t nboxes
        int* dirty
        Py_ssize_t ndirty
        Py_ssize_t dirty_cap
        int* kept                   # slots whose buffer the last flush kept
        Py_ssize_t nkept
        Py_ssize_t kept_cap
        list overflowed
        char* log                   # the frames published since the last flush
        readonly Py_ssize_t log_len   # bytes in it (0 after every flush)
        Py_ssize_t log_cap
        char* slog                  # the same frames with their sequence numbers, while seq_readers
        Py_ssize_t slog_len
        Py_ssize_t slog_cap
        Py_ssize_t sat, sflen       # the sequenced frame of the publish under way (sflen 0: none)
        object state_key            # the publish under way is this state's latest value (None: an event)
        bytes cur_payload, cur_seq_payload
        public Py_ssize_t conflate_at     # queued bytes past which a connection's state updates are held
        readonly dict held          # slot -> [bytes held, {state key: payload}], for connections behind
        readonly unsigned long long conflated   # state updates held for a connection that was behind
        bint _held_poll             # a look at the connections behind is due (HELD_POLL)
        readonly Py_ssize_t seq_readers   # open connections that get the sequenced form
        object _call_soon
        object _loop
        int _timer_fd                # -1: none (yet, or not on this platform)
        object _flush
        bint _flush_scheduled
        public double coalesce      # seconds between flushes under load; 0: every loop iteration
        double last_flush
        public Py_ssize_t max_queue
        public object on_overflow
        readonly Py_ssize_t paused  # connections whose transport is over its high-water mark
        readonly unsigned long long published
        readonly unsigned long long delivered
        readonly unsigned long long writes
        readonly unsigned long long bytes_sent
        unsigned long long flush_hist[FLUSH_BUCKETS]   # flushes by duration: bucket i up to 2**i µs
        readonly double flush_seconds                  # their total duration
        unsigned int gen

    def __cinit__(self, loop, Py_ssize_t max_queue=1 << 20, object on_overflow=None,
                  double coalesce=0.0):
        self.index = SubscriptionIndex()
        self.boxes = NULL
        self.nboxes = 0
        self.dirty = NULL
        self.ndirty = 0
        self.dirty_cap = 0
        self.kept = NULL
        self.nkept = 0
        self.kept_cap = 0
        self.overflowed = []
        self.log = NULL
        self.log_len = 0
        self.log_cap = 0
        self.slog = NULL
        self.slog_len = 0
        self.slog_cap = 0
        self.sflen = 0
        self.seq_readers = 0
        self._call_soon = loop.call_soon
        self._loop = loop
        self._timer_fd = -1
        self.coalesce = coalesce
        self.last_flush = -1e9
        self._flush = self.flush
        self._flush_scheduled = False
        self.max_queue = max_queue
        self.conflate_at = max_queue // 4
        self.held = {}
        self.on_overflow = on_overflow

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.boxes != NULL:
            for i in range(self.nboxes):
                if self.boxes[i].state != FREE:
                    PyMem_Free(self.boxes[i].buf)
                    Py_DECREF(<object>self.boxes[i].tr)
        PyMem_Free(self.boxes)
        PyMem_Free(self.dirty)
        PyMem_Free(self.kept)
        PyMem_Free(self.log)
        PyMem_Free(self.slog)
        if self._timer_fd >= 0:
            tc_timer_close(self._timer_fd)

    # -- connections ---------------------------------------------------------

    cpdef int attach(self, object transport) except -1:
        """Give a byte transport a slot and an outbox.

        The hub never holds a descriptor: a SocketTransport is written in C
        (write_c sends at once while nothing is queued, and writes nothing
        once the transport is closed, so a descriptor number reused by a
        newer connection is never reached); any other (asyncio-style:
        ``write``, ``get_write_buffer_size``; uvloop's under TLS) through
        its ``write``, with a bytes object."""
        cdef int slot = self.index.alloc_slot()
        cdef Py_ssize_t n
        if slot >= self.nboxes:
            n = max(self.index.nwords * 64, slot + 1)
            self.boxes = <Outbox*>_realloc(self.boxes, n * sizeof(Outbox))
            memset(&self.boxes[self.nboxes], 0, (n - self.nboxes) * sizeof(Outbox))
            self.nboxes = n
        cdef Outbox* b = &self.boxes[slot]
        memset(b, 0, sizeof(Outbox))
        Py_INCREF(transport)
        b.tr = <PyObject*>transport
        b.own = type(transport) is SocketTransport
        b.backlog = transport.get_write_buffer_size()   # the handshake's reply may still be queued
        b.state = OPEN
        return slot

    cpdef detach(self, int slot):
        """Release a slot: its subscriptions and unsent bytes are dropped."""
        cdef Outbox* b = self._box(slot)
        if b == NULL:
            return
        self.paused -= b.paused
        self.seq_readers -= b.seq
        if b.held:
            del self.held[slot]
        PyMem_Free(b.buf)
        Py_DECREF(<object>b.tr)
        memset(b, 0, sizeof(Outbox))
        self.index.free_slot(slot)

    cpdef close(self, int slot, bint flush=True, bytes close_payload=None):
        """Take no more frames for ``slot``: write what is queued if ``flush``
        (else drop it), then a close frame carrying ``close_payload`` if given."""
        cdef Outbox* b = self._box(slot)
        if b == NULL:
            return
        if not flush or b.state != OPEN:
            b.len = 0
            b.mirror = 0
        if b.held:                  # a closing connection takes no state it has not had
            b.held = 0
            del self.held[slot]
        if close_payload is not None:
            self._append(b, OP_CLOSE, close_payload)      # past max_queue: it is the last
        self._write(b)
        self._release(b)
        b.state = CLOSED

    cpdef writing_paused(self, int slot, bint paused):
        """The transport of ``slot`` went over (or back under) its high-water
        mark. Nothing changes for the connection; ``paused`` counts them, for a
        source that can wait (the bench feed's flood mode)."""
        cdef Outbox* b = self._box(slot)
        if b != NULL and b.paused != paused:
            b.paused = paused
            self.paused += 1 if paused else -1
            if not paused and b.held and not self._flush_scheduled:
                self._schedule_flush()          # what was held for it may go now

    cpdef set_seq(self, int slot):
        """From now on ``slot`` gets updates in their sequenced form, where
        one is published."""
        cdef Outbox* b = self._box(slot)
        if b != NULL and not b.seq:
            b.seq = 1
            self.seq_readers += 1

    def is_open(self, int slot):
        cdef Outbox* b = self._box(slot)
        return b != NULL and b.state == OPEN

    # -- sending -------------------------------------------------------------

    cpdef bint send(self, int slot, bytes payload, int opcode=OP_TEXT) except -1:
        """Queue one frame to one connection (replies, snapshots, pongs)."""
        cdef Outbox* b = self._box(slot)
        if b == NULL or b.state != OPEN:
            return False
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        if not self._room(b, slot, header_size(n) + n):
            return False
        self._append(b, opcode, payload)
        self._mark(b, slot)
        return True

    cpdef bint has_audience(self, int topic) except -1:
        """Would a publish to ``topic`` reach anyone? (Skip serialising if not.)"""
        return self._audience(topic)

    cdef inline bint _audience(self, int topic) except -1:
        cdef SubscriptionIndex idx = self.index
        if topic < 0 or topic >= idx.ntopics or not idx.tops[topic].live:
            raise IndexError(f"no topic {topic}")
        cdef int parent = idx.tops[topic].parent
        return idx.tops[topic].count > 0 or (parent >= 0 and idx.tops[parent].count > 0)

    cpdef Py_ssize_t publish(self, int topic, bytes payload, bytes seq_payload=None,
                             object state_key=None) except -1:
        """Frame ``payload`` once and queue it to every subscriber of ``topic``
        and of its parent, each once; ``seq_payload``, the same update with
        its sequence number, goes instead to those that asked for it. With
        ``state_key`` it is the latest value of that state: a connection
        that is behind gets only the latest one (held aside).

        Returns the number of connections it was queued (or held) for.
        """
        cdef SubscriptionIndex idx = self.index
        if not self._audience(topic):
            idx.tops[topic].published += 1
            return 0
        cdef Topic* t = &idx.tops[topic]
        cdef Topic* pt = &idx.tops[t.parent] if t.parent >= 0 and idx.tops[t.parent].count > 0 else NULL
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t flen = header_size(n) + n
        cdef Py_ssize_t at = self.log_len
        _grow(&self.log, &self.log_cap, at + flen)
        cdef char* frame = self.log + at
        memcpy(frame + write_header(<uint8_t*>frame, OP_TEXT, n), PyBytes_AS_STRING(payload), n)
        self.log_len = at + flen
        cdef Py_ssize_t sat = self.slog_len
        self.sat = sat
        self.sflen = 0
        if seq_payload is not None and self.seq_readers:
            n = PyBytes_GET_SIZE(seq_payload)
            self.sflen = header_size(n) + n
            _grow(&self.slog, &self.slog_cap, sat + self.sflen)
            frame = self.slog + sat
            memcpy(frame + write_header(<uint8_t*>frame, OP_TEXT, n), PyBytes_AS_STRING(seq_payload), n)
            self.slog_len = sat + self.sflen

        # Both the topic and its parent: the topic's walk stamps each
        # connection with this publish, the parent's skips those stamped.
        cdef uint64_t stamp = self.published + 1 if t.count > 0 and pt != NULL else 0
        cdef Py_ssize_t sent = 0
        if state_key is not None:
            self.state_key, self.cur_payload, self.cur_seq_payload = state_key, payload, seq_payload
        if t.count > 0:
            sent = self._walk(t, at, flen, stamp, 0, self.sflen != 0)
        if pt != NULL:
            sent += self._walk(pt, at, flen, 0, stamp, self.sflen != 0)
        self.sflen = 0
        if state_key is not None:
            self.state_key = self.cur_payload = self.cur_seq_payload = None
        if sent == 0:
            # Every subscriber is closing: nothing marks a flush, which is what
            # empties the log, so the frame must not stay in it.
            self.log_len = at
            self.slog_len = sat
        self.published += 1
        self.delivered += sent
        t.published += 1
        t.delivered += sent
        return sent

    cdef Py_ssize_t _walk(self, Topic* t, Py_ssize_t at, Py_ssize_t flen,
                          uint64_t mark, uint64_t skip, bint seq) except -1:
        """Queue the frame at ``log[at:at+flen]`` to each subscriber of ``t``
        (with ``seq``, the publish's sequenced frame to those that get it): a
        chunk's array entry by entry, a bitset's set bits word by word."""
        cdef Py_ssize_t i, j, w, sent = 0
        cdef Chunk* c
        cdef uint64_t word
        cdef int base
        if seq:
            return self._walk_seq(t, at, flen, mark, skip)
        for i in range(t.nchunks):
            c = &t.chunks[i]
            base = <int>(c.key << CHUNK_BITS)
            if c.bits == NULL:
                for j in range(c.n):
                    sent += self._queue(base + c.arr[j], at, flen, mark, skip, False)
            else:
                for w in range(CHUNK_WORDS):
                    word = c.bits[w]
                    while word:
                        sent += self._queue(base + <int>(w * 64 + ctz64(word)), at, flen, mark, skip, False)
                        word &= word - 1
        return sent

    cdef Py_ssize_t _walk_seq(self, Topic* t, Py_ssize_t at, Py_ssize_t flen,
                              uint64_t mark, uint64_t skip) except -1:
        """_walk while the publish has a sequenced frame: a loop of its own, so
        that the plain walk, the usual one, stays as tight as it was."""
        cdef Py_ssize_t i, j, w, sent = 0
        cdef Chunk* c
        cdef uint64_t word
        cdef int base
        for i in range(t.nchunks):
            c = &t.chunks[i]
            base = <int>(c.key << CHUNK_BITS)
            if c.bits == NULL:
                for j in range(c.n):
                    sent += self._to(base + c.arr[j], at, flen, mark, skip)
            else:
                for w in range(CHUNK_WORDS):
                    word = c.bits[w]
                    while word:
                        sent += self._to(base + <int>(w * 64 + ctz64(word)), at, flen, mark, skip)
                        word &= word - 1
        return sent

    cdef int _to(self, int slot, Py_ssize_t at, Py_ssize_t flen, uint64_t mark, uint64_t skip) except -1:
        """The publish's frame for one subscriber: the sequenced one if it gets that form."""
        if self.boxes[slot].seq:
            return self._queue(slot, self.sat, self.sflen, mark, skip, True)
        return self._queue(slot, at, flen, mark, skip, False)

    cdef inline int _queue(self, int slot, Py_ssize_t at, Py_ssize_t flen, uint64_t mark, uint64_t skip,
                           bint seq) except -1:
        """Append the frame at ``at:at+flen`` of the log (with ``seq``, of the
        sequenced log) to one outbox: 1 if queued."""
        cdef Outbox* b = &self.boxes[slot]
        if skip and b.seen == skip:
            return 0
        if mark:
            b.seen = mark
        if b.state != OPEN:
            return 0
        if b.len + b.backlog + flen > self.conflate_at or b.held:
            if self.state_key is not None:
                return self._hold(b, slot, seq)
            if b.len + b.backlog + flen > self.max_queue and not self._admit(b, slot, flen):
                return 0
        cdef uint8_t mirror = MIRROR_SEQ if seq else MIRROR_LOG
        if b.len == 0:
            b.mirror = mirror
            b.mstart = at
            b.len = flen
        elif b.mirror == mirror and b.mstart + b.len == at:
            b.len += flen
        else:
            self._reserve(b, flen)
            memcpy(b.buf + b.len, (self.slog if seq else self.log) + at, flen)
            b.len += flen
        if not b.dirty:
            self._mark(b, slot)
        return 1

    cdef int _hold(self, Outbox* b, int slot, bint seq) except -1:
        """A connection behind on a state: hold the latest value aside for it
        (replacing an older one under the same key). 1 if held, 0 if even
        that would pass max_queue (then it is a slow consumer)."""
        cdef bytes payload = self.cur_seq_payload if seq and self.cur_seq_payload is not None else self.cur_payload
        cdef list entry
        cdef dict values
        if b.held:
            entry = self.held[slot]
            values = entry[1]
            old = values.pop(self.state_key, None)
            if old is not None:
                entry[0] -= len(old)
        else:
            entry = [0, {}]
            values = entry[1]
        cdef Py_ssize_t extra = entry[0] + len(payload) + 14
        if b.len + b.backlog + extra > self.max_queue and not self._admit(b, slot, extra):
            if b.held:
                b.held = 0
                del self.held[slot]
            return 0
        values[self.state_key] = payload
        entry[0] += len(payload)
        if not b.held:
            b.held = 1
            self.held[slot] = entry
        self.conflated += 1
        if not self._flush_scheduled:
            self._schedule_flush()
        return 1

    cdef int _release_held(self) except -1:
        """What is held for connections that have caught up goes into their
        outboxes (framed for each: few connections are ever behind)."""
        cdef Outbox* b
        cdef int slot
        for slot in list(self.held):
            b = &self.boxes[slot]
            b.backlog = (<SocketTransport>b.tr).queued() if b.own else (<object>b.tr).get_write_buffer_size()
            if b.len + b.backlog > self.conflate_at // 2:
                continue
            _, values = self.held.pop(slot)
            b.held = 0
            for payload in values.values():
                self._append(b, OP_TEXT, payload)
            self._mark(b, slot)
        return 0

    def _look_again(self):
        self._held_poll = False
        if self.held and not self._flush_scheduled:
            self._schedule_flush()

    # -- flushing ------------------------------------------------------------

    cpdef flush(self):
        """Write every dirty outbox with one call each; report slow consumers."""
        cdef Py_ssize_t i
        cdef Outbox* b
        self._flush_scheduled = False
        cdef double start = tc_now()
        if self.coalesce > 0:
            self.last_flush = start
        if self.held:
            self._release_held()
            if self.held and not self._held_poll:
                self._held_poll = True
                self._loop.call_later(HELD_POLL, self._look_again)
        self.gen += 1
        cdef Py_ssize_t before = self.nkept      # kept by the last flush; this one's follow
        for i in range(self.ndirty):
            b = &self.boxes[self.dirty[i]]
            if not b.dirty:
                continue          # detached and maybe reused since it was marked
            b.dirty = 0
            if b.state == OPEN:
                if self._write(b):
                    self._keep(self.dirty[i])
            else:
                b.len = 0
                b.mirror = 0
        for i in range(before):
            b = &self.boxes[self.kept[i]]
            if b.gen != self.gen and b.len == 0 and not b.dirty:
                self._release(b)  # not written this time (or detached and maybe reused: no buffer then)
        self.nkept -= before
        memmove(self.kept, self.kept + before, self.nkept * sizeof(int))
        self._time_flush(tc_now() - start)
        self.ndirty = 0
        self.log_len = 0           # no outbox mirrors it any more
        self.slog_len = 0
        if self.log_cap > KEEP_BUFFER:
            PyMem_Free(self.log)
            self.log = NULL
            self.log_cap = 0
        if self.slog_cap > KEEP_BUFFER:
            PyMem_Free(self.slog)
            self.slog = NULL
            self.slog_cap = 0
        if self.overflowed:
            slots, self.overflowed = self.overflowed, []
            for slot in slots:
                b = self._box(slot)
                if b != NULL and b.state == OVERFLOW:
                    b.state = CLOSED
                    if self.on_overflow is not None:
                        self.on_overflow(slot)

    cdef inline void _time_flush(self, double seconds) noexcept:
        cdef double us = seconds * 1e6
        cdef int i = 0
        while i < FLUSH_BUCKETS - 1 and us > <double>(1 << i):
            i += 1
        self.flush_hist[i] += 1
        self.flush_seconds += seconds

    def flush_histogram(self):
        """Flushes by duration: (upper bound in seconds, count) per bucket, the last unbounded."""
        return [((1 << i) / 1e6 if i < FLUSH_BUCKETS - 1 else float("inf"), self.flush_hist[i])
                for i in range(FLUSH_BUCKETS)]

    def queued(self):
        """(bytes queued in all, in the fullest connection): outboxes and transports."""
        cdef Py_ssize_t i, q, total = 0, most = 0
        cdef Outbox* b
        for i in range(self.nboxes):
            b = &self.boxes[i]
            if b.state == FREE:
                continue
            q = b.len + b.backlog
            total += q
            if q > most:
                most = q
        return total, most

    # -- protocol heartbeat ----------------------------------------------------

    cpdef Py_ssize_t ping_all(self):
        """Send a ping frame to every open connection and expect its pong."""
        cdef bytes ping = b"\x89\x00"
        cdef Py_ssize_t i, count = 0
        cdef Outbox* b
        for i in range(self.nboxes):
            b = &self.boxes[i]
            if b.state != OPEN:
                continue
            if b.len == 0:
                self._write_bytes(b, PyBytes_AS_STRING(ping), 2)  # idle: no buffer
            elif self._room(b, <int>i, 2):
                b.buf[b.len] = <char>0x89
                b.buf[b.len + 1] = 0
                b.len += 2
                self._mark(b, <int>i)
            b.awaiting_pong = 1
            count += 1
        return count

    cpdef Py_ssize_t trim(self):
        """Give back the buffers of connections with nothing queued; returns bytes freed.

        Called from the heartbeat timer, so a connection that stopped receiving
        holds no buffer for longer than one ping interval."""
        cdef Py_ssize_t i, freed = 0
        cdef Outbox* b
        for i in range(self.nboxes):
            b = &self.boxes[i]
            if b.buf != NULL and b.len == 0 and not b.dirty:
                freed += b.cap
                self._release(b)
        return freed

    cpdef pong(self, int slot):
        cdef Outbox* b = self._box(slot)
        if b != NULL:
            b.awaiting_pong = 0

    cpdef list unanswered(self):
        """Open slots whose last ping has not been answered."""
        cdef Py_ssize_t i
        return [i for i in range(self.nboxes)
                if self.boxes[i].state == OPEN and self.boxes[i].awaiting_pong]

    # -- internals -----------------------------------------------------------

    cdef int _append(self, Outbox* b, int opcode, bytes payload) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
        cdef Py_ssize_t h = header_size(n)
        self._reserve(b, h + n)
        write_header(<uint8_t*>(b.buf + b.len), <uint8_t>opcode, n)
        memcpy(b.buf + b.len + h, PyBytes_AS_STRING(payload), n)
        b.len += h + n
        return 0

    cdef inline Outbox* _box(self, int slot) noexcept:
        if slot < 0 or slot >= self.nboxes or self.boxes[slot].state == FREE:
            return NULL
        return &self.boxes[slot]

    cdef inline int _mark(self, Outbox* b, int slot) except -1:
        if b.dirty:
            return 0
        b.dirty = 1
        if self.ndirty == self.dirty_cap:
            self.dirty_cap = max(64, self.dirty_cap * 2)
            self.dirty = <int*>_realloc(self.dirty, self.dirty_cap * sizeof(int))
        self.dirty[self.ndirty] = slot
        self.ndirty += 1
        if not self._flush_scheduled:
            self._schedule_flush()
        return 0

    cdef int _schedule_flush(self) except -1:
        cdef double wait = 0.0
        self._flush_scheduled = True
        if self.coalesce > 0:
            wait = self.last_flush + self.coalesce - tc_now()
        if wait <= 0:
            self._call_soon(self._flush)
            return 0
        # What arrives meanwhile joins the same write.
        if self._timer_fd < 0:
            self._timer_fd = tc_timer_open()
            if self._timer_fd >= 0:
                self._loop.add_reader(self._timer_fd, self._on_timer)
        if self._timer_fd >= 0 and tc_timer_arm(self._timer_fd, wait) == 0:
            return 0
        self._loop.call_later(max(wait, 0.001), self._flush)      # no timerfd here
        return 0

    def _on_timer(self):
        tc_timer_clear(self._timer_fd)
        if self._flush_scheduled:
            self.flush()

    def close_timer(self):
        """Stop watching the coalescing timer (the server is stopping); from
        now on every flush goes at once."""
        self.coalesce = 0
        if self._timer_fd >= 0:
            self._loop.remove_reader(self._timer_fd)
            tc_timer_close(self._timer_fd)
            self._timer_fd = -1

    cdef bint _room(self, Outbox* b, int slot, Py_ssize_t extra) except -1:
        """Make room in b.buf for ``extra`` more bytes, or mark a slow consumer and say no."""
        if not self._admit(b, slot, extra):
            return False
        self._reserve(b, extra)
        return True

    cdef bint _admit(self, Outbox* b, int slot, Py_ssize_t extra) except -1:
        """May ``extra`` more bytes be queued? If not, the connection is a slow consumer."""
        if b.len + b.backlog + extra > self.max_queue:
            # it may have drained since
            b.backlog = (<SocketTransport>b.tr).queued() if b.own else (<object>b.tr).get_write_buffer_size()
            if b.len + b.backlog + extra > self.max_queue:
                b.len = 0
                b.mirror = 0
                self._release(b)
                b.state = OVERFLOW
                self.overflowed.append(slot)
                if not self._flush_scheduled:
                    self._schedule_flush()
                return False
        return True

    cdef inline int _reserve(self, Outbox* b, Py_ssize_t extra) except -1:
        """Make b.buf hold its queued bytes plus ``extra``; a mirror becomes a copy."""
        _grow(&b.buf, &b.cap, b.len + extra)
        if b.mirror:
            memcpy(b.buf, self._mirrored(b) + b.mstart, b.len)
            b.mirror = 0
        return 0

    cdef int _write(self, Outbox* b) except -1:
        """Write what is queued; 1 if the outbox keeps its buffer (it was
        written by the previous flush too), else the buffer goes back."""
        cdef bint hot = b.gen + 1 == self.gen
        b.gen = self.gen
        if b.len:
            self._write_bytes(b, self._mirrored(b) + b.mstart if b.mirror else b.buf, b.len)
            b.len = 0
            b.mirror = 0
        if not hot or b.cap > KEEP_BUFFER:
            self._release(b)
        return b.buf != NULL

    cdef inline char* _mirrored(self, Outbox* b) noexcept:
        return self.log if b.mirror == MIRROR_LOG else self.slog

    cdef int _keep(self, int slot) except -1:
        if self.nkept == self.kept_cap:
            self.kept_cap = max(64, self.kept_cap * 2)
            self.kept = <int*>_realloc(self.kept, self.kept_cap * sizeof(int))
        self.kept[self.nkept] = slot
        self.nkept += 1
        return 0

    cdef inline int _write_bytes(self, Outbox* b, char* p, Py_ssize_t n) except -1:
        """Write n bytes and update b.backlog (the transport's queued bytes).

        Once attached, the hub is the connection's only writer, so the
        transport's queue holds only what the hub gave it."""
        self.writes += 1
        self.bytes_sent += n
        if b.own:
            b.backlog = (<SocketTransport>b.tr).write_c(p, n)
            return 0
        cdef object tr = <object>b.tr
        tr.write(PyBytes_FromStringAndSize(p, n))
        b.backlog = tr.get_write_buffer_size()
        return 0

    cdef inline void _release(self, Outbox* b) noexcept:
        PyMem_Free(b.buf)
        b.buf = NULL
        b.cap = 0


cdef inline int _grow(char** buf, Py_ssize_t* cap, Py_ssize_t need) except -1:
    """The one growth rule for outboxes and the tick log: MIN_BUFFER, then doubling."""
    if need > cap[0]:
        cap[0] = max(MIN_BUFFER, cap[0] * 2, need)
        buf[0] = <char*>_realloc(buf[0], cap[0])
    return 0


cdef void* _realloc(void* p, size_t n) except NULL:
    cdef void* q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q
