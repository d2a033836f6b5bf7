# Server-to-client WebSocket frame headers (RFC 6455 5.2): FIN set, never
# masked. Inline so that every hot loop that cimports this gets plain C.
from libc.stdint cimport uint8_t

cdef enum:
    OP_TEXT = 0x1
    OP_BINARY = 0x2
    OP_CLOSE = 0x8
    OP_PING = 0x9
    OP_PONG = 0xA
    MAX_HEADER = 10


cdef inline Py_ssize_t header_size(Py_ssize_t n) noexcept nogil:
    if n < 126:
        return 2
    if n < 65536:
        return 4
    return 10


cdef inline Py_ssize_t write_header(uint8_t* p, uint8_t opcode, Py_ssize_t n) noexcept nogil:
    cdef int i
    p[0] = 0x80 | opcode
    if n < 126:
        p[1] = <uint8_t>n
        return 2
    if n < 65536:
        p[1] = 126
        p[2] = <uint8_t>(n >> 8)
        p[3] = <uint8_t>n
        return 4
    p[1] = 127
    for i in range(8):
        p[2 + i] = <uint8_t>((<unsigned long long>n) >> (56 - 8 * i))
    return 10
