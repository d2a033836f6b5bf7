"""A token bucket (``rate`` tokens a second, at most ``burst`` saved up),
kept as one number: the instant it is full again (the generic cell rate
algorithm). A connection holds that float alone, not an object of two."""
from __future__ import annotations

import time


def spend(full_at: float, now: float, cost: float, rate: float, burst: float) -> float | None:
    """The bucket's new full-again instant after taking ``cost`` at ``now``,
    or None if it holds fewer than ``cost`` tokens (then nothing is taken)."""
    after = (full_at if full_at > now else now) + cost / rate
    return after if after - now <= burst / rate else None


class TokenBucket:
    __slots__ = ("rate", "burst", "full_at")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.full_at = 0.0               # full from the start

    def take(self, cost: float = 1.0) -> bool:
        after = spend(self.full_at, time.monotonic(), cost, self.rate, self.burst)
        if after is None:
            return False
        self.full_at = after
        return True
