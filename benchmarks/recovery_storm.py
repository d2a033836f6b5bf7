"""A node killed with -9 and its clients resuming on another: how long until
they are all live again, and what it costs.

    python benchmarks/recovery_storm.py [--clients 10000] [--rate 500] [--away 2]

Two nodes on a private Redis, the bench feed publishing trades on 100
symbols through it. ``--clients`` connections on node A, with sequence
numbers, one symbol each. A is killed with -9; ``--away`` seconds later
(the feed going on) every client connects to node B naming the position it
had when A died (read off Redis's counters at that moment) and resumes.
Reported: seconds until every client is subscribed again with what it
missed sent, node B's and Redis's CPU seconds over that storm, whether each
subscription was recovered, and the loss or reordering the clients saw
from the resume on (numbers per topic: 0 means each update once, in order).
Writes benchmarks/latest/recovery_storm.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import urllib.request
from pathlib import Path

import redis

import harness
from clients import LoadGen

SYMBOLS = 100


def cpu(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--rate", type=float, default=500, help="updates a second, over all symbols")
    ap.add_argument("--away", type=float, default=2.0)
    args = ap.parse_args()
    bus = harness.PrivateRedis()
    a = harness.Server("tickcast", args.clients, rate=args.rate, batch=1, symbols=SYMBOLS, channels="trades",
                       bus=bus.url)
    admin = harness.free_port()
    b = harness.Server("tickcast", args.clients, bus=bus.url, keys=(str(a.tmp / "keys.sqlite3"), a.keys),
                       extra=("--admin-port", str(admin)))
    b.feed.kill()                        # one feed: A's
    b.feed.wait()
    b.feed = None
    r = redis.Redis(port=int(bus.url.rsplit(":", 1)[1].split("/")[0]))
    plan = harness.topics_plan(args.clients, SYMBOLS, "trades", 0)      # client i: symbol i % 100
    gens = []
    try:
        gens.append(LoadGen(a.port, [(a.path(i) + "&seq=1", harness.subscribe_message(t))
                                     for i, t in enumerate(plan)], subscribe_on_open=True,
                            cores=str(harness.CLIENT_CORE)))
        if gens[0].connected()["failed"]:
            raise RuntimeError("connections to A failed")
        await asyncio.sleep(3)
        a.proc.kill()                    # -9
        a.proc.wait()
        epoch = r.hget("tickcast:seq", "").decode()
        positions = {f"BENCH{k}/USDT": int(r.hget("tickcast:seq", f"trades\x00BENCH{k}/USDT") or 0)
                     for k in range(SYMBOLS)}
        gens.pop().close()
        await asyncio.sleep(args.away)

        def resume(topics) -> bytes:
            (channel, symbol), = topics
            return json.dumps({"action": "subscribe", "channels": [
                {"type": channel, "symbols": [symbol],
                 "since": {symbol: {"seq": positions[symbol], "epoch": epoch}}}]}).encode()
        lines = [(b.path(i) + "&seq=1", resume(t)) for i, t in enumerate(plan)]
        node0, redis0, t0 = cpu(b.proc.pid), cpu(bus.proc.pid), time.monotonic()
        gens.append(LoadGen(b.port, lines, subscribe_on_open=True, cores=str(harness.CLIENT_CORE)))
        opened = gens[0].connected()
        live = time.monotonic() - t0
        node1, redis1 = cpu(b.proc.pid), cpu(bus.proc.pid)
        gens[0].command("reset")
        await asyncio.sleep(3)
        report = gens[0].report()
        log = (b.tmp / "server.log").read_text()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
        resumes = {line.split('"')[1]: int(float(line.split()[-1])) for line in metrics.splitlines()
                   if line.startswith("tickcast_resumes_total{")}
        result = {"clients": args.clients, "connected": opened["connected"], "failed": opened["failed"],
                  "seconds_until_all_live": round(live, 2),
                  "node_cpu_s": round(node1 - node0, 2), "redis_cpu_s": round(redis1 - redis0, 2),
                  "node_cpu_us_per_client": round((node1 - node0) / args.clients * 1e6, 1),
                  "recovered": resumes.get("true", 0), "not_recovered": resumes.get("false", 0),
                  "missed_per_client": round(args.rate / SYMBOLS * args.away, 1),
                  "lost_after": report["lost"], "reordered_after": report["reordered"],
                  "frames_after": report["frames"], "errors_in_log": log.count("ERROR")}
    finally:
        for g in gens:
            g.close()
        for s in (a, b):
            s.stop()
        bus.stop()
    out = Path(__file__).parent / "latest" / "recovery_storm.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
