# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Symbol-indexed subscription bitsets.

Topics (a channel and a symbol, or any other hashable key a dialect chooses)
are interned to small integers. Connections hold slot numbers, the lowest free
one first, so the bitsets stay dense. A topic may name a parent (a channel's
wildcard): a walk over a topic covers the union of both bitsets, so a
connection that has both is still visited once.

A topic lives while it has subscribers or is pinned (a feed publishes to it,
or it is another topic's parent): when its last subscriber leaves, its key is
forgotten and its id and bitset memory go back for reuse. Clients can name
any number of well-formed symbols over time; only those held at once cost
memory.

The hub counts, per topic, the updates published and the frames queued
(two increments in C per publish). A topic's counts go to its family when
it is given back, so that metrics read by family (the second item of a
tuple key: a channel, a v4 stream) lose nothing.
"""
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memset

cdef extern from *:
    int ctz64 "__builtin_ctzll"(unsigned long long) nogil


cdef object family(object key):
    """A topic key's family: the second item of a tuple key, else the key."""
    if isinstance(key, tuple) and len(<tuple>key) > 1:
        return (<tuple>key)[1]
    return key


cdef class SubscriptionIndex:

    def __cinit__(self, Py_ssize_t initial_slots=64):
        self.nwords = 0
        self.span = 0
        self.ntopics = 0
        self.topic_cap = 0
        self.bits = NULL
        self.parent = NULL
        self.counts = NULL
        self.pinned = NULL
        self.used = NULL
        self.published = NULL
        self.delivered = NULL
        self.retired = {}
        self._ids = {}
        self._keys = []
        self._free = []
        self._grow_slots(max(1, (initial_slots + 63) // 64))

    def __dealloc__(self):
        cdef Py_ssize_t t
        if self.bits != NULL:
            for t in range(self.ntopics):
                PyMem_Free(self.bits[t])      # NULL for a topic given back: a no-op
        PyMem_Free(self.bits)
        PyMem_Free(self.parent)
        PyMem_Free(self.counts)
        PyMem_Free(self.pinned)
        PyMem_Free(self.used)
        PyMem_Free(self.published)
        PyMem_Free(self.delivered)

    @property
    def slot_capacity(self):
        return self.nwords * 64

    @property
    def topics(self):
        """Topics alive (interned and not yet given back)."""
        return self.ntopics - len(self._free)

    @property
    def nbytes(self):
        """The C memory of the index: a bitset of nwords words per live
        topic, the slots in use, and the per-topic arrays (the topic keys'
        Python objects are not counted)."""
        cdef Py_ssize_t per_topic = sizeof(uint64_t*) + sizeof(int) + sizeof(Py_ssize_t) + sizeof(uint8_t) \
            + 2 * sizeof(uint64_t)
        return (self.topics + 1) * self.nwords * sizeof(uint64_t) + self.topic_cap * per_topic

    cdef int _grow_slots(self, Py_ssize_t nwords) except -1:
        cdef Py_ssize_t t
        cdef uint64_t* p
        cdef size_t old = self.nwords * sizeof(uint64_t)
        cdef size_t new = nwords * sizeof(uint64_t)
        for t in range(self.ntopics):
            if self.bits[t] == NULL:
                continue
            p = <uint64_t*>PyMem_Realloc(self.bits[t], new)
            if p == NULL:
                raise MemoryError()
            memset(<char*>p + old, 0, new - old)
            self.bits[t] = p
        p = <uint64_t*>PyMem_Realloc(self.used, new)
        if p == NULL:
            raise MemoryError()
        memset(<char*>p + old, 0, new - old)
        self.used = p
        self.nwords = nwords
        return 0

    cpdef int topic(self, object key, int parent=-1, bint pin=False) except -1:
        """The id of ``key``, interned on first use with its parent topic.

        A topic lives while it has subscribers; ``pin`` keeps it for good
        (a publisher holds its id), as does being named a parent."""
        cdef object found = self._ids.get(key)
        cdef int tid
        if found is not None:
            tid = found
            if pin:
                self.pinned[tid] = 1
            return tid
        if parent < -1 or parent >= self.ntopics or (parent >= 0 and self.bits[parent] == NULL):
            raise ValueError(f"no parent topic {parent}")
        cdef Py_ssize_t cap
        if not self._free and self.ntopics == self.topic_cap:
            cap = max(16, self.topic_cap * 2)
            self.bits = <uint64_t**>_realloc(self.bits, cap * sizeof(uint64_t*))
            self.parent = <int*>_realloc(self.parent, cap * sizeof(int))
            self.counts = <Py_ssize_t*>_realloc(self.counts, cap * sizeof(Py_ssize_t))
            self.pinned = <uint8_t*>_realloc(self.pinned, cap * sizeof(uint8_t))
            self.published = <uint64_t*>_realloc(self.published, cap * sizeof(uint64_t))
            self.delivered = <uint64_t*>_realloc(self.delivered, cap * sizeof(uint64_t))
            self.topic_cap = cap
        cdef uint64_t* words = <uint64_t*>PyMem_Calloc(self.nwords, sizeof(uint64_t))
        if words == NULL:
            raise MemoryError()
        if self._free:
            tid = self._free.pop()
            self._keys[tid] = key
        else:
            tid = <int>self.ntopics
            self.ntopics += 1
            self._keys.append(key)
        self.bits[tid] = words
        self.parent[tid] = parent
        self.counts[tid] = 0
        self.published[tid] = 0
        self.delivered[tid] = 0
        self.pinned[tid] = pin
        if parent >= 0:
            self.pinned[parent] = 1
        self._ids[key] = tid
        return tid

    cdef int _drop(self, int tid) except -1:
        """Give back a topic that nobody holds (no subscribers, not pinned)."""
        key = self._keys[tid]
        if self.published[tid] or self.delivered[tid]:
            totals = self.retired.setdefault(family(key), [0, 0])
            totals[0] += self.published[tid]
            totals[1] += self.delivered[tid]
        del self._ids[key]
        self._keys[tid] = None
        PyMem_Free(self.bits[tid])
        self.bits[tid] = NULL
        self.parent[tid] = -1
        self._free.append(tid)
        return 0

    def by_family(self):
        """family -> (updates published, frames delivered, live topics,
        subscriptions), over the topics alive and those given back."""
        cdef Py_ssize_t t
        out = {f: [v[0], v[1], 0, 0] for f, v in self.retired.items()}
        for t in range(self.ntopics):
            if self.bits[t] == NULL:
                continue
            row = out.setdefault(family(self._keys[t]), [0, 0, 0, 0])
            row[0] += self.published[t]
            row[1] += self.delivered[t]
            row[2] += 1
            row[3] += self.counts[t]
        return out

    def find(self, key):
        """The id of ``key`` if it was interned, else None (interns nothing)."""
        return self._ids.get(key)

    def key(self, int topic):
        self._check_topic(topic)
        return self._keys[topic]

    def parent_of(self, int topic):
        self._check_topic(topic)
        return self.parent[topic]

    cpdef int alloc_slot(self) except -1:
        """The lowest free slot, marked used."""
        cdef Py_ssize_t w
        cdef uint64_t free_bits
        for w in range(self.nwords):
            free_bits = ~self.used[w]
            if free_bits:
                break
        else:
            w = self.nwords
            self._grow_slots(self.nwords * 2)
            free_bits = ~(<uint64_t>0)
        cdef int b = ctz64(free_bits)
        self.used[w] |= (<uint64_t>1) << b
        if w + 1 > self.span:
            self.span = w + 1
        return <int>(w * 64 + b)

    cpdef free_slot(self, int slot):
        """Forget a slot: it leaves every topic and may be handed out again."""
        if slot < 0 or slot >= self.nwords * 64:
            raise IndexError(f"no slot {slot}")
        cdef Py_ssize_t w = slot >> 6
        cdef uint64_t m = (<uint64_t>1) << (slot & 63)
        cdef Py_ssize_t t
        if not (self.used[w] & m):
            return
        for t in range(self.ntopics):
            if self.bits[t] != NULL and self.bits[t][w] & m:
                self.bits[t][w] &= ~m
                self.counts[t] -= 1
                if self.counts[t] == 0 and not self.pinned[t]:
                    self._drop(<int>t)
        self.used[w] &= ~m
        while self.span > 0 and self.used[self.span - 1] == 0:
            self.span -= 1

    cpdef bint add(self, int topic, int slot) except -1:
        """Subscribe; True when the slot was not already subscribed."""
        self._check_topic(topic)
        self._check_slot(slot)
        cdef uint64_t* word = &self.bits[topic][slot >> 6]
        cdef uint64_t m = (<uint64_t>1) << (slot & 63)
        if word[0] & m:
            return False
        word[0] |= m
        self.counts[topic] += 1
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
        cdef uint64_t* word = &self.bits[topic][slot >> 6]
        cdef uint64_t m = (<uint64_t>1) << (slot & 63)
        if not (word[0] & m):
            return False
        word[0] &= ~m
        self.counts[topic] -= 1
        if self.counts[topic] == 0 and not self.pinned[topic]:
            self._drop(topic)
        return True

    cpdef bint contains(self, int topic, int slot) except -1:
        self._check_topic(topic)
        self._check_slot(slot)
        return (self.bits[topic][slot >> 6] >> (slot & 63)) & 1

    cpdef Py_ssize_t count(self, int topic) except -1:
        """Subscribers of the topic itself (its parent's not included)."""
        self._check_topic(topic)
        return self.counts[topic]

    def audience(self, int topic):
        """Subscribers a publish to ``topic`` reaches (its parent's included)."""
        self._check_topic(topic)
        return len(self.members(topic))

    def members(self, int topic):
        """Sorted slots that a publish to ``topic`` reaches."""
        self._check_topic(topic)
        cdef uint64_t* a = self.bits[topic]
        cdef uint64_t* p = self.bits[self.parent[topic]] if self.parent[topic] >= 0 else NULL
        cdef uint64_t word
        cdef Py_ssize_t w
        out = []
        for w in range(self.span):
            word = a[w] | (p[w] if p != NULL else 0)
            while word:
                out.append(<int>(w * 64 + ctz64(word)))
                word &= word - 1
        return out

    def slots(self):
        """Sorted slots in use."""
        cdef Py_ssize_t w
        cdef uint64_t word
        out = []
        for w in range(self.span):
            word = self.used[w]
            while word:
                out.append(<int>(w * 64 + ctz64(word)))
                word &= word - 1
        return out

    cdef int _check_topic(self, int topic) except -1:
        if topic < 0 or topic >= self.ntopics or self.bits[topic] == NULL:
            raise IndexError(f"no topic {topic}")
        return 0

    cdef int _check_slot(self, int slot) except -1:
        if slot < 0 or slot >= self.nwords * 64 or not ((self.used[slot >> 6] >> (slot & 63)) & 1):
            raise IndexError(f"slot {slot} is not in use")
        return 0


cdef void* _realloc(void* p, size_t n) except NULL:
    cdef void* q = PyMem_Realloc(p, n)
    if q == NULL:
        raise MemoryError()
    return q
