"""What sequence numbers cost the fan-out: server CPU per delivered update.

    python benchmarks/sequence.py [--repeats 3] [--seconds 5]

Three configurations of tickcast with its feed in-process (the bench feed):
- ``off``: --history-bytes 0 (no numbers kept, nothing spliced);
- ``plain``: the default (every update numbered and kept for resume),
  clients that do not ask for the numbers;
- ``seq``: the default, every client connected with ?seq=1.

Two loads: a flood of one topic to 1,000 clients (the feed as fast as the
clients read), and a market-shaped one: 2,000 topics (trades and quotes),
5,000 clients with 10 topics each drawn at random, updates spread with a
Zipf skew at a rate that makes about 40,000 deliveries a second. Per run:
server CPU seconds per million delivered updates, alone and with the
softirq time of the client's core (where the server's ACK work lands on a
2-core loopback), and any loss or reordering the clients saw. Runs are
interleaved; medians with their range. Writes benchmarks/latest/sequence.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import harness
from clients import LoadGen
from wide import CLIENT_CORE, plan, softirq_seconds

CONFIGS = {"off": (("--history-bytes", "0"), False), "plain": ((), False), "seq": ((), True)}


async def run(config: str, load: str, seconds: float) -> dict:
    extra, seq = CONFIGS[config]
    if load == "flood":
        clients, topics = 1000, None
        server = harness.Server("tickcast", clients, rate=0, batch=10, size=200, symbols=1, channels="trades",
                                extra=extra)
        lines = [(server.path(i), harness.subscribe_message(t))
                 for i, t in enumerate(harness.topics_plan(clients, 1, "trades", 1))]
    else:
        clients, topics, per_client = 5000, 2000, 10
        rate = round(40000 * topics / (clients * per_client), 1)
        server = harness.Server("tickcast", clients, rate=rate, batch=1, symbols=topics // 2,
                                channels="trades,quotes", zipf=1.0, extra=extra)
        lines = [(server.path(i), harness.subscribe_message(t))
                 for i, t in enumerate(plan(topics, clients, per_client, seed=topics))]
    if seq:
        lines = [(path + "&seq=1", sub) for path, sub in lines]
    gen = LoadGen(server.port, lines, concurrency=256, subscribe_on_open=True, cores=str(CLIENT_CORE))
    try:
        opened = gen.connected()
        if opened["failed"]:
            raise RuntimeError(f"{opened['failed']} of {clients} connections failed")
        if load == "flood":
            gen.command("start")
        await asyncio.sleep(2.5)
        gen.command("reset")
        c0, q0, t0 = harness.cpu_seconds(server.proc.pid), softirq_seconds(CLIENT_CORE), time.monotonic()
        await asyncio.sleep(seconds)
        r = gen.report()
        cpu, softirq = harness.cpu_seconds(server.proc.pid) - c0, softirq_seconds(CLIENT_CORE) - q0
        frames = r["frames"]
        return {"config": config, "load": load, "clients": clients, "topics": topics,
                "delivered_per_s": round(frames / r["wall"]),
                "cpu_s_per_million": round(cpu / frames * 1e6, 3),
                "cpu_with_softirq_s_per_million": round((cpu + softirq) / frames * 1e6, 3),
                "frame_bytes": round(r["bytes"] / frames), "lost": r["lost"], "reordered": r["reordered"],
                "wall": round(time.monotonic() - t0, 2)}
    finally:
        gen.close()
        server.stop()


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for load in ("flood", "market"):
        for config in CONFIGS:
            mine = [r for r in rows if r["load"] == load and r["config"] == config]
            if not mine:
                continue
            row = {"load": load, "config": config, "runs": len(mine)}
            for f in ("delivered_per_s", "cpu_s_per_million", "cpu_with_softirq_s_per_million", "frame_bytes"):
                row[f] = harness.spread(r[f] for r in mine)
            row["lost"] = sum(r["lost"] for r in mine)
            row["reordered"] = sum(r["reordered"] for r in mine)
            out.append(row)
    return out


def table(rows: list[dict]) -> str:
    def m(v):
        return harness.ranged(v, 2)
    lines = ["| load | config | delivered/s | CPU s per M | with client softirq | frame bytes | lost |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['load']} | {r['config']} | {r['delivered_per_s']['median']:,.0f} "
                     f"| {m(r['cpu_s_per_million'])} | {m(r['cpu_with_softirq_s_per_million'])} "
                     f"| {r['frame_bytes']['median']:.0f} | {r['lost']} |")
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--loads", nargs="+", default=["flood", "market"], choices=["flood", "market"])
    args = ap.parse_args()
    rows = []
    for i in range(args.repeats):
        for load in args.loads:
            for config in CONFIGS:
                row = await run(config, load, args.seconds)
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"rows": rows, "summary": summary(rows)}
    out = Path(__file__).parent / "latest" / "sequence.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result["summary"]))


if __name__ == "__main__":
    asyncio.run(main())
