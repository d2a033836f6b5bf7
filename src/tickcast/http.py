"""The HTTP side of a WebSocket upgrade (RFC 6455 §4.2): the client's
request (read by ext/tickcast/_http.pyx), our 101, and the refusals."""
from __future__ import annotations

import re
from binascii import b2a_base64
from hashlib import sha1

import orjson

from tickcast._http import BadRequest, Request, parse_request

__all__ = ["BadRequest", "Request", "Refusal", "accept_key", "parse_request", "refusal", "switching"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")       # base64 of 16 bytes
_REASONS = {400: "Bad Request", 401: "Unauthorized", 426: "Upgrade Required", 429: "Too Many Requests",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


def accept_key(request: Request) -> bytes:
    """Sec-WebSocket-Accept for a valid upgrade request, else BadRequest."""
    headers = request.headers
    if headers.get("upgrade", "").lower() != "websocket":
        raise BadRequest("no 'Upgrade: websocket' header")
    connection = headers.get("connection", "")
    if connection.lower() != "upgrade" and \
            "upgrade" not in (t.strip().lower() for t in connection.split(",")):
        raise BadRequest("no 'Connection: Upgrade' header")
    key = headers.get("sec-websocket-key", "").encode("latin-1")
    if _KEY.fullmatch(key) is None:
        raise BadRequest("invalid Sec-WebSocket-Key")
    return b2a_base64(sha1(key + _GUID).digest(), newline=False)


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
