"""What metrics cost the fan-out: the flood with the admin port on and
scraped every second, against no admin port.

    python benchmarks/metrics.py            # about 1 minute
    python benchmarks/metrics.py --quick

The hub counts always (per topic, two increments in C per publish; bytes and
flush durations per flush), so "on" adds the admin port and the scrapes
(each walks the connections and the topics once). Runs interleaved; the
server on core 0, the compiled load generator (and the scraper) on core 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402


async def scraper(port: int, stop: asyncio.Event, sizes: list) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            sizes.append(len(await reader.read()))
            writer.close()
        except OSError:
            pass                    # not listening yet
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    harness.raise_nofile()
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    rows = []
    for clients in ((100,) if args.quick else (100, 1000)):
        print(f"flood, one topic, {clients} clients", flush=True)
        for _ in range(1 if args.quick else 3):
            for on in (False, True):
                stop, sizes = asyncio.Event(), []
                extra, task = (), None
                if on:
                    port = harness.free_port()
                    extra = ("--admin-port", str(port))
                    task = asyncio.create_task(scraper(port, stop, sizes))
                r = await harness.fanout("tickcast", clients, seconds=2 if args.quick else 6,
                                         warmup=1 if args.quick else 2, extra=extra)
                stop.set()
                if task is not None:
                    await task
                r.update(metrics=on, scrapes=len(sizes), scrape_bytes=max(sizes, default=0))
                rows.append(r)
                print(f"  metrics {'on ' if on else 'off'}  delivered {r['delivered_per_s']:>9,}/s  server cpu "
                      f"{r['server_cpu']:.2f} ({r['server_cpu_s_per_million']} s per million)  p99 "
                      f"{r['latency_us'].get('p99')} µs  scrapes {len(sizes)}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
