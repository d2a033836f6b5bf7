"""Per-key connection accounting and per-connection message budgets.

ConnectionLimiter is the seam for a shared (for example Redis-backed)
implementation when several nodes serve the same keys.
"""
from __future__ import annotations

import time
from typing import Protocol


class ConnectionLimiter(Protocol):
    def has_room(self, key_hash: str, limit: int) -> bool: ...
    def acquire(self, key_hash: str, limit: int) -> bool: ...
    def release(self, key_hash: str) -> None: ...
    def count(self, key_hash: str) -> int: ...


class LocalConnectionLimiter:
    """Open connections per key, in this process."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def has_room(self, key_hash: str, limit: int) -> bool:
        return self._open.get(key_hash, 0) < limit

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


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
