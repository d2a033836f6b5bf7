"""The HTTP side of a WebSocket upgrade (RFC 6455 §4.2): the client's
request is read, checked and answered with our 101 by ext/tickcast/_http.pyx;
here are the refusals."""
from __future__ import annotations

from http import HTTPStatus

import orjson

from tickcast._http import BadRequest, UnsupportedVersion, read_upgrade

__all__ = ["BadRequest", "Refusal", "UnsupportedVersion", "read_upgrade", "refusal", "response"]


def response(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None,
             head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response that closes the connection (a refused
    upgrade, an admin endpoint's answer)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + \
        (b"" if head_only else body)


def refusal(code: str, message: str) -> dict:
    """The body of a refused connection (HTTP before the upgrade, a frame after it)."""
    return {"ok": False, "error": {"code": code, "message": message}}


class Refusal:
    """An upgrade refused: its status, the API's error code, and the whole
    HTTP response, with the JSON body of the Market.ai API. A refusal that
    may pass (429, 503) says when to try again (``retry_after`` seconds,
    Retry-After): clients that reconnect at once would hammer the server."""
    __slots__ = ("status", "code", "response")

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 retry_after: int | None = None) -> None:
        self.status = status
        self.code = code
        body = orjson.dumps(refusal(code, message))
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        self.response = response(status, body, "application/json", headers)
