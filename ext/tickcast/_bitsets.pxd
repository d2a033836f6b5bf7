from libc.stdint cimport int32_t, uint16_t, uint32_t, uint8_t, uint64_t

# A topic's subscribers, per 65,536 slots (a chunk): a sorted array of the
# slots' low 16 bits while few, a bitset of 1,024 words once many. Its cost
# follows the subscribers, not the slots.
cdef enum:
    CHUNK_BITS = 16
    CHUNK_WORDS = 1024        # (1 << CHUNK_BITS) / 64
    ARRAY_MAX = 4096          # an array past this (8 KiB) becomes a bitset of the same size
    BITSET_MIN = 2048         # a bitset below this becomes an array again (not at once: no flapping)

cdef struct Chunk:
    uint16_t* arr             # the array, or NULL when this chunk is a bitset
    uint64_t* bits            # the bitset, or NULL when an array
    int32_t n                 # subscribers in it
    int32_t cap               # the array's capacity
    uint32_t key              # slot >> CHUNK_BITS

cdef struct Topic:
    Chunk* chunks             # by key, ascending; only those with subscribers
    int32_t nchunks
    int32_t chunk_cap
    int32_t parent            # topic whose subscribers also receive it (-1: none)
    uint8_t live              # 0: given back (its id is free)
    uint8_t pinned            # kept with no subscribers (the parent of another)
    Py_ssize_t count          # its own subscribers (the parent's not included)
    uint64_t published        # updates published to it (the hub counts)
    uint64_t delivered        # frames queued for them

cdef struct Held:             # a slot's topics, so that a disconnect visits only those
    int32_t* ids
    int32_t n
    int32_t cap


cdef class SubscriptionIndex:
    cdef:
        Topic* tops               # by id
        Py_ssize_t ntopics        # ids handed out (the live ones and those in _free)
        Py_ssize_t topic_cap
        Held* held                # by slot
        uint64_t* used            # slots handed out
        Py_ssize_t nwords         # words of `used` (slot capacity: nwords * 64)
        Py_ssize_t hint           # no free slot below word `hint`
        Py_ssize_t heap           # bytes of chunks, arrays, bitsets and held lists
        public dict retired       # family -> [published, delivered] of topics given back
        dict _ids                 # topic key -> id
        list _keys                # id -> topic key (None: given back)
        list _free                # ids given back, to hand out again

    cpdef int topic(self, object key, int parent=*, bint pin=*) except -1
    cpdef int alloc_slot(self) except -1
    cpdef free_slot(self, int slot)
    cpdef bint add(self, int topic, int slot) except -1
    cpdef bint discard(self, int topic, int slot) except -1
    cpdef bint contains(self, int topic, int slot) except -1
    cpdef Py_ssize_t count(self, int topic) except -1
    cdef int _grow_slots(self, Py_ssize_t nwords) except -1
    cdef int _drop(self, int tid) except -1
    cdef int _check_topic(self, int topic) except -1
    cdef int _check_slot(self, int slot) except -1
