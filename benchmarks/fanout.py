"""End-to-end fan-out measurement over loopback.

    python benchmarks/fanout.py flood --clients 1000 --seconds 10
    python benchmarks/fanout.py idle --clients 10000

flood: `tickcast serve --feed bench` on core 0; N clients subscribed to one
topic on core 1 (a picows client with Cython callbacks). Reports delivered
messages/s, server CPU-seconds per million deliveries, latency percentiles,
loss and reordering, and the client's own CPU use (near 100% means the client,
not the server, was the limit).
idle: RSS of the server per idle authenticated connection.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent


def load_sink():
    import pyximport
    pyximport.install(language_level=3, build_dir=str(HERE.parent / "build" / "pyxbld"))
    sys.path.insert(0, str(HERE))
    from _loadgen import Sink
    return Sink


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024


def start_server(keys: Path, *flags: str, core: int = 0):
    cmd = ["taskset", "-c", str(core), sys.executable, "-m", "tickcast", "serve", "--port", "0",
           "--keys", str(keys), "--no-test-key", *flags]
    log = open(keys.parent / "server.log", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, preexec_fn=raise_nofile)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"serving ws://[\d.]+:(\d+)/", keys.parent.joinpath("server.log").read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    raise RuntimeError("server did not start: " + keys.parent.joinpath("server.log").read_text())


def stop(proc, tmp: Path) -> None:
    if proc.poll() is not None:
        print(f"server exited early with {proc.returncode}:\n" + (tmp / "server.log").read_text(), file=sys.stderr)
    proc.terminate()
    try:
        proc.wait(30)      # the server drains each connection for up to --close-timeout
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_keys(path: Path, n: int) -> list[str]:
    from tickcast.auth import KeyStore
    store = KeyStore(path)
    keys = [store.add("max") for _ in range(max(1, math.ceil(n / 50)))]
    store.close()
    return keys


async def connect_all(n: int, port: int, keys: list[str], factory):
    from picows import ws_connect
    sinks, transports = [], []
    for start in range(0, n, 200):
        batch = []
        for i in range(start, min(n, start + 200)):
            sink = factory()
            sinks.append(sink)
            batch.append(ws_connect(lambda s=sink: s, f"ws://127.0.0.1:{port}/?key={keys[i // 50]}",
                                    read_buffer_init_size=256 * 1024, enable_auto_pong=True))
        for tr, _ in await asyncio.gather(*batch):
            transports.append(tr)
    return sinks, transports


def pct(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


async def flood(args) -> dict:
    Sink = load_sink()
    os.sched_setaffinity(0, {args.client_core})
    raise_nofile()
    tmp = Path(tempfile.mkdtemp())
    keys = make_keys(tmp / "keys.sqlite3", args.clients)
    proc, port = start_server(tmp / "keys.sqlite3", "--feed", "bench", "--bench-rate", str(args.rate),
                              "--bench-batch", str(args.batch), "--bench-size", str(args.size),
                              "--bench-symbols", "1", "--ping-interval", "600", "--ping-timeout", "60",
                              *args.server_flag, core=args.server_core)
    try:
        hello = json.dumps({"action": "subscribe", "channels": [{"type": "trades", "symbols": ["BENCH0/USDT"]}]}).encode()
        sinks, transports = await connect_all(args.clients, port, keys, lambda: Sink(hello))
        for s in sinks:
            s.start()
        await asyncio.sleep(args.warmup)
        for s in sinks:
            s.reset()
        s0, c0, t0 = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(args.seconds)
        s1, c1, t1 = cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        delivered = sum(s.frames for s in sinks)
        lat = [x for s in sinks for x in s.latencies]
        wall = t1 - t0
        result = {
            "workload": "flood" if args.rate == 0 else "fixed-rate", "clients": args.clients,
            "batch": args.batch, "size": args.size, "rate": args.rate, "seconds": round(wall, 2),
            "delivered_per_s": round(delivered / wall),
            "server_cpu": round((s1 - s0) / wall, 3),
            "server_cpu_s_per_million": round((s1 - s0) / delivered * 1e6, 3) if delivered else None,
            "client_cpu": round((c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / wall, 3),
            "latency_us": {f"p{q}": round(pct(lat, q) / 1000, 1) if lat else None for q in (50, 90, 99, 99.9)},
            "gaps": sum(s.gaps for s in sinks), "reorders": sum(s.reorders for s in sinks),
            "disconnected": sum(1 for s in sinks if s.close_code),
        }
        for tr in transports:
            tr.disconnect()
        return result
    finally:
        stop(proc, tmp)


async def idle(args) -> dict:
    Sink = load_sink()
    os.sched_setaffinity(0, {args.client_core})
    raise_nofile()
    tmp = Path(tempfile.mkdtemp())
    keys = make_keys(tmp / "keys.sqlite3", args.clients + 200)
    warm_keys = keys[-4:]
    proc, port = start_server(tmp / "keys.sqlite3", "--feed", "none", *args.server_flag, core=args.server_core)
    try:
        # Warm the interpreter's and allocator's steady state with a first batch.
        warm, trs = await connect_all(200, port, warm_keys, lambda: Sink(b""))
        for tr in trs:
            tr.disconnect()
        await asyncio.sleep(1)
        before = rss_bytes(proc.pid)
        sinks, transports = await connect_all(args.clients, port, keys, lambda: Sink(b""))
        await asyncio.sleep(2)
        after = rss_bytes(proc.pid)
        for tr in transports:
            tr.disconnect()
        return {"workload": "idle", "clients": args.clients, "rss_before_mib": round(before / 2**20, 1),
                "rss_after_mib": round(after / 2**20, 1),
                "rss_per_connection_bytes": round((after - before) / args.clients)}
    finally:
        stop(proc, tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["flood", "idle"])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--rate", type=float, default=0, help="updates/s published (0: flood)")
    ap.add_argument("--server-flag", action="append", default=[], help="extra flag for tickcast serve")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    args = ap.parse_args()
    import uvloop
    result = uvloop.run(flood(args) if args.mode == "flood" else idle(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
