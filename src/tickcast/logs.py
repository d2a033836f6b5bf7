"""Logging that a client cannot turn into a disk-filling attack.

Whatever a client can provoke (a refused connection, an error in a dialect)
is logged through a Throttle: at most a few lines a second in total, and the
lines it held back are counted and said with the next one.
"""
from __future__ import annotations

import logging

from tickcast.budget import TokenBucket

log = logging.getLogger("tickcast")


class Throttle:
    """At most ``per_second`` lines a second (a token bucket), one line each."""

    __slots__ = ("logger", "bucket", "held_back")

    def __init__(self, logger: logging.Logger = log, per_second: float = 5.0) -> None:
        self.logger = logger
        self.bucket = TokenBucket(per_second, per_second)
        self.held_back = 0

    def warning(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` if the budget allows; True if it was logged."""
        if not self.bucket.take():
            self.held_back += 1
            return False
        if self.held_back:
            msg += f" ({self.held_back} similar lines held back)"
            self.held_back = 0
        self.logger.warning(msg, *args)
        return True


def where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc``'s traceback: enough to
    find a bug from one log line, without a traceback per client message."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
