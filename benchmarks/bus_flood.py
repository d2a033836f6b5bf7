"""A feed faster than the node: the bench feed flooding the bus, readers on
the compiled load generator reading as fast as they can.

    python benchmarks/bus_flood.py [--clients 10 30 1000] [--seconds 5]

`tickcast feed --feed bench --bench-rate 0` through a private Redis into one
node, trades on one symbol, ``--clients`` readers each run. Per run:
deliveries a second, readers closed, the gaps the readers saw (what the
node shed: the bench's own per-topic numbers) and the node's CPU. Run it
with a previous version installed to compare. Writes
benchmarks/latest/bus_flood.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import harness


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 30, 1000])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "latest" / "bus_flood.json"))
    args = ap.parse_args()
    rows = []
    for n in args.clients:
        bus = harness.PrivateRedis()
        try:
            r = await harness.fanout("tickcast", n, rate=0, batch=10, seconds=args.seconds, bus=bus.url)
        finally:
            bus.stop()
        row = {"clients": n, **{k: r.get(k) for k in ("delivered_per_s", "server_cpu", "disconnected", "lost",
                                                        "reordered")}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
