"""A mix of readers too slow for the rate, on a state channel: what they cost
the others, and whether anybody is closed.

    python benchmarks/slow_readers.py [--repeats 3] [--seconds 15]

tickcast with the bench feed in-process publishing quotes (a state channel)
on one symbol, ``--rate`` updates/s of ``--size`` bytes, to ``--clients``
clients: all fast (the compiled load generator reading at full speed), or
a fifth of them slow (a second load generator that pauses half a second
between its rounds of reads: at most 2 MiB a second a connection, half the
default rate's 4 MB). Per run: connections closed among the fast and the slow, the fast
readers' publish-to-receive p50/p99, the server's RSS at the end and the
updates conflated (held for a reader behind, /metrics). Runs interleaved,
medians with their range. Writes benchmarks/latest/slow_readers.json (--out).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
from pathlib import Path

import harness
from clients import LoadGen, percentiles



def conflated(admin: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    found = [line.split()[1] for line in text.splitlines() if line.startswith("tickcast_conflated_total")]
    return int(float(found[0])) if found else 0          # (a version before conflation: none)


async def run(mix: bool, args) -> dict:
    admin = harness.free_port()
    clients = args.clients
    server = harness.Server("tickcast", clients, rate=args.rate, batch=10, size=args.size, symbols=1,
                            channels="quotes", extra=("--admin-port", str(admin)))
    lines = [(server.path(i), harness.subscribe_message(t))
             for i, t in enumerate(harness.topics_plan(clients, 1, "quotes", 1))]
    fast_n = clients - clients // 5 if mix else clients
    gens = [LoadGen(server.port, lines[:fast_n], subscribe_on_open=True, cores=str(harness.CLIENT_CORE))]
    if mix:
        gens.append(LoadGen(server.port, lines[fast_n:], subscribe_on_open=True, cores=str(harness.CLIENT_CORE),
                            pause_us=500_000))
    try:
        for g in gens:
            opened = g.connected()
            if opened["failed"]:
                raise RuntimeError(f"{opened['failed']} connections failed")
        await asyncio.sleep(3)
        for g in gens:
            g.command("reset")
        await asyncio.sleep(args.seconds)
        reports = [g.report() for g in gens]
        return {"mix": mix, "rate": args.rate, "size": args.size, "fast": fast_n, "slow": clients - fast_n,
                "fast_closed": reports[0]["disconnected"], "slow_closed": reports[1]["disconnected"] if mix else 0,
                "fast_latency_us": percentiles(reports[0]["samples_us"]),
                "fast_delivered_per_s": round(reports[0]["frames"] / reports[0]["wall"]),
                "slow_delivered_per_s": round(reports[1]["frames"] / reports[1]["wall"]) if mix else 0,
                "rss_mib": round(server.rss() / 2 ** 20, 1), "conflated": conflated(admin),
                "fast_lost": reports[0]["lost"]}
    finally:
        for g in gens:
            g.close()
        server.stop()


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for mix in (False, True):
        mine = [r for r in rows if r["mix"] == mix]
        if not mine:
            continue
        row = {"mix": mix, "runs": len(mine), "fast_closed": sum(r["fast_closed"] for r in mine),
               "slow_closed": sum(r["slow_closed"] for r in mine), "fast_lost": sum(r["fast_lost"] for r in mine)}
        for name, values in (("fast_p50_us", [r["fast_latency_us"]["p50"] for r in mine]),
                             ("fast_p99_us", [r["fast_latency_us"]["p99"] for r in mine]),
                             ("rss_mib", [r["rss_mib"] for r in mine]),
                             ("conflated", [r["conflated"] for r in mine]),
                             ("slow_delivered_per_s", [r["slow_delivered_per_s"] for r in mine])):
            row[name] = harness.spread(values)
        out.append(row)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rate", type=int, default=1000, help="updates a second (each reaches every client)")
    ap.add_argument("--size", type=int, default=4000, help="bytes an update")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--out", default=str(Path(__file__).parent / "latest" / "slow_readers.json"))
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeats):
        for mix in (False, True):
            row = await run(mix, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"rows": rows, "summary": summary(rows)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    asyncio.run(main())
