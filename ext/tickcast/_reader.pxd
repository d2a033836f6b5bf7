# The reader's contract with the transports that feed it (_socket.pyx): a
# plain connection's bytes are received straight into the readers' shared
# buffer and handed over with one C call, not two Python method calls.
from libc.stdint cimport uint8_t


cdef class FrameReader:
    cdef object conn
    cdef bytearray pending        # an incomplete frame, else None
    cdef int max_frame            # (one reader a connection: its fields kept small)
    cdef uint8_t failed

    # ``nbytes`` bytes were received at read_buffer(): parse and hand them over
    cdef int received(self, Py_ssize_t nbytes) except -1
    cdef Py_ssize_t _parse(self, const uint8_t* p, Py_ssize_t n) except -1
    cdef Py_ssize_t _frame(self, const uint8_t* p, Py_ssize_t avail) except -1
    cdef Py_ssize_t _fail(self, int code, str reason) except -1


# Where every reader's bytes are received (one buffer: the loop hands data to
# one protocol at a time), and its size (64 KiB, uvloop's own read size).
cdef enum:
    READ_SIZE = 64 * 1024

cdef char* read_buffer() noexcept
