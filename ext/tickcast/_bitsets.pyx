# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Symbol-indexed subscription sets, whose cost follows the subscriptions.

Topics (a channel and a symbol, or any other hashable key a dialect chooses)
are interned to small integers. Connections hold slot numbers, the lowest free
one first. A topic keeps its subscribers per chunk of 65,536 slots, and only
the chunks where it has any (_bitsets.pxd): a sorted array of 16-bit slot
halves while it has few there, a bitset once it has more than 4,096 (where
the array would outgrow the bitset's 8 KiB). So a topic with one subscriber
costs a few dozen bytes however many connections the node holds, a topic
held by everyone costs a bit per connection, and a walk over a topic's
subscribers reads about one word or one entry per subscriber: its cost
follows the audience, not the node.

Each slot also lists the topics it holds, so that a disconnect visits those
and nothing else.

A topic may name a parent (a channel's wildcard): a publish to it reaches the
subscribers of both, each once (the hub walks the topic's, then the parent's,
skipping those it already reached).

A topic lives while it has subscribers or is pinned (it is another topic's
parent, or its owner said so): when its last subscriber leaves, its key is
forgotten and its id and memory go back for reuse. Clients can name any
number of well-formed symbols over time; only those held at once cost memory.

The hub counts, per topic, the updates published and the frames queued. A
topic's counts go to its family when it is given back, so that metrics read
by family (the second item of a tuple key: a channel, a v4 stream) lose
nothing.
"""
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memmove, memset

cdef extern from *:
    int ctz64 "__builtin_ctzll"(unsigned long long) nogil


cdef object family(object key):
    """A topic key's family: the second item of a tuple key, else the key."""
    if isinstance(key, tuple) and len(<tuple>key) > 1:
        return (<tuple>key)[1]
    return key


# -- one chunk: a sorted array or a bitset of 65,536 slots ------------------------

cdef inline Py_ssize_t _lower(const uint16_t* a, Py_ssize_t n, uint16_t v) noexcept nogil:
    """The first index of ``a[:n]`` whose value is not below ``v``."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline bint _chunk_has(Chunk* c, uint16_t low) noexcept nogil:
    cdef Py_ssize_t i
    if c.bits != NULL:
        return (c.bits[low >> 6] >> (low & 63)) & 1
    i = _lower(c.arr, c.n, low)
    return i < c.n and c.arr[i] == low


cdef int _chunk_add(Chunk* c, uint16_t low, Py_ssize_t* heap) except -1:
    """Add ``low``; 1 if it was not there."""
    cdef uint64_t m
    cdef Py_ssize_t i, j, cap
    if c.bits != NULL:
        m = (<uint64_t>1) << (low & 63)
        if c.bits[low >> 6] & m:
            return 0
        c.bits[low >> 6] |= m
        c.n += 1
        return 1
    i = _lower(c.arr, c.n, low)
    if i < c.n and c.arr[i] == low:
        return 0
    if c.n == ARRAY_MAX:
        bits = <uint64_t*>_alloc(CHUNK_WORDS * sizeof(uint64_t), heap)
        memset(bits, 0, CHUNK_WORDS * sizeof(uint64_t))
        for j in range(c.n):
            bits[c.arr[j] >> 6] |= (<uint64_t>1) << (c.arr[j] & 63)
        _free(c.arr, c.cap * sizeof(uint16_t), heap)
        c.arr = NULL
        c.cap = 0
        c.bits = bits
        return _chunk_add(c, low, heap)
    if c.n == c.cap:
        cap = 4 if c.cap == 0 else c.cap * 2
        c.arr = <uint16_t*>_resize(c.arr, c.cap * sizeof(uint16_t), cap * sizeof(uint16_t), heap)
        c.cap = <int32_t>cap
    memmove(c.arr + i + 1, c.arr + i, (c.n - i) * sizeof(uint16_t))
    c.arr[i] = low
    c.n += 1
    return 1


cdef int _chunk_remove(Chunk* c, uint16_t low, Py_ssize_t* heap) except -1:
    """Remove ``low``; 1 if it was there."""
    cdef uint64_t m, word
    cdef Py_ssize_t i, w, k
    if c.bits != NULL:
        m = (<uint64_t>1) << (low & 63)
        if not (c.bits[low >> 6] & m):
            return 0
        c.bits[low >> 6] &= ~m
        c.n -= 1
        if c.n < BITSET_MIN:
            arr = <uint16_t*>_alloc(c.n * sizeof(uint16_t), heap) if c.n else NULL
            k = 0
            for w in range(CHUNK_WORDS):
                word = c.bits[w]
                while word:
                    arr[k] = <uint16_t>(w * 64 + ctz64(word))
                    k += 1
                    word &= word - 1
            _free(c.bits, CHUNK_WORDS * sizeof(uint64_t), heap)
            c.bits = NULL
            c.arr = arr
            c.cap = c.n
        return 1
    i = _lower(c.arr, c.n, low)
    if i >= c.n or c.arr[i] != low:
        return 0
    memmove(c.arr + i, c.arr + i + 1, (c.n - i - 1) * sizeof(uint16_t))
    c.n -= 1
    if c.cap > 4 and c.n <= c.cap // 4:       # give memory back as subscribers leave
        c.arr = <uint16_t*>_resize(c.arr, c.cap * sizeof(uint16_t), (c.cap // 2) * sizeof(uint16_t), heap)
        c.cap //= 2
    return 1


cdef inline void _chunk_clear(Chunk* c, Py_ssize_t* heap) noexcept:
    if c.bits != NULL:
        _free(c.bits, CHUNK_WORDS * sizeof(uint64_t), heap)
    else:
        _free(c.arr, c.cap * sizeof(uint16_t), heap)
    c.bits = NULL
    c.arr = NULL
    c.n = 0
    c.cap = 0


# -- a topic: its chunks ----------------------------------------------------------

cdef inline Py_ssize_t _chunk_at(Topic* t, uint32_t key) noexcept nogil:
    """The index of the first chunk of ``t`` whose key is not below ``key``."""
    cdef Py_ssize_t lo = 0, hi = t.nchunks, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if t.chunks[mid].key < key:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline bint _topic_has(Topic* t, int slot) noexcept nogil:
    cdef uint32_t key = <uint32_t>slot >> CHUNK_BITS
    cdef Py_ssize_t i = _chunk_at(t, key)
    return i < t.nchunks and t.chunks[i].key == key and _chunk_has(&t.chunks[i], <uint16_t>(slot & 0xFFFF))


cdef int _topic_add(Topic* t, int slot, Py_ssize_t* heap) except -1:
    cdef uint32_t key = <uint32_t>slot >> CHUNK_BITS
    cdef Py_ssize_t i = _chunk_at(t, key), cap
    if i == t.nchunks or t.chunks[i].key != key:
        if t.nchunks == t.chunk_cap:
            cap = 1 if t.chunk_cap == 0 else t.chunk_cap * 2
            t.chunks = <Chunk*>_resize(t.chunks, t.chunk_cap * sizeof(Chunk), cap * sizeof(Chunk), heap)
            t.chunk_cap = <int32_t>cap
        memmove(&t.chunks[i + 1], &t.chunks[i], (t.nchunks - i) * sizeof(Chunk))
        memset(&t.chunks[i], 0, sizeof(Chunk))
        t.chunks[i].key = key
        t.nchunks += 1
    if not _chunk_add(&t.chunks[i], <uint16_t>(slot & 0xFFFF), heap):
        return 0
    t.count += 1
    return 1


cdef int _topic_remove(Topic* t, int slot, Py_ssize_t* heap) except -1:
    cdef uint32_t key = <uint32_t>slot >> CHUNK_BITS
    cdef Py_ssize_t i = _chunk_at(t, key)
    if i == t.nchunks or t.chunks[i].key != key:
        return 0
    cdef Chunk* c = &t.chunks[i]
    if not _chunk_remove(c, <uint16_t>(slot & 0xFFFF), heap):
        return 0
    t.count -= 1
    if c.n == 0:
        _chunk_clear(c, heap)
        memmove(&t.chunks[i], &t.chunks[i + 1], (t.nchunks - i - 1) * sizeof(Chunk))
        t.nchunks -= 1
        if t.nchunks == 0:                      # a pinned topic keeps nothing while nobody holds it
            _free(t.chunks, t.chunk_cap * sizeof(Chunk), heap)
            t.chunks = NULL
            t.chunk_cap = 0
    return 1


cdef void _topic_clear(Topic* t, Py_ssize_t* heap) noexcept:
    cdef Py_ssize_t i
    for i in range(t.nchunks):
        _chunk_clear(&t.chunks[i], heap)
    _free(t.chunks, t.chunk_cap * sizeof(Chunk), heap)
    t.chunks = NULL
    t.nchunks = 0
    t.chunk_cap = 0
    t.count = 0


cdef list _topic_slots(Topic* t):
    """Sorted slots of ``t``."""
    cdef Py_ssize_t i, j, w
    cdef Chunk* c
    cdef uint64_t word
    cdef int base
    out = []
    for i in range(t.nchunks):
        c = &t.chunks[i]
        base = <int>(c.key << CHUNK_BITS)
        if c.bits != NULL:
            for w in range(CHUNK_WORDS):
                word = c.bits[w]
                while word:
                    out.append(base + <int>(w * 64 + ctz64(word)))
                    word &= word - 1
        else:
            for j in range(c.n):
                out.append(base + c.arr[j])
    return out


cdef class SubscriptionIndex:

    def __cinit__(self, Py_ssize_t initial_slots=64):
        self.tops = NULL
        self.ntopics = 0
        self.topic_cap = 0
        self.held = NULL
        self.used = NULL
        self.nwords = 0
        self.hint = 0
        self.heap = 0
        self.retired = {}
        self._ids = {}
        self._keys = []
        self._free = []
        self._grow_slots(max(1, (initial_slots + 63) // 64))

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.tops != NULL:
            for i in range(self.ntopics):
                if self.tops[i].live:
                    _topic_clear(&self.tops[i], &self.heap)
        if self.held != NULL:
            for i in range(self.nwords * 64):
                PyMem_Free(self.held[i].ids)
        PyMem_Free(self.tops)
        PyMem_Free(self.held)
        PyMem_Free(self.used)

    @property
    def slot_capacity(self):
        return self.nwords * 64

    @property
    def topics(self):
        """Topics alive (interned and not yet given back)."""
        return self.ntopics - len(self._free)

    @property
    def nbytes(self):
        """The C memory of the index: the per-topic and per-slot tables, and
        the chunks, arrays, bitsets and held lists they point to (the topic
        keys' Python objects are not counted)."""
        return self.heap + self.topic_cap * sizeof(Topic) \
            + self.nwords * 64 * sizeof(Held) + self.nwords * sizeof(uint64_t)

    cdef int _grow_slots(self, Py_ssize_t nwords) except -1:
        cdef Py_ssize_t old = self.nwords
        self.used = <uint64_t*>_realloc(self.used, nwords * sizeof(uint64_t))
        memset(&self.used[old], 0, (nwords - old) * sizeof(uint64_t))
        self.held = <Held*>_realloc(self.held, nwords * 64 * sizeof(Held))
        memset(&self.held[old * 64], 0, (nwords - old) * 64 * sizeof(Held))
        self.nwords = nwords
        return 0

    cpdef int topic(self, object key, int parent=-1, bint pin=False) except -1:
        """The id of ``key``, interned on first use with its parent topic.

        A topic lives while it has subscribers; ``pin`` keeps it for good,
        as does being named a parent."""
        cdef object found = self._ids.get(key)
        cdef int tid
        if found is not None:
            tid = found
            if pin:
                self.tops[tid].pinned = 1
            return tid
        if parent < -1 or parent >= self.ntopics or (parent >= 0 and not self.tops[parent].live):
            raise ValueError(f"no parent topic {parent}")
        cdef Py_ssize_t cap
        if not self._free and self.ntopics == self.topic_cap:
            cap = max(16, self.topic_cap * 2)
            self.tops = <Topic*>_realloc(self.tops, cap * sizeof(Topic))
            self.topic_cap = cap
        if self._free:
            tid = self._free.pop()
            self._keys[tid] = key
        else:
            tid = <int>self.ntopics
            self.ntopics += 1
            self._keys.append(key)
        cdef Topic* t = &self.tops[tid]
        memset(t, 0, sizeof(Topic))
        t.live = 1
        t.parent = parent
        t.pinned = pin
        if parent >= 0:
            self.tops[parent].pinned = 1
        self._ids[key] = tid
        return tid

    cdef int _drop(self, int tid) except -1:
        """Give back a topic that nobody holds (no subscribers, not pinned)."""
        cdef Topic* t = &self.tops[tid]
        key = self._keys[tid]
        if t.published or t.delivered:
            totals = self.retired.setdefault(family(key), [0, 0])
            totals[0] += t.published
            totals[1] += t.delivered
        del self._ids[key]
        self._keys[tid] = None
        _topic_clear(t, &self.heap)
        t.live = 0
        t.parent = -1
        self._free.append(tid)
        return 0

    def by_family(self):
        """family -> (updates published, frames delivered, live topics,
        subscriptions), over the topics alive and those given back."""
        cdef Py_ssize_t i
        cdef Topic* t
        out = {f: [v[0], v[1], 0, 0] for f, v in self.retired.items()}
        for i in range(self.ntopics):
            t = &self.tops[i]
            if not t.live:
                continue
            row = out.setdefault(family(self._keys[i]), [0, 0, 0, 0])
            row[0] += t.published
            row[1] += t.delivered
            row[2] += 1
            row[3] += t.count
        return out

    def unheard(self, object key):
        """Count an update published to ``key`` while it is no topic (nobody
        holds it), under its family."""
        self.retired.setdefault(family(key), [0, 0])[0] += 1

    def find(self, key):
        """The id of ``key`` if it is a live topic, else None (interns nothing)."""
        return self._ids.get(key)

    def key(self, int topic):
        self._check_topic(topic)
        return self._keys[topic]

    def parent_of(self, int topic):
        self._check_topic(topic)
        return self.tops[topic].parent

    cpdef int alloc_slot(self) except -1:
        """The lowest free slot, marked used."""
        cdef Py_ssize_t w
        cdef uint64_t free_bits
        for w in range(self.hint, self.nwords):
            free_bits = ~self.used[w]
            if free_bits:
                break
        else:
            w = self.nwords
            self._grow_slots(self.nwords * 2)
            free_bits = ~(<uint64_t>0)
        self.hint = w
        cdef int b = ctz64(free_bits)
        self.used[w] |= (<uint64_t>1) << b
        return <int>(w * 64 + b)

    cpdef free_slot(self, int slot):
        """Forget a slot: it leaves every topic it holds and may be handed out again."""
        if slot < 0 or slot >= self.nwords * 64:
            raise IndexError(f"no slot {slot}")
        cdef Py_ssize_t w = slot >> 6, i
        cdef uint64_t m = (<uint64_t>1) << (slot & 63)
        if not (self.used[w] & m):
            return
        cdef Held* h = &self.held[slot]
        cdef int tid
        for i in range(h.n):
            tid = h.ids[i]
            _topic_remove(&self.tops[tid], slot, &self.heap)
            if self.tops[tid].count == 0 and not self.tops[tid].pinned:
                self._drop(tid)
        _free(h.ids, h.cap * sizeof(int32_t), &self.heap)
        h.ids = NULL
        h.n = 0
        h.cap = 0
        self.used[w] &= ~m
        if w < self.hint:
            self.hint = w

    cpdef bint add(self, int topic, int slot) except -1:
        """Subscribe; True when the slot was not already subscribed."""
        self._check_topic(topic)
        self._check_slot(slot)
        if not _topic_add(&self.tops[topic], slot, &self.heap):
            return False
        cdef Held* h = &self.held[slot]
        cdef Py_ssize_t cap
        if h.n == h.cap:
            cap = 2 if h.cap == 0 else h.cap * 2
            h.ids = <int32_t*>_resize(h.ids, h.cap * sizeof(int32_t), cap * sizeof(int32_t), &self.heap)
            h.cap = <int32_t>cap
        h.ids[h.n] = topic
        h.n += 1
        return True

    def subscribe(self, object key, int parent, int slot):
        """Subscribe ``slot`` to the topic of ``key`` (interned under
        ``parent`` on first use): the topic's interned key, which every
        subscriber shares, or None if it was subscribed already."""
        cdef int tid = self.topic(key, parent)
        return self._keys[tid] if self.add(tid, slot) else None

    cpdef bint discard(self, int topic, int slot) except -1:
        """Unsubscribe; True when the slot was subscribed."""
        self._check_topic(topic)
        self._check_slot(slot)
        cdef Topic* t = &self.tops[topic]
        if not _topic_remove(t, slot, &self.heap):
            return False
        cdef Held* h = &self.held[slot]
        cdef Py_ssize_t i
        for i in range(h.n):
            if h.ids[i] == topic:
                h.n -= 1
                h.ids[i] = h.ids[h.n]
                break
        if h.n == 0:
            _free(h.ids, h.cap * sizeof(int32_t), &self.heap)
            h.ids = NULL
            h.cap = 0
        if t.count == 0 and not t.pinned:
            self._drop(topic)
        return True

    cpdef bint contains(self, int topic, int slot) except -1:
        self._check_topic(topic)
        self._check_slot(slot)
        return _topic_has(&self.tops[topic], slot)

    cpdef Py_ssize_t count(self, int topic) except -1:
        """Subscribers of the topic itself (its parent's not included)."""
        self._check_topic(topic)
        return self.tops[topic].count

    def audience(self, int topic):
        """Subscribers a publish to ``topic`` reaches (its parent's included)."""
        return len(self.members(topic))

    def members(self, int topic):
        """Sorted slots that a publish to ``topic`` reaches."""
        self._check_topic(topic)
        cdef Topic* t = &self.tops[topic]
        if t.parent < 0:
            return _topic_slots(t)
        return sorted(set(_topic_slots(t)).union(_topic_slots(&self.tops[t.parent])))

    def held_by(self, int slot):
        """The topics ``slot`` holds, in no particular order."""
        self._check_slot(slot)
        cdef Held* h = &self.held[slot]
        return [h.ids[i] for i in range(h.n)]

    def slots(self):
        """Sorted slots in use."""
        cdef Py_ssize_t w
        cdef uint64_t word
        out = []
        for w in range(self.nwords):
            word = self.used[w]
            while word:
                out.append(<int>(w * 64 + ctz64(word)))
                word &= word - 1
        return out

    cdef int _check_topic(self, int topic) except -1:
        if topic < 0 or topic >= self.ntopics or not self.tops[topic].live:
            raise IndexError(f"no topic {topic}")
        return 0

    cdef int _check_slot(self, int slot) except -1:
        if slot < 0 or slot >= self.nwords * 64 or not ((self.used[slot >> 6] >> (slot & 63)) & 1):
            raise IndexError(f"slot {slot} is not in use")
        return 0


# -- memory, counted -------------------------------------------------------------

cdef void* _realloc(void* p, size_t n) except NULL:
    cdef void* q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q


cdef void* _alloc(size_t n, Py_ssize_t* heap) except NULL:
    cdef void* p = PyMem_Malloc(n if n else 1)
    if p == NULL:
        raise MemoryError()
    heap[0] += n
    return p


cdef void* _resize(void* p, size_t old, size_t new, Py_ssize_t* heap) except NULL:
    cdef void* q = PyMem_Realloc(p, new)
    if q == NULL:
        raise MemoryError()
    heap[0] += <Py_ssize_t>new - <Py_ssize_t>old
    return q


cdef inline void _free(void* p, size_t n, Py_ssize_t* heap) noexcept:
    if p != NULL:
        PyMem_Free(p)
        heap[0] -= n
