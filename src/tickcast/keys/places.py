"""A key's places: the one rule for how many connections a key may hold.

Counted in this node, or with --limits in the whole cluster (RedisLeases:
a round trip to Redis). A connection takes a place
before it is served, keeps the token it was given and gives it back once
when it goes; a key whose places are all taken gets CONNECTION_LIMIT.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from tickcast.http import Refusal
from tickcast.keys.tiers import Principal

if TYPE_CHECKING:
    from tickcast.keys.leases import RedisLeases

HERE = object()          # the token of a place in this node's count (a lease is the cluster's: a str)


class Places:
    def __init__(self, leases: RedisLeases | None = None) -> None:
        self.leases = leases
        self.clustered = leases is not None      # taking a place is then a round trip: take(), not take_here()
        self._here: dict[str, int] = {}          # key hash -> its connections in this node's count

    def take_here(self, principal: Principal) -> object | None:
        """A place in this node's count (not clustered), or None: the key is at its limit."""
        digest = principal.key_hash
        n = self._here.get(digest, 0)
        if n >= principal.tier.max_connections:
            return None
        self._here[digest] = n + 1
        return HERE

    async def take(self, principal: Principal) -> object | None:
        """A place, asked of the cluster when clustered; None: the key is at its limit."""
        if self.leases is None:
            return self.take_here(principal)
        return await self.leases.acquire(principal.key_hash, principal.tier.max_connections)

    def give_back(self, principal: Principal, place: object) -> None:
        if place is HERE:
            digest = principal.key_hash
            n = self._here.get(digest, 0) - 1
            if n > 0:
                self._here[digest] = n
            else:
                self._here.pop(digest, None)
        elif self.leases is not None:
            self.leases.release(principal.key_hash, place)

    def count(self, key_hash: str) -> int:
        """This node's connections on the key."""
        return self.leases.count(key_hash) if self.leases is not None else self._here.get(key_hash, 0)


def limit_message(principal: Principal) -> str:
    return f"Connection limit ({principal.tier.max_connections}) reached for your tier."


def connection_limit(principal: Principal) -> Refusal:
    """The refusal of an upgrade over the key's limit. A place frees when one
    of the key's connections ends: no sooner than a client closes one."""
    return Refusal(429, "CONNECTION_LIMIT", limit_message(principal), retry_after=5)
