# cython: language_level=3, boundscheck=False, wraparound=False
"""Python entry points to the frame encoder (tests, benchmarks, one-off sends)."""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t
from libc.string cimport memcpy

from tickcast._frames cimport header_size, write_header, OP_TEXT


cpdef bytes encode_frame(bytes payload, int opcode=OP_TEXT):
    """One unmasked, final frame carrying ``payload``."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t h = header_size(n)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char* p = PyBytes_AS_STRING(out)
    write_header(<uint8_t*>p, <uint8_t>opcode, n)
    memcpy(p + h, PyBytes_AS_STRING(payload), n)
    return out
