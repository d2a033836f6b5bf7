"""What TLS costs the fan-out: the flood and the fixed-rate latency, wss:// against ws://.

    python benchmarks/tls.py            # about 2 minutes
    python benchmarks/tls.py --quick

Under TLS every flush is one TLS write of the connection's whole outbox
through the transport (the hub cannot send on the socket itself), so the
fan-out stays corked: a tick's frames go out in one record (or a few, past
16 KiB), not one per frame. The same workloads as benchmarks/run.py, the
server on core 0 and the compiled load generator on core 1; plain and TLS
runs interleaved. First, with perf: frames per write system call in a
flood of ticks of 10 updates, plain and TLS.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

WORKLOADS = [
    ("flood, one topic, 100 clients", dict(clients=100, seconds=6)),
    ("flood, one topic, 1,000 clients", dict(clients=1000, seconds=6)),
    ("fixed rate: 1,000/s to each of 100 clients", dict(clients=100, rate=1000, batch=1, seconds=6)),
    ("fixed rate: 100/s to each of 1,000 clients", dict(clients=1000, rate=100, batch=1, seconds=6)),
]


async def corking(tls: bool, seconds: float = 3) -> dict:
    """Frames delivered per write system call of the server, in a flood of
    ticks of 10 updates to 100 clients (perf's syscall tracepoints)."""
    Sink = harness.load_sink()
    server = harness.Server("tickcast", 100, rate=0, batch=10, tls=tls)
    try:
        sinks, transports = await harness.connect(
            server, 100, lambda: Sink(harness.subscribe_message([("trades", "BENCH0/USDT")])))
        for sink in sinks:
            sink.start()
        await asyncio.sleep(1.5)
        for sink in sinks:
            sink.reset()
        events = ",".join(f"syscalls:sys_enter_{c}" for c in ("write", "writev", "sendto", "sendmsg"))
        perf = await asyncio.create_subprocess_exec(
            "perf", "stat", "-x,", "-e", events, "-p", str(server.proc.pid), "--", "sleep", str(seconds),
            stderr=asyncio.subprocess.PIPE)
        _, err = await perf.communicate()
        frames = sum(sink.frames for sink in sinks)
        calls = sum(int(line.split(",")[0]) for line in err.decode().splitlines() if line[:1].isdigit())
        await harness.close_all(transports)
    finally:
        server.stop()
    return {"workload": "corking", "tls": tls, "frames": frames, "write_calls": calls,
            "frames_per_call": round(frames / calls, 1) if calls else None}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    harness.raise_nofile()
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    rows = []
    if shutil.which("perf"):
        print("corking: frames per write system call (ticks of 10 updates, 100 clients)", flush=True)
        for tls in (False, True):
            r = await corking(tls)
            rows.append(r)
            print(f"  {'wss' if tls else 'ws '}  {r['frames']:,} frames in {r['write_calls']:,} calls: "
                  f"{r['frames_per_call']} frames per call", flush=True)
    workloads = WORKLOADS[::2] if args.quick else WORKLOADS
    for name, params in workloads:
        print(name, flush=True)
        for _ in range(1 if args.quick else args.repeat):
            for tls in (False, True):
                if args.quick:
                    params = {**params, "seconds": 2, "warmup": 1}
                r = await harness.fanout("tickcast", tls=tls, **params)
                r["workload"], r["tls"] = name, tls
                rows.append(r)
                lat = r["latency_us"]
                print(f"  {'wss' if tls else 'ws '}  delivered {r['delivered_per_s']:>9,}/s  server cpu "
                      f"{r['server_cpu']:.2f} ({r['server_cpu_s_per_million']} s per million)  p50 "
                      f"{lat.get('p50')} µs  p99 {lat.get('p99')} µs  lost {r['lost']}  client cpu "
                      f"{r['client_cpu']:.2f}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
