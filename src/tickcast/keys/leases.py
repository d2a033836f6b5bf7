"""Connections per key counted across every node: leases in Redis.

A node holds each connection that counts against a key as a lease: a
member of the key's sorted set in Redis, scored by when it lapses (on
Redis's clock, so nodes' clocks do not matter). Taking one is one Lua
script that drops lapsed leases, counts, and adds only under the tier's
limit: atomic, so 200 connections racing for a free key over any number of
nodes get exactly one. A node renews its leases every ttl/3, removes one
when its connection ends and all of them when it stops; a node killed with
-9 renews nothing, and its leases lapse within the ttl.

All of it goes over one connection, in order: a lease removed after a
renewal that still named it stays removed. Acquires asked while a batch is
out go together in the next, one round trip for all.

Redis unreachable: the node counts on its own (each node then admits up to
the limit), logs "limits degraded", and once Redis answers writes back every
lease it holds and logs "limits ready". A key over its limit after that
keeps its connections and gets no new one until enough of them end.
"""
from __future__ import annotations

import asyncio
import logging
import os

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tickcast.keys.errors import LimitsError

log = logging.getLogger("tickcast.limits")

PREFIX = "tickcast"
CHUNK = 1000                  # leases renewed per script call

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
# KEYS[1]: the key's leases; ARGV: the new lease, the limit, the ttl in ms.
ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS: sets of leases; ARGV: the ttl in ms, then for each set how many of
# its leases follow, then those leases. Written whether or not still there
# (after a Redis restart they are not).
RENEW = _NOW + """
local ttl = tonumber(ARGV[1])
local i = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  for j = 1, n do redis.call('ZADD', KEYS[k], now + ttl, ARGV[i + j]) end
  redis.call('PEXPIRE', KEYS[k], ttl)
  i = i + n + 1
end
return #KEYS
"""


class RedisLeases:
    def __init__(self, url: str, ttl: float, prefix: str = PREFIX) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise LimitsError(f"bad --limits URL {url!r}: expected redis://HOST:PORT[/DB]")
        self.url = url
        self.ttl_ms = int(ttl * 1000)
        self.prefix = f"{prefix}:leases:"
        try:
            # One connection, no retries: commands keep their order, and a
            # failure is known at once (the node then counts on its own).
            self.client = aioredis.Redis.from_url(url, single_connection_client=True, socket_timeout=2,
                                                  socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise LimitsError(f"bad --limits URL {url!r}: {exc}") from None
        self._acquire = self.client.register_script(ACQUIRE)
        self._renew = self.client.register_script(RENEW)
        self.node = os.urandom(6).hex()       # this process, in its leases' names
        self.seq = 0
        self.held: dict[str, set[str]] = {}   # key hash -> this node's leases on it
        self.ready = True                     # False: Redis unreachable, counting here
        self.dropped: list[tuple[str, str]] = []   # leases let go while Redis was away, to remove
        # Taken for every command: they keep their order, and one waiting
        # behind a command that found Redis gone skips Redis rather than
        # waiting out a timeout of its own.
        self._lock = asyncio.Lock()
        self._asking: list[tuple] = []        # acquires waiting for the next batch
        self._releasing: list[tuple[str, str]] = []   # leases released, to remove in the next round trip
        self._tasks: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            await self.client.aclose()
            raise LimitsError(f"cannot reach the limits store at {self.url}: {exc}") from None
        self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    def count(self, key_hash: str) -> int:
        """This node's connections on the key."""
        return len(self.held.get(key_hash, ()))

    async def acquire(self, key_hash: str, limit: int) -> str | None:
        """A lease on one of the key's ``limit`` places, or None when all are taken."""
        self.seq += 1
        lease = f"{self.node}:{self.seq}"
        granted = None
        if self.ready and not self._closed:
            asked = asyncio.get_running_loop().create_future()
            self._asking.append((key_hash, lease, limit, asked))
            if len(self._asking) == 1:         # the first since the last batch went: send the next
                self._spawn(self._ask())
            granted = await asked
        if granted is None:                   # counted here while Redis is away
            granted = self.count(key_hash) < limit
        if not granted:
            return None
        self.held.setdefault(key_hash, set()).add(lease)
        return lease

    async def _ask(self) -> None:
        """Every acquire asked since the last batch, in one round trip, after
        every lease released before them: a batch spawned earlier may take
        an acquire asked after a release, which must not find the released
        lease still held (a client reconnecting at once after a reset)."""
        async with self._lock:
            batch, self._asking = self._asking, []
            releasing, self._releasing = self._releasing, []
            answers = [None] * len(batch)
            if self.ready and not self._closed:
                try:
                    pipe = self.client.pipeline(transaction=False)
                    for key_hash, lease in releasing:
                        pipe.zrem(self.prefix + key_hash, lease)
                    for key_hash, lease, limit, _ in batch:
                        await self._acquire(keys=[self.prefix + key_hash], args=[lease, limit, self.ttl_ms],
                                            client=pipe)
                    answers = [r == 1 for r in (await pipe.execute())[len(releasing):]]
                except (RedisError, OSError) as exc:
                    self._degrade(exc)
                    self.dropped += releasing        # removed once Redis answers again
            else:
                self.dropped += releasing
            for (_, _, _, asked), granted in zip(batch, answers):
                if not asked.done():
                    asked.set_result(granted)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def release(self, key_hash: str, lease: str) -> None:
        held = self.held.get(key_hash)
        if held is None or lease not in held:
            return
        held.discard(lease)
        if not held:
            del self.held[key_hash]
        if self._closed:
            return
        if not self.ready:
            self.dropped.append((key_hash, lease))
            return
        self._releasing.append((key_hash, lease))
        if len(self._releasing) == 1:           # the first since the last went: send them
            self._spawn(self._remove())

    async def _remove(self) -> None:
        async with self._lock:
            leases, self._releasing = self._releasing, []
            if not leases:
                return                           # an acquire's batch took them
            if not self.ready:
                self.dropped += leases
                return
            try:
                pipe = self.client.pipeline(transaction=False)
                for key_hash, lease in leases:
                    pipe.zrem(self.prefix + key_hash, lease)
                await pipe.execute()
            except (RedisError, OSError) as exc:
                self._degrade(exc)
                self.dropped += leases       # removed once Redis answers again

    def _degrade(self, exc: BaseException) -> None:
        if self.ready:
            self.ready = False
            log.warning("limits degraded: %s unreachable (%s: %s); counting connections per node "
                        "until it answers", self.url, type(exc).__name__, exc)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            async with self._lock:
                try:
                    await self.renew()
                    if not self.ready and self.dropped:
                        pipe = self.client.pipeline(transaction=False)
                        for key_hash, lease in self.dropped:
                            pipe.zrem(self.prefix + key_hash, lease)
                        await pipe.execute()
                except (RedisError, OSError) as exc:
                    self._degrade(exc)
                    continue
                if not self.ready:
                    self.ready = True
                    log.info("limits ready: %s answers; %d leases written back, %d let go meanwhile "
                             "removed", self.url, sum(map(len, self.held.values())), len(self.dropped))
                    self.dropped = []

    async def renew(self) -> None:
        """Write every lease this node holds, with a new ttl."""
        if not self.held:
            await self.client.ping()
            return
        keys, args, n = [], [self.ttl_ms], 0
        for key_hash, leases in list(self.held.items()):
            keys.append(self.prefix + key_hash)
            args += [len(leases), *leases]
            n += len(leases)
            if n >= CHUNK:
                await self._renew(keys=keys, args=args)
                keys, args, n = [], [self.ttl_ms], 0
        if keys:
            await self._renew(keys=keys, args=args)

    async def close(self) -> None:
        """Give back every lease at once (a graceful stop)."""
        self._closed = True
        # Taken before the first await: a connection that ends meanwhile
        # releases nothing more (we are closed), so its lease must be in here.
        held, self.held = self.held, {}
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        try:
            if self.ready and held:
                pipe = self.client.pipeline(transaction=False)
                for key_hash, leases in held.items():
                    pipe.zrem(self.prefix + key_hash, *leases)
                async with self._lock:
                    await asyncio.wait_for(pipe.execute(), 2)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not give back %d leases (%s); they lapse within %g s",
                        sum(map(len, held.values())), exc, self.ttl_ms / 1000)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
