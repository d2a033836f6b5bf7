"""The bus on Redis: one stream of messages, one hash of the latest records.

Why a stream and not Pub/Sub: Pub/Sub is at-most-once, and a node that loses
its connection for a second loses that second. A stream entry stays (up to
MAXLEN entries), so a node that comes back reads on from the last id it
had: nothing the bus accepted is lost to it. The hash keeps the latest
record of every state key, so that a node started late serves snapshots at
once. A producer's message goes in one script (SEND), atomically: its
Market.ai records are numbered in their topics' sequences (a hash of
counters, whose empty field holds the epoch: lost together, they start
again together in a new epoch), the entry carries the numbers beside the
message, and the hash of latest records agrees with it.

What a client loses in a bus outage: the records producers could not
publish while Redis was unreachable (their publish fails: the Publisher
raises BusError, a feed process counts and logs them), and nothing else. A
Redis restarted without persistence also forgets the hash: snapshots of
state keys that have not been published since come back with their next
update.
"""
from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tickcast.bus.base import BusError
from tickcast.bus.record import Record, pack
from tickcast.bus.tail import BLOCK_MS, Tail, TailError

PREFIX = "tickcast"
MAXLEN = 100_000          # stream entries kept (approximately): a node away longer misses the excess
# KEYS: the stream, the latest records, the sequences. ARGV: the message,
# MAXLEN, the number of records, each record's topic ("" for none), then
# field and value of each latest record.
SEND = """
local epoch = redis.call('HGET', KEYS[3], '')
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[3], '', epoch)
end
local n = tonumber(ARGV[3])
local positions = {epoch}
for i = 1, n do
  local topic = ARGV[3 + i]
  if topic == '' then
    positions[i + 1] = '0'
  else
    positions[i + 1] = tostring(redis.call('HINCRBY', KEYS[3], topic, 1))
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'u', ARGV[1], 'p', table.concat(positions, ' '))
for j = 4 + n, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[j], ARGV[j + 1])
end
return 1
"""
BATCH = 1000              # entries one read takes
PAST_SECONDS = 60         # read back when a node starts, for its clients' resumes (history.KEEP_SECONDS)
BACKOFF = (0.1, 2.0)      # first and longest wait between reconnection attempts, seconds


class RedisBus:
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url = url
        self.tail: Tail | None = None      # the stream read now
        self.reconnects = 0
        self.stream = f"{prefix}:updates"
        self.latest = f"{prefix}:latest"
        self.sequences = f"{prefix}:seq"
        try:
            self.client = aioredis.Redis.from_url(url, socket_timeout=BLOCK_MS / 1000 + 4,
                                                  socket_connect_timeout=2)
        except ValueError as exc:
            raise ValueError(f"bad bus URL {url!r}: {exc}") from None
        self._send = self.client.register_script(SEND)      # EVALSHA, loaded again if Redis forgot it

    async def connect(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise BusError(f"cannot reach the bus at {self.url}: {exc}") from None

    async def send(self, records: list[Record]) -> None:
        latest = [x for h, p, keep, _ in records if keep for x in (h, p)]
        try:
            await self._send(keys=[self.stream, self.latest, self.sequences],
                             args=[pack(records), MAXLEN, len(records), *(t for _, _, _, t in records), *latest])
        except (RedisError, OSError) as exc:
            raise BusError(f"the bus at {self.url} did not take {len(records)} records: {exc}") from None

    async def consume(self, on_latest, on_message, on_state, on_past=None) -> None:
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
                    end = end[0][0] if end else b"0-0"
                    if on_past is not None and end != b"0-0":
                        await self._past(end, on_past)
                    last = end
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

    async def _past(self, end: bytes, on_past) -> None:
        """The entries of the last PAST_SECONDS up to ``end``, in batches."""
        start = b"%d-0" % (int(time.time() * 1000) - int(PAST_SECONDS * 1000))
        while True:
            entries = await self.client.xrange(self.stream, start, end, count=BATCH)
            for _, fields in entries:
                if b"u" in fields:
                    on_past(fields[b"u"], fields.get(b"p"))
            if len(entries) < BATCH:
                return
            start = b"(" + entries[-1][0]

    @property
    def lag(self) -> float:
        """Seconds: how old the last message read was when it was read."""
        return self.tail.lag if self.tail is not None else 0.0

    async def close(self) -> None:
        await self.client.aclose()
