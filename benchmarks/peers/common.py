"""What every peer server shares with `tickcast serve --feed bench`: the flags,
the subscribe message it understands, the update envelope, and the publisher
loop (same batch, rate and seq/pub_ns stamps), so that only the fan-out differs."""
import argparse
import asyncio
import gc
import signal
import sys
import time

import orjson
from tickcast.feeds.bench import padding, picker, tick_size, trade


def parse_args(name: str):
    ap = argparse.ArgumentParser(description=f"{name}: a peer server for the fan-out benchmarks")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bench-symbols", type=int, default=1)
    ap.add_argument("--bench-rate", type=float, default=1000.0)
    ap.add_argument("--bench-batch", type=int, default=10)
    ap.add_argument("--bench-size", type=int, default=200)
    ap.add_argument("--bench-channels", default="trades")
    ap.add_argument("--bench-zipf", type=float, default=0.0)
    ap.add_argument("--feed", default="bench", choices=["bench", "none"])
    return ap.parse_known_args()[0]


def topics_of(message: bytes) -> list[str]:
    """Topics named by a Market.ai subscribe message ("channel:SYMBOL")."""
    try:
        msg = orjson.loads(message)
        return [f"{c['type']}:{s.upper()}" for c in msg["channels"] for s in c.get("symbols") or ["*"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def ready(port: int, name: str) -> None:
    gc.freeze()       # as `tickcast serve` does: no full collection walks the startup heap
    print(f"{name} serving ws://127.0.0.1:{port}/", file=sys.stderr, flush=True)


async def publisher(args, publish) -> None:
    """publish(topic, payload bytes) -> deliveries, called ``batch`` times a loop step.
    SIGUSR1 pauses it and SIGUSR2 resumes it (the wide benchmark's churn phase)."""
    if args.feed == "none":
        return
    paused = [False]
    signal.signal(signal.SIGUSR1, lambda *_: paused.__setitem__(0, True))
    signal.signal(signal.SIGUSR2, lambda *_: paused.__setitem__(0, False))
    channels = args.bench_channels.split(",")
    symbols = [f"BENCH{i}/USDT" for i in range(args.bench_symbols)]
    streams = [(c, s) for s in symbols for c in channels]
    seqs = {st: 0 for st in streams}
    pad = padding(args.bench_size, streams)
    pick = picker(len(streams), args.bench_zipf)         # as tickcast's feed: the same streams, in order
    sent = 0
    start = time.monotonic()
    while True:
        if paused[0]:
            await asyncio.sleep(0.01)
            start, sent = time.monotonic(), 0       # no catching up on the paused time
            continue
        reached = 0
        n = tick_size(args.bench_batch, args.bench_rate, start, sent)   # as tickcast's feed
        for k in pick(n):
            channel, symbol = streams[k]
            seqs[(channel, symbol)] += 1
            now_ns = time.time_ns()
            payload = orjson.dumps({"type": "update", "channel": channel, "ts": now_ns // 1_000_000,
                                    "data": trade(symbol, seqs[(channel, symbol)], now_ns, pad)})
            reached += publish(f"{channel}:{symbol}", payload)
        sent += n
        if args.bench_rate > 0:
            await asyncio.sleep(max(0.0, start + sent / args.bench_rate - time.monotonic()))
        else:
            await asyncio.sleep(0 if reached else 0.001)
