# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The upgrade request head read, checked and answered in one pass of C.

In a reconnect storm every client sends one. Read into a dict of header
strings, then checked and hashed in Python, it cost about 8 µs of the
server's 70 µs of user time a connection; here nothing but the request's
target becomes a Python object, and the 101 (its Sec-WebSocket-Accept,
RFC 6455 §4.2.2) is one bytes object. What is not a
request a WebSocket client sends is refused (BadRequest, answered 400)
rather than half understood: no bodies, no folded headers, HTTP/1.1 only.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memchr, memcmp, memcpy, strlen

MAX_HEADERS = 100


class BadRequest(Exception):
    """Not a WebSocket upgrade request we answer: 400, with this message."""


class UnsupportedVersion(Exception):
    """A well-formed upgrade for a WebSocket version other than 13: 426."""


cdef bint TOKEN[256]            # RFC 9110 token characters
cdef bint BASE64[256]           # the base64 alphabet, without its padding
cdef int _c
for _c in range(256):
    TOKEN[_c] = 33 <= _c <= 126 and chr(_c) not in '"(),/:;<=>?@[\\]{}'
    BASE64[_c] = chr(_c).isascii() and (chr(_c).isalnum() or chr(_c) in "+/")

cdef const char* _B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef const char* _GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
cdef const char* _SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Accept: ")
cdef Py_ssize_t SWITCHING_LEN = strlen(_SWITCHING)
cdef enum:
    KEY_LEN = 24                # base64 of 16 bytes
    ACCEPT_LEN = 28             # base64 of a SHA-1

# The headers an upgrade is decided on (the first of a repeated one counts).
cdef enum:
    UPGRADE, CONNECTION, KEY, VERSION, TRANSFER_ENCODING, CONTENT_LENGTH, KNOWN
_NAMED = (b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version",
          b"transfer-encoding", b"content-length")      # in that order; kept alive for _NAMES
cdef const char* _NAMES[KNOWN]
cdef Py_ssize_t _LENGTHS[KNOWN]
for _c in range(KNOWN):
    _NAMES[_c] = _NAMED[_c]
    _LENGTHS[_c] = len(_NAMED[_c])


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


cdef inline bint _same(const char* p, Py_ssize_t n, const char* lower, Py_ssize_t m) noexcept:
    """``p[:n]`` equals the lower-case ASCII ``lower``, ignoring case."""
    cdef Py_ssize_t i
    cdef uint8_t c
    if n != m:
        return False
    for i in range(n):
        c = <uint8_t>p[i]
        if 65 <= c <= 90:
            c += 32
        if c != <uint8_t>lower[i]:
            return False
    return True


cdef int _known(const char* p, Py_ssize_t n) noexcept:
    """Which of the headers an upgrade is decided on ``p[:n]`` names, or KNOWN."""
    cdef int i
    for i in range(KNOWN):
        if _same(p, n, _NAMES[i], _LENGTHS[i]):
            return i
    return KNOWN


cdef bint _has_token(const char* p, Py_ssize_t v0, Py_ssize_t v1, const char* lower, Py_ssize_t m) noexcept:
    """The comma-separated list ``p[v0:v1]`` has the token ``lower`` (any case)."""
    cdef Py_ssize_t a = v0, b, t0, t1
    while a <= v1:
        b = a
        while b < v1 and p[b] != b',':
            b += 1
        t0, t1 = a, b
        while t0 < t1 and (p[t0] == b' ' or p[t0] == b'\t'):
            t0 += 1
        while t1 > t0 and (p[t1 - 1] == b' ' or p[t1 - 1] == b'\t'):
            t1 -= 1
        if _same(p + t0, t1 - t0, lower, m):
            return True
        a = b + 1
    return False


# -- Sec-WebSocket-Accept -------------------------------------------------------

# SHA-1 is OpenSSL's (hashlib), already in the process. A SHA-1 of our own
# (with the SHA extensions) took 0.145 µs a key against 0.65 µs through
# hashlib: 0.5 µs of the 45-60 µs of server CPU a connection costs in a
# storm, less than a storm's runs differ by, so the hand-written rounds went.
from hashlib import sha1 as _sha1


cdef int _accept(const char* key, char* out) except -1:
    """Sec-WebSocket-Accept of a 24-character key: base64(SHA-1(key + GUID)),
    28 characters into ``out``."""
    cdef uint8_t m[60]
    cdef uint8_t digest[21]
    cdef int i
    cdef uint32_t v
    memcpy(m, key, KEY_LEN)
    memcpy(m + KEY_LEN, _GUID, 36)
    cdef bytes h = _sha1(PyBytes_FromStringAndSize(<char*>m, 60)).digest()
    memcpy(digest, PyBytes_AS_STRING(h), 20)
    digest[20] = 0
    for i in range(7):                      # 21 bytes (the last one padding) in 7 groups of 3
        v = (<uint32_t>digest[3 * i] << 16) | (<uint32_t>digest[3 * i + 1] << 8) | digest[3 * i + 2]
        out[4 * i] = _B64[(v >> 18) & 63]
        out[4 * i + 1] = _B64[(v >> 12) & 63]
        out[4 * i + 2] = _B64[(v >> 6) & 63]
        out[4 * i + 3] = _B64[v & 63]
    out[27] = b'='
    return 0


def accept_key(bytes key):
    """Sec-WebSocket-Accept for a 24-character Sec-WebSocket-Key (for tests)."""
    cdef char out[ACCEPT_LEN]
    if PyBytes_GET_SIZE(key) != KEY_LEN:
        raise ValueError("a key is 24 characters")
    _accept(PyBytes_AS_STRING(key), out)
    return PyBytes_FromStringAndSize(out, ACCEPT_LEN)


def read_upgrade(bytearray data, Py_ssize_t n):
    """``data[:n]``: the request line and headers, without the blank line
    (read where they lie: the handshake's read buffer). Returns (target, the 101 response): the target is the request's path
    and query, as sent. BadRequest if it is not a WebSocket upgrade we
    answer, UnsupportedVersion if it is one for a version other than 13."""
    if not 0 <= n <= PyByteArray_GET_SIZE(data):
        raise ValueError("n is past the data")
    cdef const char* p = PyByteArray_AS_STRING(data)
    cdef Py_ssize_t end = _line_end(p, 0, n), sp1, sp2, at, colon, v0, v1, i, count = 0
    cdef Py_ssize_t start[KNOWN]
    cdef Py_ssize_t stop[KNOWN]
    cdef const char* q
    cdef int which
    for i in range(KNOWN):
        start[i] = -1
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
            if not TOKEN[<uint8_t>p[i]]:
                raise BadRequest("malformed header")
        which = _known(p + at, colon - at)
        if which != KNOWN and start[which] < 0:
            v0, v1 = colon + 1, end
            while v0 < v1 and (p[v0] == b' ' or p[v0] == b'\t'):
                v0 += 1
            while v1 > v0 and (p[v1 - 1] == b' ' or p[v1 - 1] == b'\t'):
                v1 -= 1
            start[which], stop[which] = v0, v1
        at = end + 2
    if start[TRANSFER_ENCODING] >= 0:
        raise BadRequest("an upgrade request has no body")
    if start[CONTENT_LENGTH] >= 0:
        for i in range(start[CONTENT_LENGTH], stop[CONTENT_LENGTH]):
            if p[i] != b'0':
                raise BadRequest("an upgrade request has no body")
    if start[UPGRADE] < 0 or not _same(p + start[UPGRADE], stop[UPGRADE] - start[UPGRADE], b"websocket", 9):
        raise BadRequest("no 'Upgrade: websocket' header")
    if start[CONNECTION] < 0 or not _has_token(p, start[CONNECTION], stop[CONNECTION], b"upgrade", 7):
        raise BadRequest("no 'Connection: Upgrade' header")
    v0 = start[KEY]
    if v0 < 0 or stop[KEY] - v0 != KEY_LEN or p[v0 + 22] != b'=' or p[v0 + 23] != b'=':
        raise BadRequest("invalid Sec-WebSocket-Key")
    for i in range(v0, v0 + 22):
        if not BASE64[<uint8_t>p[i]]:
            raise BadRequest("invalid Sec-WebSocket-Key")
    if start[VERSION] < 0 or stop[VERSION] - start[VERSION] != 2 or memcmp(p + start[VERSION], b"13", 2) != 0:
        raise UnsupportedVersion()
    cdef bytes response = PyBytes_FromStringAndSize(NULL, SWITCHING_LEN + ACCEPT_LEN + 4)
    cdef char* r = PyBytes_AS_STRING(response)
    memcpy(r, _SWITCHING, SWITCHING_LEN)
    _accept(p + v0, r + SWITCHING_LEN)
    memcpy(r + SWITCHING_LEN + ACCEPT_LEN, b"\r\n\r\n", 4)
    return PyBytes_FromStringAndSize(p + sp1 + 1, sp2 - sp1 - 1), response
