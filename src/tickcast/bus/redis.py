"""The bus on Redis: one stream of messages, one hash of the latest records.

Why a stream and not Pub/Sub: Pub/Sub is at-most-once, and a node that loses
its connection for a second loses that second. A stream entry stays (up to
MAXLEN entries), so a node that comes back reads on from the last id it
had: nothing the bus accepted is lost to it. The hash keeps the latest
record of every state key, so that a node started late serves snapshots at
once. A producer's message goes in one MULTI/EXEC: the entry and the hash
agree.

What a client loses in a bus outage: the records producers could not
publish while Redis was unreachable (their publish fails: the Publisher
raises BusError, a feed process counts and logs them), and nothing else. A
Redis restarted without persistence also forgets the hash: snapshots of
state keys that have not been published since come back with their next
update.
"""
from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tickcast.bus.base import BusError
from tickcast.bus.record import Record, pack
from tickcast.bus.tail import BLOCK_MS, Tail, TailError

PREFIX = "tickcast"
MAXLEN = 100_000          # stream entries kept (approximately): a node away longer misses the excess
BATCH = 1000              # entries one read takes
BACKOFF = (0.1, 2.0)      # first and longest wait between reconnection attempts, seconds


class RedisBus:
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.tail: Tail | None = None      # the stream read now
        self.reconnects = 0
        self.stream = f"{prefix}:updates"
        self.latest = f"{prefix}:latest"
        try:
            self.client = aioredis.Redis.from_url(url, socket_timeout=BLOCK_MS / 1000 + 4,
                                                  socket_connect_timeout=2)
        except ValueError as exc:
            raise ValueError(f"bad bus URL {url!r}: {exc}") from None

    async def connect(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot reach the bus at {self.url}: {exc}") from None

    async def send(self, records: list[Record]) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.stream, {b"u": pack(records)}, maxlen=MAXLEN, approximate=True)
        latest = {h: p for h, p, keep in records if keep}
        if latest:
            pipe.hset(self.latest, mapping=latest)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BusError(f"the bus at {self.url} did not take {len(records)} records: {exc}") from None

    async def consume(self, on_latest, on_message, on_state) -> None:
        last = None
        wait = BACKOFF[0]
        ready = None              # not known yet
        where = self.client.connection_pool.connection_kwargs
        tls = self.client.connection_pool.connection_class.__name__ == "SSLConnection"

        def reading() -> None:
            nonlocal ready, wait
            wait = BACKOFF[0]
            if not ready:
                ready = True
                on_state(True, f"reading {self.stream} at {self.url} from {last.decode()}")

        while True:
            try:
                if last is None:
                    # Where the stream ends now, then the state kept: nothing
                    # published in between is missed (it is read twice at worst).
                    end = await self.client.xrevrange(self.stream, count=1)
                    last = end[0][0] if end else b"0-0"
                    for header, payload in (await self.client.hgetall(self.latest)).items():
                        on_latest(header, payload)
                tail = Tail(self.stream, last, BATCH, on_message)
                try:
                    self.tail = tail
                    await tail.follow(where, tls, reading)
                finally:
                    last = tail.last
            except (RedisError, OSError, TailError, asyncio.TimeoutError) as exc:
                if ready is not False:
                    if ready:
                        self.reconnects += 1
                    ready = False
                    on_state(False, f"lost the bus at {self.url} ({type(exc).__name__}: {exc}); "
                                    f"reconnecting, then reading on from {last.decode() if last else 'its end'}")
                await asyncio.sleep(wait)
                wait = min(wait * 2, BACKOFF[1])

    @property
    def lag(self) -> float:
        """Seconds: how old the last message read was when it was read."""
        return self.tail.lag if self.tail is not None else 0.0

    async def close(self) -> None:
        await self.client.aclose()
