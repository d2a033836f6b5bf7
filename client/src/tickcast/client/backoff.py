"""The reconnection schedule of the Market.ai guide, and the client's states.

Wait 1 s, then 2, 4, 8, 16, 32, capped at 32; reset to 1 after 60 s of
stable connection. Each wait is spread by ``jitter`` (a fraction, default
0.1: 1 s becomes 0.9 to 1.1 s) so that the clients of a restarted server do
not all come back in the same millisecond; 0 makes it exact.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    first: float = 1.0
    factor: float = 2.0
    cap: float = 32.0
    reset_after: float = 60.0         # seconds connected after which the next wait is `first` again
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        """The wait before reconnection attempt ``attempt`` (0: the first)."""
        base = min(self.cap, self.first * self.factor ** attempt)
        return base * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else base


@dataclass(frozen=True)
class State:
    """Where a client is: ``connecting``, ``connected``, ``backing_off``
    (``delay`` seconds until the next attempt, ``reason`` why) or ``closed``."""
    name: str
    delay: float = 0.0
    reason: str = ""
