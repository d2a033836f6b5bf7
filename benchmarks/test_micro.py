"""Micro-benchmarks of the Cython pieces (pytest-benchmark).

    pytest benchmarks/test_micro.py                      # timings
    pytest benchmarks/test_micro.py --benchmark-json=out.json
    pytest benchmarks/test_micro.py --benchmark-disable  # smoke: run each once
"""
import socket

import orjson
import pytest
import simdjson
import uvloop

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


@pytest.fixture
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


def test_encode_frame_200b(benchmark):
    benchmark(encode_frame, PAYLOAD)


def test_subscribe_unsubscribe(benchmark):
    ix = SubscriptionIndex()
    topics = [ix.topic(("t", i), pin=True) for i in range(100)]    # kept with no subscribers, as a feed's are
    slots = [ix.alloc_slot() for _ in range(1000)]

    def churn():
        for t in topics[:10]:
            for s in slots[:100]:
                ix.add(t, s)
            for s in slots[:100]:
                ix.discard(t, s)
    benchmark(churn)


def test_topic_given_back_and_reused(benchmark):
    # A client naming a symbol nobody else holds, then leaving it: intern, add,
    # and the discard that gives the topic back (1,000 connections' bitsets).
    ix = SubscriptionIndex(initial_slots=1000)
    slot = [ix.alloc_slot() for _ in range(1000)][-1]

    def churn():
        for i in range(100):
            t = ix.topic(("u", i))
            ix.add(t, slot)
            ix.discard(t, slot)
    benchmark(churn)


@pytest.mark.parametrize("n", [100, 1000, 10000])
def test_publish_to_n_subscribers(benchmark, loop, n):
    hub = Hub(loop, 1 << 30)
    tid = hub.index.topic("hot")
    for _ in range(n):
        hub.index.add(tid, hub.attach(NullTransport()))

    def publish_and_flush():
        for _ in range(10):
            hub.publish(tid, PAYLOAD)
        hub.flush()
    benchmark(publish_and_flush)
    assert hub.delivered >= 10 * n


def test_flush_100_sockets(benchmark, loop):
    """One corked send(2) per connection to real sockets (the reader drains)."""
    hub = Hub(loop, 1 << 30)
    tid = hub.index.topic("hot")
    pairs = [socket.socketpair() for _ in range(100)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)

    for a, _ in pairs:     # the hub sends to the socket itself; the transport is never used
        hub.index.add(tid, hub.attach(NullTransport(), a.fileno()))

    def tick():
        for _ in range(10):
            hub.publish(tid, PAYLOAD)
        hub.flush()
        for _, b in pairs:
            b.recv(1 << 16)
    benchmark(tick)
    for a, b in pairs:
        a.close()
        b.close()


def test_parse_control_message(benchmark):
    parser = simdjson.Parser()
    msg = orjson.dumps({"action": "subscribe", "channels": [
        {"type": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}, {"type": "signals"}]})
    benchmark(parser.parse, msg, True)


def test_read_client_frames(benchmark):
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

    def read():
        reader.get_buffer(-1)[:len(data)] = data
        reader.buffer_updated(len(data))
    benchmark(read)
    assert conn.frames >= 10


def test_bus_intake_100_records(benchmark, loop, tmp_path):
    """A node taking one bus message of 100 trades (route lookup, payload
    check, deliver, Hub.publish with nobody subscribed): the bus's own cost
    per update is this divided by 100."""
    import time

    from tickcast.keys import KeyStore
    from tickcast.bus.base import pack
    from tickcast.bus.intake import Intake
    from tickcast.config import Settings
    from tickcast.feeds.bench import trade
    from tickcast.dialects.marketai import encode
    from tickcast.server import Server

    store = KeyStore(tmp_path / "keys.sqlite3")
    server = Server(Settings(port=0, keys=store.path), store, None)
    loop.run_until_complete(server.start())
    intake = Intake(server)
    symbols = [f"BENCH{i % 50}/USDT" for i in range(100)]
    message = pack([(*encode("trades", s, trade(s, i, time.time_ns(), "")), False) for i, s in enumerate(symbols)])
    try:
        benchmark(intake.message, message)
        assert intake.dropped == 0
    finally:
        loop.run_until_complete(server.stop())
        store.close()


@pytest.mark.parametrize("decimals", [False, True])
def test_client_decodes_100_quotes(benchmark, decimals):
    """The SDK's side: 100 quote updates (as the guide shows them) into typed Updates."""
    from tickcast.client import MarketAiClient
    frame = orjson.dumps({"type": "update", "channel": "quotes", "ts": 1708776300000, "data": {
        "symbol": "BTC/USDT", "global_mid": "67450.25", "global_vwap": "67448.10", "max_arb_bps": 3.2,
        "consensus_trend": "bullish", "exchanges": [
            {"exchange": x, "bid": "67449.50", "ask": "67450.80", "mid": "67450.15", "volume_24h": "12500.5",
             "obi": 0.12} for x in ("binance", "okx", "bybit")]}})
    client = MarketAiClient("ws://127.0.0.1:1/", key="k", decimals=decimals)

    def decode():
        for _ in range(100):
            client.received(frame)
        while not client._queue.empty():
            client._queue.get_nowait()
    benchmark(decode)
