"""A wide market: memory, delivery and churn at thousands of topics, side by side.

    python benchmarks/wide.py [--topics 300 20000] [--clients 19000] [--per-client 10]
                              [--deliveries 40000] [--zipf 1.0] [--seconds 10] [--churn 2000]
                              [--repeats 3] [--servers tickcast tickcast-embedded socketify]

T topics (half trades, half quotes: BENCH0/USDT ... on both), N connections
in one server process, each subscribed to K topics drawn at random (the same
seed for every server), and the bench feed publishing updates spread over
the topics with a Zipf skew (the same sequence for every server), at a rate
that makes about ``deliveries`` frames a second whatever T: the rate is
deliveries x T / (N x K), 4,211 updates/s at T=20,000 and 63 at T=300
with the defaults, so that CPU per delivered update compares like with
like (100,000 a second saturates both servers' core here). tickcast takes
its updates through the bus (a Redis this script starts on a port of its
own; the feed runs as `tickcast feed`); tickcast-embedded runs the same
feed in its own process, as socketify publishes in its own (its peer
script): the latency that compares the servers alone. Runs are
interleaved: each repeat runs every T for every server in turn. Per run:

- memory: the server's RSS once every connection is subscribed and the feed
  has run ``warmup`` seconds, less its RSS before the first connection, per
  connection (tickcast's includes the latest state it keeps of every quotes
  topic published, for snapshots);
- delivery: server CPU per million delivered updates over ``seconds``, and
  the same with the softirq time of the client's core added (where the
  server's sockets' ACK work lands on a 2-core loopback); the clients'
  publish-to-receive p99 and any loss;
- churn: with the feed paused, ``churn`` of the N connections close and as
  many open and subscribe to K new random topics each, three times: server
  CPU per cycle (disconnect, connect, upgrade, subscribe; CPU time in clock
  ticks of 10 ms, 5 µs a cycle over the default 2,000).

Reports medians with their range; writes benchmarks/latest/wide.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import time
from pathlib import Path

import harness
from clients import LoadGen, percentiles

CLIENT_CORE = harness.CLIENT_CORE
CHURN_CYCLES = 3


def softirq_seconds(core: int) -> float:
    """Time a core has spent in softirq (/proc/stat), in seconds."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return int(line.split()[7]) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def plan(topics: int, clients: int, per_client: int, seed: int) -> list[list[tuple[str, str]]]:
    """Each client's K topics, drawn from the feed's streams (symbol i on trades and quotes)."""
    streams = [(c, f"BENCH{i}/USDT") for i in range(topics // 2) for c in ("trades", "quotes")]
    rng = random.Random(seed)
    return [[streams[k] for k in rng.sample(range(len(streams)), per_client)] for _ in range(clients)]


def pause_feed(server: harness.Server, paused: bool) -> None:
    """Stop or resume the updates: tickcast's feed is a process of its own
    (SIGSTOP), a peer's publisher pauses on SIGUSR1 and resumes on SIGUSR2."""
    if server.feed is not None:
        os.kill(server.feed.pid, signal.SIGSTOP if paused else signal.SIGCONT)
    else:
        os.kill(server.proc.pid, signal.SIGUSR1 if paused else signal.SIGUSR2)


async def run(kind: str, topics: int, args, bus: harness.PrivateRedis) -> dict:
    if kind == "tickcast":
        bus.flush()
    rate = round(args.deliveries * topics / (args.clients * args.per_client), 1)
    server = harness.Server(kind.removesuffix("-embedded"), args.clients, rate=rate, batch=1,
                            symbols=topics // 2, channels="trades,quotes", zipf=args.zipf,
                            bus=bus.url if kind == "tickcast" else None)
    subs = plan(topics, args.clients, args.per_client, seed=topics)
    lines = [(server.path(i), harness.subscribe_message(t)) for i, t in enumerate(subs)]
    steady = args.clients - args.churn           # the last ``churn`` clients are the ones that churn

    def clients(part: list) -> LoadGen:
        return LoadGen(server.port, part, concurrency=256, subscribe_on_open=True, cores=str(CLIENT_CORE))

    gens = []
    try:
        await asyncio.sleep(1)
        before = server.rss()
        gens = [clients(lines[:steady]), clients(lines[steady:])]
        opened = [g.connected() for g in gens]
        connected = sum(o["connected"] for o in opened)
        if any(o["failed"] for o in opened):
            raise RuntimeError(f"{kind}: {sum(o['failed'] for o in opened)} of {args.clients} connections failed")
        await asyncio.sleep(args.warmup)
        after = server.rss()

        for g in gens:
            g.command("reset")
        c0, q0, t0 = harness.cpu_seconds(server.proc.pid), softirq_seconds(CLIENT_CORE), time.monotonic()
        await asyncio.sleep(args.seconds)
        reports = [g.report() for g in gens]
        cpu, softirq = harness.cpu_seconds(server.proc.pid) - c0, softirq_seconds(CLIENT_CORE) - q0
        wall = time.monotonic() - t0
        frames = sum(r["frames"] for r in reports)
        measured = max(r["wall"] for r in reports)

        # Churn: the last clients leave and as many come back with new
        # subscriptions, with the feed paused so that only that is counted
        # (an embedded feed cannot pause: no churn there).
        churn = kind != "tickcast-embedded"
        if churn:
            pause_feed(server, True)
            await asyncio.sleep(0.5)
        churn_us = []
        for cycle in range(CHURN_CYCLES if churn else 0):
            fresh = plan(topics, args.churn, args.per_client, seed=topics * 1000 + cycle)
            c0 = harness.cpu_seconds(server.proc.pid)
            gens.pop().close()                   # returns once the server has let every one go
            gens.append(clients([(server.path(steady + i), harness.subscribe_message(t))
                                 for i, t in enumerate(fresh)]))
            done = gens[-1].connected()
            churn_us.append((harness.cpu_seconds(server.proc.pid) - c0) / max(1, done["connected"]) * 1e6)
            if done["failed"]:
                raise RuntimeError(f"{kind}: {done['failed']} churn connections failed")
        if churn:
            pause_feed(server, False)
        return {
            "server": kind, "topics": topics, "clients": connected, "rate": rate,
            "rss_mib_before": round(before / 2 ** 20, 1), "rss_mib": round(after / 2 ** 20, 1),
            "bytes_per_connection": round((after - before) / connected),
            "delivered_per_s": round(frames / measured),
            "server_cpu": round(cpu / wall, 3),
            "cpu_s_per_million": round(cpu / frames * 1e6, 3) if frames else None,
            "cpu_with_softirq_s_per_million": round((cpu + softirq) / frames * 1e6, 3) if frames else None,
            "latency_us": percentiles([x for r in reports for x in r["samples_us"]]),
            "lost": sum(r["lost"] for r in reports), "reordered": sum(r["reordered"] for r in reports),
            "disconnected": sum(r["disconnected"] for r in reports),
            "churn_cpu_us_per_cycle": round(statistics.median(churn_us), 1) if churn_us else None,
        }
    finally:
        for g in gens:
            g.close()
        server.stop()


def summary(rows: list[dict]) -> list[dict]:
    """Per server and T: the median of each figure, with its range."""
    out = []
    for kind, topics in sorted({(r["server"], r["topics"]) for r in rows}, key=lambda k: (k[1], k[0])):
        mine = [r for r in rows if r["server"] == kind and r["topics"] == topics]
        row = {"server": kind, "topics": topics, "runs": len(mine)}
        for f in ("bytes_per_connection", "cpu_s_per_million", "cpu_with_softirq_s_per_million",
                  "churn_cpu_us_per_cycle", "delivered_per_s"):
            row[f] = harness.spread(r[f] for r in mine)
        row["p99_us"] = statistics.median(r["latency_us"].get("p99", 0) for r in mine)
        row["lost"] = sum(r["lost"] for r in mine)
        row["disconnected"] = sum(r["disconnected"] for r in mine)
        out.append(row)
    return out


def show(table: list[dict]) -> str:
    m = harness.ranged
    lines = ["| server | topics | B per connection | CPU s per M delivered | with client softirq "
             "| churn µs per cycle | p99 µs | lost |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['server']} | {r['topics']:,} | {m(r['bytes_per_connection'])} "
                     f"| {m(r['cpu_s_per_million'], 2)} | {m(r['cpu_with_softirq_s_per_million'], 2)} "
                     f"| {m(r['churn_cpu_us_per_cycle'], 1)} | {r['p99_us']:,.0f} | {r['lost']} |")
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, nargs="+", default=[300, 20000])
    ap.add_argument("--clients", type=int, default=19000)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--deliveries", type=float, default=40_000,
                    help="frames a second to aim at, whatever T (100,000 saturates both servers' core here)")
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--churn", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--servers", nargs="+", default=["tickcast", "tickcast-embedded", "socketify"])
    ap.add_argument("--out", default=str(harness.HERE / "latest" / "wide.json"))
    args = ap.parse_args()
    bus = harness.PrivateRedis()
    rows = []
    try:
        for rep in range(args.repeats):
            for topics in args.topics:
                for kind in args.servers:
                    row = await run(kind, topics, args, bus)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    finally:
        bus.stop()
    table = summary(rows)
    print(show(table))
    Path(args.out).write_text(json.dumps({"args": vars(args), "summary": table, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    asyncio.run(main())
