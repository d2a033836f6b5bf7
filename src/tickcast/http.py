"""The HTTP side of a WebSocket upgrade (RFC 6455 §4.2): the client's
request, our 101, and the refusals.

A push server's clients send one request each, of a few hundred bytes, so
it is read with bytes methods in one pass; what a WebSocket client must
send is checked, the rest of HTTP is refused with 400 rather than half
understood (no bodies, no folded headers, HTTP/1.1 only).
"""
from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from hashlib import sha1

import orjson

MAX_HEADERS = 100
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_REASONS = {400: "Bad Request", 401: "Unauthorized", 426: "Upgrade Required", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_TOKEN_BAD = frozenset(b' \t"(),/:;<=>?@[\\]{}') | frozenset(range(33)) | {127}


class BadRequest(Exception):
    """Not a WebSocket upgrade request we answer: 400, with this message."""


class Request:
    """A parsed upgrade request: its target (bytes, path and query) and its
    headers by lower-case name (the first of a repeated one)."""
    __slots__ = ("path", "headers")

    def __init__(self, path: bytes, headers: dict[str, str]) -> None:
        self.path = path
        self.headers = headers


def parse_request(head: bytes) -> Request:
    """``head``: the request line and headers, without the blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, path, version = parts
    if method != b"GET":
        raise BadRequest("an upgrade request must be a GET")
    if version != b"HTTP/1.1":
        raise BadRequest("an upgrade request must be HTTP/1.1")
    if not path:
        raise BadRequest("empty request target")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(f"more than {MAX_HEADERS} headers")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[0] in (32, 9) or not _TOKEN_BAD.isdisjoint(name):
            raise BadRequest("malformed header")
        key = name.decode("ascii").lower()
        if key not in headers:
            headers[key] = value.strip(b" \t").decode("latin-1")
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip("0"):
        raise BadRequest("an upgrade request has no body")
    return Request(path, headers)


def accept_key(request: Request) -> bytes:
    """Sec-WebSocket-Accept for a valid upgrade request, else BadRequest."""
    headers = request.headers
    if headers.get("upgrade", "").lower() != "websocket":
        raise BadRequest("no 'Upgrade: websocket' header")
    if "upgrade" not in (t.strip().lower() for t in headers.get("connection", "").split(",")):
        raise BadRequest("no 'Connection: Upgrade' header")
    key = headers.get("sec-websocket-key", "").encode("latin-1")
    try:
        if len(b64decode(key, validate=True)) != 16:
            raise BadRequest("invalid Sec-WebSocket-Key")
    except binascii.Error:
        raise BadRequest("invalid Sec-WebSocket-Key") from None
    return b64encode(sha1(key + _GUID).digest())


def switching(accept: bytes) -> bytes:
    """The 101 response."""
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def refusal(code: str, message: str) -> dict:
    """The body of a refused connection (HTTP before the upgrade, a frame after it)."""
    return {"ok": False, "error": {"code": code, "message": message}}


class Refusal:
    """An upgrade refused: its status, the API's error code, and the whole
    HTTP response, with the JSON body of the Market.ai API."""
    __slots__ = ("status", "code", "response")

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.code = code
        body = orjson.dumps(refusal(code, message))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.response = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body
