# cython: language_level=3, boundscheck=False, wraparound=False
"""The upgrade request head read in one pass of C.

In a reconnect storm every client sends one; read with bytes methods in
Python it cost about 4 µs, a twentieth of a connection. What is not a
request a WebSocket client sends is refused (BadRequest, answered 400)
rather than half understood: no bodies, no folded headers, HTTP/1.1 only.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.string cimport memchr, memcmp

cdef enum:
    MAX_NAME = 64               # longer header names are lowered in Python

MAX_HEADERS = 100


class BadRequest(Exception):
    """Not a WebSocket upgrade request we answer: 400, with this message."""


cdef bint TOKEN[256]            # RFC 9110 token characters
cdef int _c
for _c in range(256):
    TOKEN[_c] = 33 <= _c <= 126 and chr(_c) not in '"(),/:;<=>?@[\\]{}'


cdef class Request:
    """A parsed upgrade request: its target (bytes: path and query) and its
    headers by lower-case name (the first of a repeated one)."""
    cdef readonly bytes path
    cdef readonly dict headers

    def __init__(self, bytes path, dict headers):
        self.path = path
        self.headers = headers


cdef inline Py_ssize_t _line_end(const char* p, Py_ssize_t at, Py_ssize_t n) noexcept:
    """Where the line starting at ``at`` ends (its CR), or n."""
    cdef const char* q
    while at < n:
        q = <const char*>memchr(p + at, b'\r', n - at)
        if q == NULL:
            return n
        at = q - p
        if at + 1 < n and p[at + 1] == b'\n':
            return at
        at += 1
    return n


def parse_request(bytes head):
    """``head``: the request line and headers, without the blank line."""
    cdef const char* p = PyBytes_AS_STRING(head)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(head)
    cdef Py_ssize_t end = _line_end(p, 0, n), sp1, sp2, at, colon, v0, v1, i, count = 0
    cdef const char* q
    cdef char low[MAX_NAME]
    cdef unsigned char c
    # GET <target> HTTP/1.1
    q = <const char*>memchr(p, b' ', end)
    sp1 = q - p if q != NULL else -1
    q = <const char*>memchr(p + sp1 + 1, b' ', end - sp1 - 1) if sp1 >= 0 else NULL
    sp2 = q - p if q != NULL else -1
    if sp2 < 0 or memchr(p + sp2 + 1, b' ', end - sp2 - 1) != NULL:
        raise BadRequest("malformed request line")
    if sp1 != 3 or memcmp(p, b"GET", 3) != 0:
        raise BadRequest("an upgrade request must be a GET")
    if end - sp2 - 1 != 8 or memcmp(p + sp2 + 1, b"HTTP/1.1", 8) != 0:
        raise BadRequest("an upgrade request must be HTTP/1.1")
    if sp2 == sp1 + 1:
        raise BadRequest("empty request target")
    cdef bytes path = PyBytes_FromStringAndSize(p + sp1 + 1, sp2 - sp1 - 1)
    cdef dict headers = {}
    cdef object name
    at = end + 2
    while at < n:
        end = _line_end(p, at, n)
        count += 1
        if count > MAX_HEADERS:
            raise BadRequest(f"more than {MAX_HEADERS} headers")
        q = <const char*>memchr(p + at, b':', end - at)
        colon = q - p if q != NULL else -1
        if colon <= at:
            raise BadRequest("malformed header")
        for i in range(at, colon):
            if not TOKEN[<unsigned char>p[i]]:
                raise BadRequest("malformed header")
        if colon - at <= MAX_NAME:
            for i in range(colon - at):
                c = <unsigned char>p[at + i]
                low[i] = c + 32 if 65 <= c <= 90 else c
            name = PyUnicode_DecodeLatin1(low, colon - at, NULL)
        else:
            name = PyUnicode_DecodeLatin1(p + at, colon - at, NULL).lower()
        if name not in headers:
            v0, v1 = colon + 1, end
            while v0 < v1 and (p[v0] == b' ' or p[v0] == b'\t'):
                v0 += 1
            while v1 > v0 and (p[v1 - 1] == b' ' or p[v1 - 1] == b'\t'):
                v1 -= 1
            headers[name] = PyUnicode_DecodeLatin1(p + v0, v1 - v0, NULL)
        at = end + 2
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip("0"):
        raise BadRequest("an upgrade request has no body")
    return Request(path, headers)
