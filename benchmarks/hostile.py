"""What one hostile client costs the others (tickcast only; the peers have no
control plane to attack).

    python benchmarks/hostile.py            # about 1 minute
    python benchmarks/hostile.py --quick    # a few seconds each (CI's smoke)

1. Control messages: one connection of a free key sends its worst message
   at its full budget (rate 20/s, burst 40, one unit per 4 KiB started)
   while 20 other clients ping, each 15 times a second (inside their own
   budget); their round-trip percentiles, with no attacker first. Target: p99 under 10 ms for every attack.
2. Slow consumers: 20 clients that subscribe to 2,000 updates/s and never
   read, until the server closes them; its RSS before, at the peak, and
   once they are gone.

The server runs the simulated markets on core 0 (harness.Server); the
clients run in this process on core 1.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

TARGET_P99_MS = 10.0
BUDGET_RATE, BUDGET_BURST, UNIT = 20, 40, 4096
PINGERS, PING_INTERVAL = 20, 1 / 15


def names(n: int) -> list[str]:
    return [f"A{i}/B" for i in range(n)]


def fit(action: str, unit_bytes: int) -> str:
    """A subscribe or unsubscribe of as many distinct symbols as fit in
    ``unit_bytes`` (and the per-message bound of 1,000)."""
    n = 1000
    while True:
        msg = json.dumps({"action": action, "channels": [{"type": "quotes", "symbols": names(n)}]})
        if len(msg) < unit_bytes:
            return msg
        n -= 10


LONG = [f"{i:0>20}/{'Q' * 20}" for i in range(1000)]          # the longest well-formed symbols

ATTACKS = {
    # Per unit of budget, the most work a message can ask for.
    "subscribe, 4 KiB of symbols": lambda: fit("subscribe", UNIT),
    "unsubscribe, 4 KiB of symbols": lambda: fit("unsubscribe", UNIT),
    "subscribe, 1,000 symbols": lambda: fit("subscribe", 3 * UNIT),
    "unsubscribe, 1,000 symbols of 41 characters": lambda: json.dumps(
        {"action": "unsubscribe", "channels": [{"type": "quotes", "symbols": LONG}]}),
    "JSON nested 2,000 deep": lambda: "[" * 2000 + "]" * 2000,
    # The probe's message: 5,101 distinct symbols and a malformed one.
    "subscribe, 5,101 symbols + 1 malformed": lambda: json.dumps(
        {"action": "subscribe", "channels": [{"type": "quotes", "symbols": names(5101) + ["bad"]}]}),
}


async def pinger(url: str, seconds: float, rtts: list[float], delay: float) -> None:
    import websockets
    async with websockets.connect(url) as ws:
        await asyncio.sleep(delay)          # staggered, so pings do not all leave at once
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            await ws.send('{"action":"ping"}')
            while json.loads(await ws.recv()).get("type") != "pong":
                pass
            rtts.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(PING_INTERVAL)


async def attacker(url: str, message: str, seconds: float) -> dict:
    """Send ``message`` at the budget's full rate: a burst, then a steady
    pace. A server that drops the connection is connected to again."""
    import websockets
    cost = min(1 + len(message) // UNIT, BUDGET_BURST)
    sent = refused = dropped = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            async with websockets.connect(url, max_size=None) as ws:
                async def drain():
                    nonlocal refused
                    async for reply in ws:
                        refused += '"RATE_LIMITED"' in reply
                reader = asyncio.create_task(drain())
                for _ in range(BUDGET_BURST // cost):
                    await ws.send(message)
                    sent += 1
                interval = cost / (BUDGET_RATE * 0.98)        # just inside the budget
                while time.monotonic() < end:
                    await asyncio.sleep(interval)
                    await ws.send(message)
                    sent += 1
                await asyncio.sleep(0.2)
                reader.cancel()
        except (websockets.ConnectionClosed, OSError):
            dropped += 1
            await asyncio.sleep(0.05)
    return {"messages": sent, "bytes_each": len(message), "units_each": cost, "rate_limited": refused,
            "dropped": dropped}


def summary(rtts: list[float]) -> dict:
    s = sorted(rtts)
    pick = lambda q: round(s[min(len(s) - 1, int(q * len(s)))], 2)    # noqa: E731
    return {"pings": len(s), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(s[-1], 2)}


async def control_plane(seconds: float) -> list[dict]:
    server = harness.Server("tickcast", 20, feed="market")
    from tickcast.keys import KeyStore
    store = KeyStore(server.tmp / "keys.sqlite3")
    free = store.add("free")
    store.close()
    rows = []
    try:
        for name, make in [("no attacker", None), *ATTACKS.items()]:
            rtts: list[float] = []
            cpu0, t0 = harness.cpu_seconds(server.proc.pid), time.monotonic()
            tasks = [pinger(server.url(i), seconds, rtts, i * PING_INTERVAL / PINGERS) for i in range(PINGERS)]
            if make is not None:
                tasks.append(attacker(f"ws://127.0.0.1:{server.port}/?key={free}", make(), seconds))
            out = await asyncio.gather(*tasks)
            cpu = (harness.cpu_seconds(server.proc.pid) - cpu0) / (time.monotonic() - t0)
            row = {"attack": name, **summary(rtts), "server_cpu": round(cpu, 3)}
            if make is not None:
                row.update(out[-1])
            rows.append(row)
            print(f"  {name:<56} p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                  f"max {row['max_ms']:6.2f} ms  server cpu {row['server_cpu']:.2f}", flush=True)
            await asyncio.sleep(0.5)
    finally:
        server.stop()
    return rows


async def slow_consumers(seconds: float) -> dict:
    import websockets
    server = harness.Server("tickcast", 20, rate=2000, batch=10, extra=("--close-timeout", "2"))
    pid = server.proc.pid
    try:
        await asyncio.sleep(1)
        before = harness.rss_bytes(pid)
        stalled = []
        for i in range(20):
            ws = await websockets.connect(server.url(i), max_queue=1)
            ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ws.transport.pause_reading()
            await ws.send(json.dumps({"action": "subscribe", "channels": [{"type": "trades"}]}))
            stalled.append(ws)
        peak = before
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.25)
            peak = max(peak, harness.rss_bytes(pid))
        for ws in stalled:
            ws.transport.abort()
        await asyncio.sleep(3)
        after = harness.rss_bytes(pid)
    finally:
        server.stop()
    row = {"clients": 20, "updates_per_s": 2000, "rss_before_mb": round(before / 1e6, 1),
           "rss_peak_mb": round(peak / 1e6, 1), "rss_after_mb": round(after / 1e6, 1)}
    print(f"  RSS before {row['rss_before_mb']} MB, peak {row['rss_peak_mb']} MB, "
          f"after they are gone {row['rss_after_mb']} MB", flush=True)
    return row


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 s per attack, 4 s of stalling")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    print(f"1. one free key at its full budget; {PINGERS} clients pinging", flush=True)
    rows = await control_plane(2 if args.quick else 8)
    worst = max(r["p99_ms"] for r in rows)
    print(f"  worst p99 {worst:.2f} ms: target (under {TARGET_P99_MS:g} ms) "
          f"{'met' if worst < TARGET_P99_MS else 'NOT met'}", flush=True)
    print("2. 20 clients that never read, 2,000 updates/s", flush=True)
    memory = await slow_consumers(4 if args.quick else 12)
    if args.out:
        Path(args.out).write_text(json.dumps({"control_plane": rows, "slow_consumers": memory,
                                              "target_p99_ms": TARGET_P99_MS}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
