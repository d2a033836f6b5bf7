"""The micro-benchmarks' workloads, each a function with no arguments.

Timed by test_micro.py (pytest-benchmark) and counted in instructions by
callgrind.py; made here once so that both measure the same thing.
"""
from __future__ import annotations

import orjson
import simdjson

from tickcast._bitsets import SubscriptionIndex
from tickcast._fanout import Hub
from tickcast._frames import encode_frame
from tickcast._reader import FrameReader

PAYLOAD = orjson.dumps({"type": "update", "channel": "trades", "ts": 1708776300000,
                        "data": {"symbol": "BTC/USDT", "pad": "x" * 120}})


class NullTransport:
    """Swallows writes: isolates the append from the send(2)."""
    def write(self, data):
        pass

    def get_write_buffer_size(self):
        return 0


def encode() -> callable:
    return lambda: encode_frame(PAYLOAD)


def churn() -> callable:
    """Subscribe and unsubscribe 100 connections on 10 topics."""
    ix = SubscriptionIndex()
    topics = [ix.topic(("t", i), pin=True) for i in range(100)]    # kept with no subscribers, as a feed's are
    slots = [ix.alloc_slot() for _ in range(1000)]

    def run():
        for t in topics[:10]:
            for s in slots[:100]:
                ix.add(t, s)
            for s in slots[:100]:
                ix.discard(t, s)
    return run


def topic_reuse() -> callable:
    """A client naming a symbol nobody else holds, then leaving it: intern,
    add, and the discard that gives the topic back (1,000 connections' bitsets)."""
    ix = SubscriptionIndex(initial_slots=1000)
    slot = [ix.alloc_slot() for _ in range(1000)][-1]

    def run():
        for i in range(100):
            t = ix.topic(("u", i))
            ix.add(t, slot)
            ix.discard(t, slot)
    return run


def publish(loop, n: int) -> tuple[Hub, callable]:
    """Ten frames to ``n`` subscribers of one topic, then the flush."""
    hub = Hub(loop, 1 << 30)
    tid = hub.index.topic("hot")
    for _ in range(n):
        hub.index.add(tid, hub.attach(NullTransport()))

    def run():
        for _ in range(10):
            hub.publish(tid, PAYLOAD)
        hub.flush()
    return hub, run


def parse_control() -> callable:
    parser = simdjson.Parser()
    msg = orjson.dumps({"action": "subscribe", "channels": [
        {"type": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}, {"type": "signals"}]})
    return lambda: parser.parse(msg, True)


def read_frames() -> tuple[object, callable]:
    """Ten masked 60-byte client frames in one read, unmasked and handed over."""
    class Counter:
        frames = 0

        def on_frame(self, op, fin, payload):
            self.frames += 1

    msg = b'{"action":"subscribe","channels":[{"type":"quotes"}]}'.ljust(60)
    mask = b"\x01\x02\x03\x04"
    frame = bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(msg))
    data = frame * 10
    conn = Counter()
    reader = FrameReader(conn, 1 << 16)

    def run():
        reader.get_buffer(-1)[:len(data)] = data
        reader.buffer_updated(len(data))
    return conn, run


def client_decode(decimals: bool) -> callable:
    """The SDK's side: 100 quote updates (as the guide shows them) into typed Updates."""
    from tickcast.client import MarketAiClient
    frame = orjson.dumps({"type": "update", "channel": "quotes", "ts": 1708776300000, "data": {
        "symbol": "BTC/USDT", "global_mid": "67450.25", "global_vwap": "67448.10", "max_arb_bps": 3.2,
        "consensus_trend": "bullish", "exchanges": [
            {"exchange": x, "bid": "67449.50", "ask": "67450.80", "mid": "67450.15", "volume_24h": "12500.5",
             "obi": 0.12} for x in ("binance", "okx", "bybit")]}})
    client = MarketAiClient("ws://127.0.0.1:1/", key="k", decimals=decimals)

    def run():
        for _ in range(100):
            client.received(frame)
        while not client._queue.empty():
            client._queue.get_nowait()
    return run
