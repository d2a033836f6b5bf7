"""What the Redis bus costs a node, beside the same load from an embedded feed.

    python benchmarks/bus.py            # about 4 minutes; Redis at 127.0.0.1:6379 (database 15, flushed)
    python benchmarks/bus.py --quick    # CI's smoke

50 clients, one per topic (BENCH0/USDT ... BENCH49/USDT, trades), on one
node pinned to core 0. Embedded: the node runs the bench feed itself. Bus:
`tickcast feed --feed bench` runs on core 1 (with the load generator) and
publishes into Redis; the node reads it. Every update is stamped with
pub_ns where it is made, so the latency through the bus includes Redis.

1. Latency at 10,000 updates/s: producer-to-client percentiles.
2. What consuming costs: a node with no clients, its CPU per update, fed
   by the bus or by its own bench feed, at rates and message sizes (the
   bench feed publishes BATCH updates per event-loop tick, and the bus
   carries each tick's updates as one message). Without clients this is
   the bus's part alone: the read, the intake, Hub.publish to nobody.
3. Fan-in: the node's CPU-seconds per update consumed (each update reaches
   one client), at rising rates, and whether it kept up.
4. Workers: the market-shaped load (50 symbols x trades, quotes, book,
   50,000 updates/s in; 100, then 300 clients on 5 symbols x 2 channels each) through
   the bus to `--workers 1` and `--workers 2` (both cores: on this 2-core
   machine the workers share them with the load generator and the feed):
   server CPU-seconds per million deliveries, and p99.
Targets: the bus adds under 1 ms at p99 at 10,000 updates/s, and costs the
node under 2 µs of CPU per update consumed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

BUS = "redis://127.0.0.1:6379/15"


def flush() -> None:
    import redis
    redis.Redis.from_url(BUS).flushdb()


async def one(mode: str, rate: int, seconds: float) -> dict:
    flush()
    r = await harness.fanout("tickcast", 50, rate=rate, batch=max(1, rate // 1000), symbols=50,
                             topics_per_client=0, seconds=seconds, warmup=1.5, keep_samples=False,
                             bus=BUS if mode == "bus" else None)
    per_update = r["server_cpu"] / r["delivered_per_s"] * 1e6 if r["delivered_per_s"] else None
    row = {"mode": mode, "rate": rate, "delivered_per_s": r["delivered_per_s"],
           "kept_up": r["delivered_per_s"] >= 0.97 * rate, "server_cpu": r["server_cpu"],
           "node_cpu_us_per_update": round(per_update, 2) if per_update else None,
           "latency_us": r["latency_us"], "lost": r["lost"], "reordered": r["reordered"]}
    lat = r["latency_us"]
    print(f"  {mode:<8} {rate:>7,}/s  delivered {r['delivered_per_s']:>7,}/s  node cpu {r['server_cpu']:.2f} "
          f"({row['node_cpu_us_per_update']} µs/update)  p50 {lat.get('p50')} µs  p99 {lat.get('p99')} µs  "
          f"lost {r['lost']}", flush=True)
    return row


async def consuming(mode: str, rate: int, batch: int, seconds: float) -> dict:
    flush()
    server = harness.Server("tickcast", 0, rate=rate, batch=batch, symbols=50,
                            bus=BUS if mode == "bus" else None)
    try:
        await asyncio.sleep(1.5)
        c0, t0 = harness.cpu_seconds(server.proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = (harness.cpu_seconds(server.proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        server.stop()
    row = {"mode": mode, "rate": rate, "batch": batch, "clients": 0, "node_cpu": round(cpu, 3),
           "node_cpu_us_per_update": round(cpu / rate * 1e6, 2)}
    print(f"  {mode:<8} {rate:>7,}/s in messages of {batch:>3}  node cpu {cpu:.3f}  "
          f"({row['node_cpu_us_per_update']} µs/update)", flush=True)
    return row


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    harness.raise_nofile()
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    seconds = 2 if args.quick else 6
    rows = []
    print("1. 10,000 updates/s over 50 topics, one client each", flush=True)
    for mode in ("embedded", "bus"):
        rows.append(await one(mode, 10_000, seconds))
    print("2. consuming, no clients: bus against embedded", flush=True)
    for rate, batch in (((10_000, 10),) if args.quick else
                        ((10_000, 10), (10_000, 100), (50_000, 10), (50_000, 100), (150_000, 100))):
        for mode in ("embedded", "bus"):
            rows.append(await consuming(mode, rate, batch, seconds + 2))
    print("3. fan-in: rising rates", flush=True)
    for rate in ((50_000,) if args.quick else (50_000, 100_000, 150_000)):
        for mode in ("embedded", "bus"):
            rows.append(await one(mode, rate, seconds))
    print("4. market-shaped through the bus: --workers 1 and 2", flush=True)
    for clients in ((100,) if args.quick else (100, 300)):
        for workers in (1, 2):
            flush()
            r = await harness.fanout("tickcast", clients, rate=50_000, batch=10, symbols=50,
                                     channels="trades,quotes,book", topics_per_client=10, seconds=seconds,
                                     warmup=1.5, bus=BUS, extra=("--workers", str(workers)), cores="0,1")
            row = {"mode": f"bus, --workers {workers}", "clients": clients, "rate": 50_000,
                   "delivered_per_s": r["delivered_per_s"], "server_cpu": r["server_cpu"],
                   "server_cpu_s_per_million": r["server_cpu_s_per_million"],
                   "latency_us": r["latency_us"], "lost": r["lost"], "reordered": r["reordered"]}
            rows.append(row)
            print(f"  {clients} clients, --workers {workers}  delivered {r['delivered_per_s']:>9,}/s  "
                  f"server cpu {r['server_cpu']:.2f} ({r['server_cpu_s_per_million']} s per million)  "
                  f"p99 {r['latency_us'].get('p99')} µs  lost {r['lost']}", flush=True)
    flush()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
