"""The bus: nodes and feeds as real processes on one real Redis.

Each test has a Redis database of its own (flushed before and after); the
test of a Redis restart runs a redis-server of its own on a free port.
"""
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import orjson
import pytest
import redis
import websockets
from conftest import recv, send, silent, subscribe, until, url
from processes import TICKCAST, PrivateRedis, free_port

from tickcast.publisher import Publisher
from tickcast.keys import KeyStore
from tickcast.bus import BusError

pytestmark = pytest.mark.bus

ADDR = "0x" + "ab" * 20


@pytest.fixture
def nodes(serve_process):
    return lambda bus, *extra: serve_process("--bus", bus, *extra)

@pytest.fixture
def feeds():
    started = []

    def start(bus: str, *extra: str) -> subprocess.Popen:
        proc = subprocess.Popen([*TICKCAST, "feed", "--bus", bus, *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


async def frames(ws, n: int, timeout: float = 5.0) -> list[str]:
    return [await asyncio.wait_for(ws.recv(), timeout) for _ in range(n)]


async def test_two_nodes_on_one_feed_send_the_same_frames(redis_url, nodes, feeds):
    a, b = nodes(redis_url), nodes(redis_url)
    feeds(redis_url, "--feed", "market", "--tick-interval", "0.05")
    async with websockets.connect(a.url()) as wa, websockets.connect(b.url()) as wb:
        for ws in (wa, wb):
            await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}, {"type": "trades"}))
        got_a, got_b = await frames(wa, 60), await frames(wb, 60)
    updates_a = [f for f in got_a if '"type":"update"' in f]
    updates_b = [f for f in got_b if '"type":"update"' in f]
    # The two started at different moments: from the first frame both have,
    # the frames are the same bytes in the same order.
    common = next(f for f in updates_b if f in updates_a)
    tail_a = updates_a[updates_a.index(common):]
    tail_b = updates_b[updates_b.index(common):]
    n = min(len(tail_a), len(tail_b))
    assert n >= 20 and tail_a[:n] == tail_b[:n]


async def test_a_published_update_reaches_each_subscriber_once_and_nobody_else(redis_url, nodes):
    a, b = nodes(redis_url), nodes(redis_url)
    async with websockets.connect(a.url()) as on_a, websockets.connect(b.url()) as on_b, \
            websockets.connect(a.url()) as other:
        for ws, symbol in ((on_a, "XYZ/USDT"), (on_b, "xyz/usdt"), (other, "ABC/USDT")):
            await send(ws, subscribe({"type": "trades", "symbols": [symbol]}))
            assert (await recv(ws))["type"] == "subscribed"
        out = await asyncio.to_thread(subprocess.run, [*TICKCAST, "publish", "--bus", redis_url, "trades",
                                                       "XYZ/USDT", '{"price": "1.5", "n": 7}'],
                                      capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        for ws in (on_a, on_b):
            update = await recv(ws)
            assert update["channel"] == "trades" and update["data"] == {"price": "1.5", "n": 7}
            assert await silent(ws, 0.5)                     # once
        assert await silent(other, 0.2)


@pytest.mark.parametrize("args,reason", [
    (["trades", "BTCUSDT", "{}"], "malformed symbol"),
    (["nope", "BTC/USDT", "{}"], "unknown channel"),
    (["trades", "BTC/USDT", "[1, 2]"], "JSON object"),
    (["trades", "BTC/USDT", "{bad"], "not valid JSON"),
])
def test_bad_publish_input_gets_one_line(redis_url, args, reason):
    out = subprocess.run([*TICKCAST, "publish", "--bus", redis_url, *args], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and reason in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert redis.Redis.from_url(redis_url).xlen("tickcast:updates") == 0


def test_publish_to_a_bus_that_is_not_there():
    port = free_port()
    out = subprocess.run([*TICKCAST, "publish", "--bus", f"redis://127.0.0.1:{port}", "trades", "BTC/USDT", "{}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot reach the bus" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


async def test_a_node_started_late_serves_snapshots_at_once(redis_url, nodes):
    async with Publisher(redis_url) as pub:
        await pub.publish("quotes", "LATE/USDT", {"symbol": "LATE/USDT", "mid": "2"})
        await pub.publish("book", "LATE/USDT", {"exchange": "binance", "bids": [], "asks": []})
        await pub.publish("book", "LATE/USDT", {"exchange": "okx", "bids": [], "asks": []})
        await pub.publish_v4("orderBook", 143, {"1": {}}, instrument=ADDR, expiry=4294967295)
    # Published before the node starts: a node reads the stream from its end, so these reach it
    # only as the latest state it loads.
    node = nodes(redis_url)
    async with websockets.connect(node.url()) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["LATE/USDT"]}, {"type": "book", "symbols": ["LATE/USDT"]}))
        got = [await recv(ws, timeout=5) for _ in range(5)]   # nothing is published now: any update is a snapshot
    assert [m["type"] for m in got] == ["subscribed", "update", "subscribed", "update", "update"]
    assert got[1]["data"]["mid"] == "2" and {got[3]["data"]["exchange"], got[4]["data"]["exchange"]} == {"binance", "okx"}
    async with websockets.connect(node.url("/v4/public/ws")) as v4:
        await v4.send(json.dumps({"id": 1, "method": "SUBSCRIBE", "params": {
            "type": "orderBook", "chainId": 143, "instrument": ADDR, "expiry": 4294967295}}))
        assert json.loads(await v4.recv()) == {"id": 1, "result": "success"}
        assert json.loads(await asyncio.wait_for(v4.recv(), 5)) == {
            "stream": "orderBook", "chainId": 143, "instrument": ADDR, "expiry": 4294967295, "data": {"1": {}}}


async def test_publisher_round_trip_for_both_dialects(make_server, key, redis_url):
    server = await make_server(bus=redis_url)
    assert await until(lambda: server.bus_ready, 5)
    async with Publisher(redis_url) as pub, websockets.connect(url(server, key)) as ws, \
            websockets.connect(url(server, path="/v4/public/ws")) as v4:
        await send(ws, subscribe({"type": "funding", "symbols": ["SOL/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        await pub.publish("funding", "sol/usdt", {"exchange": "bybit", "rate": 0.0001}, ts=1234)
        assert await recv(ws) == {"type": "update", "channel": "funding", "ts": 1234,
                                  "data": {"exchange": "bybit", "rate": 0.0001}}
        await pub.publish_v4("blockNumChanged", 8453, {"blockNum": 5})   # the chain exists from now on
        await v4.send(json.dumps({"id": 2, "method": "SUBSCRIBE", "params": {"type": "common", "chainId": 8453}}))
        assert json.loads(await v4.recv()) == {"id": 2, "result": "success"}
        await pub.publish_v4("marketListChanged", 8453, [{"instrumentAddr": ADDR}])
        assert json.loads(await v4.recv()) == {"stream": "marketListChanged", "chainId": 8453,
                                               "data": [{"instrumentAddr": ADDR}]}
        with pytest.raises(ValueError, match="instrument"):
            await pub.publish_v4("orderBook", 143, {}, instrument="0x12", expiry=1)
        with pytest.raises(ValueError, match="malformed symbol"):
            await pub.publish("quotes", "BTC-USDT", {})
    assert server.intake.dropped == 0


async def test_bad_bus_records_are_dropped_and_logged(make_server, key, redis_url, caplog):
    server = await make_server(bus=redis_url)
    assert await until(lambda: server.bus_ready, 5)
    r = redis.asyncio.Redis.from_url(redis_url)
    good = orjson.dumps({"type": "update", "channel": "trades", "ts": 1, "data": {"n": 1}})
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades"}, {"type": "quotes"}))
        await recv(ws), await recv(ws)
        bad = [
            b"not json\n" + good,
            b'["m","trades","BTCUSDT",null]\n' + good,                 # malformed symbol
            b'["m","nope","BTC/USDT",null]\n' + good,                  # unknown channel
            b'["m","quotes","BTC/USDT",null]\n' + good,                # a state channel without its key
            b'["m","trades","BTC/USDT",null]\n{"half": ',              # payload not JSON
            b'["m","trades","BTC/USDT",null]\n[1,2]',                  # not an object
            b'["m","trades","BTC/USDT",null]\n' + good + b"\n" + b'["m","trades"',   # odd count
            b'["v4",["orderBook",143,"0x12",1],"orderBook"]\n{}',
            b'["x"]\n{}',
            b"",
        ]
        for message in bad:
            await r.xadd("tickcast:updates", {b"u": message})
        await r.xadd("tickcast:updates", {b"junk": b"no u field"})
        assert await recv(ws) == orjson.loads(good)          # the one good record of the odd-count message
        await r.xadd("tickcast:updates", {b"u": b'["m","trades","BTC/USDT",null]\n' + good})
        assert await recv(ws) == orjson.loads(good)
        assert await silent(ws, 0.3)
    await r.aclose()
    assert server.intake.dropped == 10
    dropped = [rec for rec in caplog.records if "dropped a record from the bus" in rec.getMessage()]
    assert 1 <= len(dropped) <= 10 and not [rec for rec in caplog.records if rec.exc_info]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to restart one")
async def test_redis_restarted_mid_stream_loses_only_what_it_refused(nodes):
    # The README's statement: in a bus outage a client loses the updates the
    # bus refused (their publish raised), and nothing the bus accepted.
    bus = PrivateRedis()
    try:
        node = nodes(f"redis://127.0.0.1:{bus.port}")
        accepted, attempted, received = [], [], []
        async with websockets.connect(node.url()) as ws:
            await send(ws, subscribe({"type": "trades", "symbols": ["SEQ/USDT"]}))
            assert (await recv(ws))["type"] == "subscribed"

            async def read():
                while True:
                    received.append((await recv(ws, timeout=10))["data"]["seq"])

            reader = asyncio.create_task(read())
            pub = Publisher(f"redis://127.0.0.1:{bus.port}")
            await pub.bus.connect()
            started = time.monotonic()
            seq = 0
            restarted = False
            while time.monotonic() - started < 6:
                seq += 1
                attempted.append(seq)
                try:
                    await pub.publish("trades", "SEQ/USDT", {"seq": seq})
                    accepted.append(seq)
                except BusError:
                    pass
                if not restarted and time.monotonic() - started > 1.5:
                    bus.kill()
                    await asyncio.sleep(2)          # an outage of 2 s
                    bus.start()
                    restarted = True
                await asyncio.sleep(0.005)
            await asyncio.sleep(2)
            reader.cancel()
            await pub.close()
            await send(ws, {"action": "ping"})       # the client was never cut
            assert (await recv(ws))["type"] == "pong"
        assert len(accepted) > 100 and len(accepted) < len(attempted)
        assert set(accepted) <= set(received) <= set(attempted)
        assert received == sorted(set(received))      # in order, each once
    finally:
        bus.kill()
    log = node.stop()
    assert "bus unreachable" in log and log.count("bus ready") >= 2


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server of its own")
async def test_a_bus_that_stops_answering_is_left_and_found_again(nodes):
    # A hung Redis (stopped, its sockets open) is not a closed one: the node
    # notices the silence, says so, and reads on once it answers. The bus
    # also needs a password and a database number here.
    bus = PrivateRedis(password="s3cret")
    url = f"redis://:s3cret@127.0.0.1:{bus.port}/3"
    try:
        node = nodes(url)
        async with websockets.connect(node.url()) as ws:
            await send(ws, subscribe({"type": "trades", "symbols": ["SEQ/USDT"]}))
            assert (await recv(ws))["type"] == "subscribed"
            async with Publisher(url) as pub:
                await pub.publish("trades", "SEQ/USDT", {"seq": 1})
                assert (await recv(ws))["data"]["seq"] == 1
                bus.proc.send_signal(signal.SIGSTOP)
                try:
                    assert await until(lambda: "bus unreachable" in "".join(node.log), 10)
                finally:
                    bus.proc.send_signal(signal.SIGCONT)
                assert await until(lambda: "".join(node.log).count("bus ready") >= 2, 10)
                await pub.publish("trades", "SEQ/USDT", {"seq": 2})
                assert (await recv(ws))["data"]["seq"] == 2
    finally:
        bus.kill()
    assert "no answer from the bus" in node.stop()


def _sockets(pid: int) -> int:
    return sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
               if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))


@pytest.mark.skipif(sys.platform != "linux", reason="counts each worker's sockets in /proc")
async def test_workers_share_the_port_and_one_sigterm_stops_them(redis_url, tmp_path):
    keys = tmp_path / "keys.sqlite3"
    store = KeyStore(keys)
    key = store.add("max")
    store.close()
    proc = subprocess.Popen([*TICKCAST, "serve", "--workers", "2", "--bus", redis_url, "--port", "0",
                             "--keys", str(keys)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        m = None
        while m is None:        # the workers' lines come first; the supervisor's once all serve
            line = proc.stderr.readline()
            assert line, "the workers did not start"
            m = re.search(r"serving ws://127\.0\.0\.1:(\d+)/ with 2 workers \(pids (\d+) (\d+)\)", line)
        port, pids = int(m.group(1)), [int(m.group(2)), int(m.group(3))]
        before = [_sockets(p) for p in pids]
        clients = [await websockets.connect(f"ws://127.0.0.1:{port}/?key={key}") for _ in range(40)]
        after = [_sockets(p) for p in pids]
        assert all(a > b for a, b in zip(after, before)), (before, after)     # both took connections
        assert sum(after) - sum(before) == 40
        for ws in clients:
            await send(ws, subscribe({"type": "trades", "symbols": ["W/USDT"]}))
            assert (await recv(ws))["type"] == "subscribed"
        async with Publisher(redis_url) as pub:
            await pub.publish("trades", "W/USDT", {"n": 1})
        for ws in clients:
            assert (await recv(ws))["data"] == {"n": 1}
        for ws in clients:
            await ws.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
        assert not [p for p in pids if os.path.exists(f"/proc/{p}") and
                    open(f"/proc/{p}/stat").read().split()[2] != "Z"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def test_workers_need_a_bus():
    out = subprocess.run([*TICKCAST, "serve", "--workers", "2", "--port", "0"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2 and "--workers above 1 needs --bus" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


async def test_the_readmes_publisher_example_runs(redis_url, nodes, tmp_path):
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "README.md"
    if not path.exists():
        pytest.skip("needs the README beside the tests")
    readme = path.read_text()
    example = re.search(r"From Python .*?```python\n(.*?)```", readme, re.S).group(1)
    assert "Publisher(" in example
    script = tmp_path / "example.py"
    script.write_text(example.replace("redis://127.0.0.1:6379/0", redis_url))
    node = nodes(redis_url)
    async with websockets.connect(node.url()) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        out = await asyncio.to_thread(subprocess.run, [sys.executable, str(script)], capture_output=True,
                                      text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert (await recv(ws))["data"]["bid"] == "67000.5"
    async with websockets.connect(node.url("/v4/public/ws")) as v4:
        await v4.send(json.dumps({"id": 1, "method": "SUBSCRIBE", "params": {
            "type": "orderBook", "chainId": 143, "instrument": "0x73ada1ea346cc3908f41cf67a040f0acd7808be0",
            "expiry": 4294967295}}))
        assert json.loads(await v4.recv()) == {"id": 1, "result": "success"}
        assert json.loads(await v4.recv())["data"] == {"1": {"bids": [], "asks": []}}


async def test_v4_streams_ride_the_bus_as_from_the_embedded_simulator(redis_url, nodes, feeds):
    from tickcast.feeds.perp import PERPETUAL, SimulatedPerpExchange
    sim = SimulatedPerpExchange(seed=3)           # the feed process's twin: same markets, same traders
    m = next(m for (c, _), m in sim.markets.items() if c == 143)
    trader = sim.traders[143][0]
    feeds(redis_url, "--feed", "market", "--seed", "3", "--tick-interval", "0.1")
    latest = redis.Redis.from_url(redis_url)      # the first step makes every market known
    assert await until(lambda: latest.hlen("tickcast:latest") > 0, 10)
    latest.close()
    node = nodes(redis_url)

    def sub(rid, kind, **extra):
        p = {"type": kind, "chainId": 143, **extra}
        if kind in ("orderBook", "instrument", "kline"):
            p.update(instrument=m.addr, expiry=PERPETUAL)
        return json.dumps({"id": rid, "method": "SUBSCRIBE", "params": p})

    async with websockets.connect(node.url("/v4/public/ws")) as ws:
        await ws.send(sub(1, "orderBook"))
        assert json.loads(await ws.recv()) == {"id": 1, "result": "success"}
        book = json.loads(await asyncio.wait_for(ws.recv(), 3))         # the snapshot, at once
        assert book["stream"] == "orderBook" and set(book["data"]) == {"1", "10", "100", "200"}
        for rid, kind, extra in ((2, "instrument", {}), (3, "kline", {"interval": "1m"}), (4, "common", {}),
                                 (5, "portfolio", {"userAddress": trader})):
            await ws.send(sub(rid, kind, **extra))
        streams, deadline = set(), time.monotonic() + 15
        while time.monotonic() < deadline and streams < {"orderBook", "instrument", "marketPairInfoChanged",
                                                         "kline", "blockNumChanged", "marketListChanged",
                                                         "portfolio"}:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if "stream" in msg:
                streams.add(msg["stream"])
                if msg["stream"] == "portfolio":
                    assert msg["data"]["userAddress"] == trader
                if msg["stream"] == "marketListChanged":
                    assert m.addr in {x["instrumentAddr"] for x in msg["data"]}
    assert streams == {"orderBook", "instrument", "marketPairInfoChanged", "kline", "blockNumChanged",
                       "marketListChanged", "portfolio"}


async def test_a_node_reports_its_bus_in_its_metrics(redis_url, nodes):
    from prometheus_client.parser import text_string_to_metric_families
    node = nodes(redis_url, "--admin-port", "0")
    port = int(re.search(r"admin on http://127\.0\.0\.1:(\d+)/", "".join(node.log)).group(1))
    async with Publisher(redis_url) as pub:
        for seq in range(5):
            await pub.publish("trades", "SEQ/USDT", {"seq": seq})

    async def scrape() -> dict:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        body = (await asyncio.wait_for(reader.read(), 5)).partition(b"\r\n\r\n")[2].decode()
        writer.close()
        return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}

    m = await scrape()
    for _ in range(50):                      # read within a few milliseconds, usually
        if m["tickcast_bus_records_total"] >= 5:
            break
        await asyncio.sleep(0.05)
        m = await scrape()
    assert m["tickcast_bus_ready"] == 1 and m["tickcast_bus_records_total"] == 5
    assert m["tickcast_bus_reconnects_total"] == 0 and 0 <= m["tickcast_bus_lag_seconds"] < 5
