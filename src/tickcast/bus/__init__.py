"""The bus: updates serialised once by a producer, carried to every node.

base.py says what a bus does and how records travel; redis.py is the Redis
Streams adapter; intake.py routes what a node reads into its dialects.
"""
from __future__ import annotations

from tickcast.bus.base import Bus, BusError


def open_bus(url: str) -> Bus:
    """The bus at ``url`` (redis://HOST:PORT[/DB]); ValueError for another kind."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            from tickcast.bus.redis import RedisBus
        except ImportError as exc:      # the extra is not installed
            raise ValueError(f"the Redis bus needs redis-py: pip install 'tickcast[bus]' ({exc})") from None
        return RedisBus(url)
    raise ValueError(f"unknown bus {url!r}: expected redis://HOST:PORT[/DB]")


__all__ = ["Bus", "BusError", "open_bus"]
