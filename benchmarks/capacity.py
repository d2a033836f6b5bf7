"""How many connections this box holds: 100,000 by default, each
authenticated and subscribed, with a market-shaped trickle flowing to all.

    python benchmarks/capacity.py [--clients 100000] [--workers 6] [--seconds 10]
                                  [--topics 300] [--per-client 1]

One process may hold 20,000 descriptors here, so the server runs --workers N
(SO_REUSEPORT spreads the connections) fed by the bus (Redis; the bench feed
runs as `tickcast feed`), and the compiled load generator runs as several
processes (15,000 connections each). Each client subscribes to one topic of
300 (100 symbols x trades, quotes, book) as soon as it is upgraded; the feed
publishes 150 updates/s over those topics, about one update every 2 s per
client. A wide market: ``--topics 20000 --per-client 10`` (6,666 symbols on
the three channels, ten topics a client drawn at random). Reports the connection rate, the
server's total memory (every worker) and per connection, deliveries, loss and
latency. Writes benchmarks/latest/capacity.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import harness
from clients import LoadGen


async def capacity(clients: int, workers: int, seconds: float, rate: float, bus: str,
                   topics: int = 300, per_client: int = 1) -> dict:
    import random

    import redis
    redis.Redis.from_url(bus).flushdb()
    channels = ("trades", "quotes", "book")
    symbols = topics // 3
    server = harness.Server("tickcast", clients, rate=rate, batch=1, symbols=symbols, channels=",".join(channels),
                            bus=bus, extra=("--workers", str(workers), "--max-connections", "19000"), cores="0,1")
    if per_client == 1:
        topics = [[(channels[i % 3], f"BENCH{i // 3 % symbols}/USDT")] for i in range(clients)]
    else:
        rng = random.Random(topics)
        streams = [(c, f"BENCH{s}/USDT") for s in range(symbols) for c in channels]
        topics = [[streams[k] for k in rng.sample(range(len(streams)), per_client)] for _ in range(clients)]
    plan = [(server.path(i), harness.subscribe_message(t)) for i, t in enumerate(topics)]
    try:
        before = server.rss()
        gen = LoadGen(server.port, plan, concurrency=512, subscribe_on_open=True, cores="0,1")
        try:
            opened = gen.connected()
            await asyncio.sleep(3)
            after = server.rss()
            gen.command("reset")
            s0, t0 = harness.cpu_seconds(server.proc.pid), time.monotonic()
            await asyncio.sleep(seconds)
            r = gen.report()
            s1, wall = harness.cpu_seconds(server.proc.pid), time.monotonic() - t0
            client_cpu = r["cpu"] / wall
        finally:
            gen.close()
        return {
            "clients": clients, "workers": workers, "topics": symbols * 3, "per_client": per_client, "connected": opened["connected"], "failed": opened["failed"],
            "connect_seconds": round(opened["seconds"], 2),
            "connections_per_s": round(opened["connected"] / opened["seconds"]),
            "server_rss_mib_before": round(before / 2 ** 20, 1), "server_rss_mib": round(after / 2 ** 20, 1),
            "rss_per_connection_bytes": round((after - before) / max(1, opened["connected"])),
            "delivered_per_s": round(r["frames"] / r["wall"]), "lost": r["lost"], "reordered": r["reordered"],
            "disconnected": r["disconnected"], "latency_us": r["latency_us"],
            "server_cpu_cores": round((s1 - s0) / wall, 3), "load_generator_cpu_cores": round(client_cpu, 3),
        }
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=150, help="updates/s the feed publishes")
    ap.add_argument("--bus", default=None, help="a Redis database this may empty (default: a redis-server "
                                                "of its own, on a free port)")
    ap.add_argument("--topics", type=int, default=300, help="topics: a third each on trades, quotes and book")
    ap.add_argument("--per-client", type=int, default=1, help="random topics each client subscribes to")
    ap.add_argument("--out", default=str(Path(__file__).parent / "latest" / "capacity.json"))
    args = ap.parse_args()
    harness.raise_nofile()
    private = harness.PrivateRedis() if args.bus is None else None
    try:
        result = asyncio.run(capacity(args.clients, args.workers, args.seconds, args.rate,
                                      args.bus or private.url, args.topics, args.per_client))
    finally:
        if private is not None:
            private.stop()
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    if result["connected"] < args.clients:
        print(f"only {result['connected']:,} of {args.clients:,} connected", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
