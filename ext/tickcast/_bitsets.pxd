from libc.stdint cimport uint8_t, uint64_t


cdef class SubscriptionIndex:
    # Every topic owns a bitset of subscriber slots, `nwords` 64-bit words
    # long; all bitsets grow together when a slot past the end is handed out.
    cdef:
        Py_ssize_t nwords        # words per bitset (capacity: nwords * 64 slots)
        Py_ssize_t span          # words that hold any live slot: walks stop here
        Py_ssize_t ntopics       # ids handed out (the live ones and those in _free)
        Py_ssize_t topic_cap
        uint64_t** bits          # bits[topic][word]; NULL: the topic was given back
        int* parent              # topic whose subscribers also receive it (-1: none)
        Py_ssize_t* counts       # subscribers per topic (its own bitset only)
        uint8_t* pinned          # kept with no subscribers (a publisher or a child holds it)
        uint64_t* used           # slots handed out
        uint64_t* published      # updates published to each topic (the hub counts)
        uint64_t* delivered      # frames it queued for them
        dict retired             # family -> [published, delivered] of topics given back
        dict _ids                # topic key -> id
        list _keys               # id -> topic key (None: given back)
        list _free               # ids given back, to hand out again

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
