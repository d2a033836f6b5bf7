"""Open connections per key: the interface, and counting in one process."""
from __future__ import annotations

from typing import Protocol


class ConnectionLimiter(Protocol):
    def acquire(self, key_hash: str, limit: int) -> bool: ...
    def release(self, key_hash: str) -> None: ...
    def count(self, key_hash: str) -> int: ...


class LocalConnectionLimiter:
    """Open connections per key, in this process."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def acquire(self, key_hash: str, limit: int) -> bool:
        n = self._open.get(key_hash, 0)
        if n >= limit:
            return False
        self._open[key_hash] = n + 1
        return True

    def release(self, key_hash: str) -> None:
        n = self._open.get(key_hash, 0) - 1
        if n > 0:
            self._open[key_hash] = n
        else:
            self._open.pop(key_hash, None)

    def count(self, key_hash: str) -> int:
        return self._open.get(key_hash, 0)
