"""A key's places: the one rule for how many connections a key may hold.

Counted in this node (a ConnectionLimiter), or with --limits in the whole
cluster (RedisLeases: a round trip to Redis). A connection takes a place
before it is served, keeps the token it was given and gives it back once
when it goes; a key whose places are all taken gets CONNECTION_LIMIT.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tickcast.http import Refusal
from tickcast.keys.counting import ConnectionLimiter
from tickcast.keys.tiers import Principal

if TYPE_CHECKING:
    from tickcast.keys.leases import RedisLeases

HERE = object()          # the token of a place in this node's count (a lease is the cluster's: a str)


class Places:
    def __init__(self, limiter: ConnectionLimiter, leases: RedisLeases | None = None) -> None:
        self.limiter = limiter
        self.leases = leases
        self.clustered = leases is not None      # taking a place is then a round trip: take(), not take_here()

    def take_here(self, principal: Principal) -> object | None:
        """A place in this node's count (not clustered), or None: the key is at its limit."""
        return HERE if self.limiter.acquire(principal.key_hash, principal.tier.max_connections) else None

    async def take(self, principal: Principal) -> object | None:
        """A place, asked of the cluster when clustered; None: the key is at its limit."""
        if self.leases is None:
            return self.take_here(principal)
        return await self.leases.acquire(principal.key_hash, principal.tier.max_connections)

    def give_back(self, principal: Principal, place: object) -> None:
        if place is HERE:
            self.limiter.release(principal.key_hash)
        elif self.leases is not None:
            self.leases.release(principal.key_hash, place)

    def count(self, key_hash: str) -> int:
        """This node's connections on the key."""
        return (self.leases or self.limiter).count(key_hash)


def limit_message(principal: Principal) -> str:
    return f"Connection limit ({principal.tier.max_connections}) reached for your tier."


def connection_limit(principal: Principal) -> Refusal:
    """The refusal of an upgrade over the key's limit. A place frees when one
    of the key's connections ends: no sooner than a client closes one."""
    return Refusal(429, "CONNECTION_LIMIT", limit_message(principal), retry_after=5)
