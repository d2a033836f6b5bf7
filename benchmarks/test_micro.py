"""Micro-benchmarks of the Cython pieces (pytest-benchmark).

    pytest benchmarks/test_micro.py                      # timings
    pytest benchmarks/test_micro.py --benchmark-json=out.json
    pytest benchmarks/test_micro.py --benchmark-disable  # smoke: run each once
"""
import asyncio
import socket

import pytest
import uvloop
import workloads
from workloads import PAYLOAD

from tickcast._fanout import Hub
from tickcast._socket import Poller


@pytest.fixture
def loop():
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


def test_encode_frame_200b(benchmark):
    benchmark(workloads.encode())


def test_subscribe_unsubscribe(benchmark):
    benchmark(workloads.churn())


def test_topic_given_back_and_reused(benchmark):
    benchmark(workloads.topic_reuse())


@pytest.mark.parametrize("n", [100, 1000, 10000])
def test_publish_to_n_subscribers(benchmark, loop, n):
    hub, run = workloads.publish(loop, n)
    benchmark(run)
    assert hub.delivered >= 10 * n


def test_flush_100_sockets(benchmark, loop):
    """One corked send(2) per connection to real sockets (the reader drains)."""
    hub = Hub(loop, 1 << 30)
    tid = hub.index.topic("hot")
    pairs = [socket.socketpair() for _ in range(100)]
    for a, b in pairs:
        a.setblocking(False)
        b.setblocking(False)

    poller = Poller(loop)
    for a, _ in pairs:     # the server's own transports, which send at once while nothing is queued
        hub.index.add(tid, hub.attach(poller.adopt(a.detach(), asyncio.BufferedProtocol())))

    def tick():
        for _ in range(10):
            hub.publish(tid, PAYLOAD)
        hub.flush()
        for _, b in pairs:
            b.recv(1 << 16)
    benchmark(tick)
    poller.close()
    for _, b in pairs:
        b.close()


def test_parse_control_message(benchmark):
    benchmark(workloads.parse_control())


def test_read_client_frames(benchmark):
    conn, run = workloads.read_frames()
    benchmark(run)
    assert conn.frames >= 10


def test_bus_intake_100_records(benchmark, loop, tmp_path):
    """A node taking one bus message of 100 trades (route lookup, payload
    check, deliver, Hub.publish with nobody subscribed): the bus's own cost
    per update is this divided by 100."""
    import time

    from tickcast.keys import KeyStore
    from tickcast.bus.record import marketai_record, pack
    from tickcast.bus.intake import Intake
    from tickcast.config import Settings
    from tickcast.feeds.bench import trade
    from tickcast.server import Server

    store = KeyStore(tmp_path / "keys.sqlite3")
    server = Server(Settings(port=0, keys=store.path), store, None)
    loop.run_until_complete(server.start())
    intake = Intake(server.marketai.deliver, server.monday.deliver, server.throttle)
    symbols = [f"BENCH{i % 50}/USDT" for i in range(100)]
    message = pack([marketai_record("trades", s, trade(s, i, time.time_ns(), "")) for i, s in enumerate(symbols)])
    try:
        benchmark(intake.message, message)
        assert intake.dropped == 0
    finally:
        loop.run_until_complete(server.stop())
        store.close()


@pytest.mark.parametrize("decimals", [False, True])
def test_client_decodes_100_quotes(benchmark, decimals):
    benchmark(workloads.client_decode(decimals))
