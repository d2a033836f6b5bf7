"""What a client program can catch."""
from __future__ import annotations


class ClientError(Exception):
    """A request the server refused, or a client that cannot go on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AuthenticationError(ClientError):
    """The key is not valid (HTTP 401 or UNAUTHORIZED): never retried."""


class InvalidChannel(ClientError):
    """A channel the server does not know (INVALID_CHANNEL)."""


class InvalidMessage(ClientError):
    """The server found the request malformed (INVALID_MESSAGE), e.g. a bad symbol."""


class SymbolLimitExceeded(ClientError):
    """Over the tier's symbol limit: ``accepted`` stay subscribed, ``rejected`` do not."""

    def __init__(self, code: str, message: str, accepted: list[str], rejected: list[str]) -> None:
        super().__init__(code, message)
        self.accepted = accepted
        self.rejected = rejected


class RequestFailed(ClientError):
    """A v4 request answered with an error code (``code`` is the HTTP-style number)."""


class Closed(ClientError):
    """The client was closed."""
