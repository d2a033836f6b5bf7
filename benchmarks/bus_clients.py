"""Which Redis client reads the bus fastest: the CPU a node spends reading
2,000 stream entries of 100 trades each (XREAD COUNT 100, then the split
into records), with redis-py and hiredis (what tickcast uses), redis-py's
own parser, and coredis if it is installed. Database 13, flushed.

    python benchmarks/bus_clients.py
"""
import asyncio
import resource
import time

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

from tickcast.bus.record import marketai_record, pack
from tickcast.feeds.bench import trade

KEY = "tickcast:updates"
ENTRIES = 2000
URL = "redis://127.0.0.1:6379/13"


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def fill():
    r = aioredis.Redis.from_url(URL); await r.flushdb()
    msg = pack([marketai_record("trades", f"B{i%50}/USDT", trade(f"B{i%50}/USDT", i, time.time_ns(), "")) for i in range(100)])
    p = r.pipeline(transaction=False)
    for _ in range(ENTRIES): p.xadd(KEY, {b"u": msg})
    await p.execute(); await r.aclose(); return len(msg)
async def redispy(parser):
    r = aioredis.Redis.from_url(URL, parser_class=parser)
    last = b"0-0"; n = 0; c0 = cpu(); t0 = time.perf_counter()
    while True:
        rep = await r.xread({KEY: last}, count=100)
        if not rep: break
        for _, entries in rep:
            for eid, fields in entries: last = eid; n += 1; fields[b"u"].split(b"\n")
    dt, dc = time.perf_counter() - t0, cpu() - c0
    await r.aclose(); return n, dt, dc
async def core():
    import coredis
    r = coredis.Redis.from_url(URL, decode_responses=False)
    async with r:
        last = "0-0"; n = 0; c0 = cpu(); t0 = time.perf_counter()
        while True:
            rep = await r.xread({KEY: last}, count=100)
            if not rep: break
            for _, entries in rep.items():
                for e in entries: last = e.identifier; n += 1; e.field_values[b"u"].split(b"\n")
        return n, time.perf_counter() - t0, cpu() - c0
async def main():
    size = await fill()
    print(f"{ENTRIES} entries of 100 records ({size} bytes each)")
    for name, fn in [("redis-py + hiredis", lambda: redispy(_AsyncHiredisParser)), ("redis-py, Python parser", lambda: redispy(_AsyncRESP2Parser)), ("coredis", core)] * 2:
        try:
            n, dt, dc = await fn()
            print(f"  {name:<26} {n} entries, {dt*1000:.0f} ms wall, {dc*1000:.0f} ms CPU: {dc/n/100*1e9:.0f} ns CPU per record")
        except ImportError:
            print(f"  {name:<26} not installed")
    r = aioredis.Redis.from_url(URL); await r.flushdb(); await r.aclose()
asyncio.run(main())
