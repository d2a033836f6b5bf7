"""Sequence numbers and exact resume (Market.ai), over real connections.

Updates are published the way an embedded feed publishes them
(``server.marketai.publish``), so each test knows exactly what was sent.
"""
import asyncio
import json

import pytest
import websockets
from conftest import recv, send, subscribe, url

from tickcast.dialects.history import History


def trade(i: int, symbol: str = "BTC/USDT") -> dict:
    return {"symbol": symbol, "exchange": "binance", "price": str(60000 + i), "size": "1", "side": "buy",
            "id": str(i)}


def quote(i: int, symbol: str = "BTC/USDT") -> dict:
    return {"symbol": symbol, "global_mid": str(60000 + i), "exchanges": []}


async def updates(ws, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        msg = await recv(ws)
        if msg.get("type") == "update":
            out.append(msg)
    return out


async def test_nothing_changes_for_a_client_that_does_not_ask(make_server, key):
    server = await make_server()
    async with websockets.connect(url(server, key)) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        server.marketai.publish("trades", "BTC/USDT", trade(1), ts=1)
        raw = await asyncio.wait_for(ws.recv(), 3)
        assert raw == json.dumps({"type": "update", "channel": "trades", "ts": 1, "data": trade(1)},
                                 separators=(",", ":"))


@pytest.mark.parametrize("how", ["query", "auth"])
async def test_updates_carry_their_position_per_topic(make_server, key, how):
    server = await make_server()
    target = url(server, key) + "&seq=1" if how == "query" else url(server)
    async with websockets.connect(target) as ws, websockets.connect(url(server, key)) as plain:
        if how == "auth":
            await send(ws, {"action": "auth", "key": key, "seq": True})
            assert (await recv(ws))["type"] == "authenticated"
        for c in (ws, plain):
            await send(c, subscribe({"type": "trades", "symbols": ["BTC/USDT", "ETH/USDT"]}))
            assert (await recv(c))["type"] == "subscribed"
        for i in range(6):
            symbol = "BTC/USDT" if i % 3 else "ETH/USDT"
            server.marketai.publish("trades", symbol, trade(i, symbol), ts=i)
        got = await updates(ws, 6)
        seen = await updates(plain, 6)
    btc = [u for u in got if u["data"]["symbol"] == "BTC/USDT"]
    eth = [u for u in got if u["data"]["symbol"] == "ETH/USDT"]
    assert [u["seq"] for u in btc] == [1, 2, 3, 4] and [u["seq"] for u in eth] == [1, 2]
    assert len({u["epoch"] for u in btc}) == 1 and btc[0]["epoch"] != eth[0]["epoch"]
    # the same updates, with their position added and nothing else changed
    assert [{k: v for k, v in u.items() if k not in ("seq", "epoch")} for u in got] == seen
    assert all("seq" not in u for u in seen)


async def test_a_snapshot_is_marked_and_carries_its_topic_s_position(make_server, key):
    server = await make_server()
    for i in range(3):
        server.marketai.publish("quotes", "BTC/USDT", quote(i))
    async with websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        snap = await recv(ws)
        assert snap["snapshot"] is True and snap["seq"] == 3 and snap["data"] == quote(2)
        server.marketai.publish("quotes", "BTC/USDT", quote(3))
        live = await recv(ws)
        assert live["seq"] == 4 and live["epoch"] == snap["epoch"] and "snapshot" not in live


async def test_a_resume_gets_every_missed_update_once_in_order(make_server, key):
    server = await make_server()
    async with websockets.connect(url(server, key) + "&seq=1") as watcher:   # sees everything
        await send(watcher, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        await recv(watcher)
        async with websockets.connect(url(server, key) + "&seq=1") as ws:
            await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
            await recv(ws)
            for i in range(5):
                server.marketai.publish("trades", "BTC/USDT", trade(i))
            last = (await updates(ws, 5))[-1]
        for i in range(5, 25):              # missed while away
            server.marketai.publish("trades", "BTC/USDT", trade(i))
        async with websockets.connect(url(server, key) + "&seq=1") as ws:
            await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"],
                                      "since": {"BTC/USDT": {"seq": last["seq"], "epoch": last["epoch"]}}}))
            reply = await recv(ws)
            assert reply == {"type": "subscribed", "channel": "trades", "symbols": ["BTC/USDT"],
                             "recovered": {"BTC/USDT": True}}
            for i in range(25, 30):         # live again
                server.marketai.publish("trades", "BTC/USDT", trade(i))
            resumed = await updates(ws, 25)
        everything = await updates(watcher, 30)
    assert resumed == everything[5:]
    assert [u["seq"] for u in resumed] == list(range(6, 31))
    assert server.stats["resumes_recovered"] == 1 and server.stats["resumes_not_recovered"] == 0


async def test_a_position_that_cannot_be_recovered_is_said_so(make_server, key):
    server = await make_server()
    for i in range(3):
        server.marketai.publish("quotes", "BTC/USDT", quote(i))
        server.marketai.publish("trades", "BTC/USDT", trade(i))
    epoch = server.history.position(("trades", "BTC/USDT"))[1]
    async with websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"],
                                  "since": {"BTC/USDT": {"seq": 1, "epoch": "another"}}},
                                 {"type": "quotes", "symbols": ["BTC/USDT"],
                                  "since": {"BTC/USDT": {"seq": 99, "epoch": epoch}}}))
        assert (await recv(ws))["recovered"] == {"BTC/USDT": False}
        assert (await recv(ws))["recovered"] == {"BTC/USDT": False}
        snap = await recv(ws)                 # a state channel: its snapshot, as without a position
        assert snap["snapshot"] is True and snap["data"] == quote(2)
        server.marketai.publish("trades", "BTC/USDT", trade(3))
        assert (await recv(ws))["seq"] == 4   # and the live stream, nothing of the past
    assert server.stats["resumes_not_recovered"] == 2


async def test_a_resume_past_the_window_is_refused_whole(make_server, key):
    server = await make_server()
    server.history.keep_updates, server.history.keep_seconds = 3, 0.0     # a small window
    for i in range(20):
        server.marketai.publish("trades", "BTC/USDT", trade(i))
    seq, epoch = server.history.position(("trades", "BTC/USDT"))
    kept = server.history.since(("trades", "BTC/USDT"), seq - 3, epoch)
    assert [json.loads(p)["seq"] for p in kept] == [seq - 2, seq - 1, seq]
    async with websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"],
                                  "since": {"BTC/USDT": {"seq": 1, "epoch": epoch}}}))
        assert (await recv(ws))["recovered"] == {"BTC/USDT": False}
        server.marketai.publish("trades", "BTC/USDT", trade(20))
        assert (await recv(ws))["seq"] == seq + 1


async def test_since_needs_sequence_numbers_and_a_valid_position(make_server, key):
    server = await make_server()
    async with websockets.connect(url(server, key)) as plain, \
            websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(plain, subscribe({"type": "trades", "since": {"BTC/USDT": {"seq": 1, "epoch": "e"}}}))
        assert (await recv(plain))["code"] == "INVALID_MESSAGE"
        for bad in ([], {"BTC/USDT": 3}, {"BTC/USDT": {"seq": -1, "epoch": "e"}},
                    {"BTC/USDT": {"seq": 1, "epoch": "e" * 65}}, {"BTC/USDT": {"seq": True, "epoch": "e"}}):
            await send(ws, subscribe({"type": "trades", "since": bad}))
            assert (await recv(ws))["code"] == "INVALID_MESSAGE", bad
        await send(ws, {"action": "ping"})
        assert (await recv(ws))["type"] == "pong"          # still served


async def test_a_wildcard_subscribe_resumes_the_symbols_it_names(make_server, key):
    server = await make_server()
    for i in range(4):
        server.marketai.publish("trades", "BTC/USDT", trade(i))
        server.marketai.publish("trades", "ETH/USDT", trade(i, "ETH/USDT"))
    epoch = server.history.position(("trades", "BTC/USDT"))[1]
    async with websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(ws, subscribe({"type": "trades", "since": {"BTC/USDT": {"seq": 2, "epoch": epoch}}}))
        assert (await recv(ws))["recovered"] == {"BTC/USDT": True}
        got = await updates(ws, 2)
        assert [(u["data"]["symbol"], u["seq"]) for u in got] == [("BTC/USDT", 3), ("BTC/USDT", 4)]


async def test_without_history_there_are_no_sequence_numbers(make_server, key):
    server = await make_server(history_bytes=0)
    async with websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        await recv(ws)
        server.marketai.publish("trades", "BTC/USDT", trade(1))
        assert "seq" not in (await recv(ws))
        await send(ws, subscribe({"type": "trades", "since": {"BTC/USDT": {"seq": 1, "epoch": "e"}}}))
        assert (await recv(ws))["code"] == "INVALID_MESSAGE"


def test_the_window_keeps_both_bounds_and_the_budget():
    now = [0.0]
    h = History(1 << 20, keep_seconds=60, keep_updates=300, clock=lambda: now[0])
    topic = ("trades", "BTC/USDT")
    for i in range(1, 2001):
        now[0] = i * 0.01                       # 100 a second: 60 s is 6,000 updates
        seq, epoch = h.next(topic)
        h.append(topic, seq, b"x" * 10)
    assert h.since(topic, 0, epoch) is not None          # all 20 s of it
    for i in range(2001, 20001):
        now[0] = i * 0.01
        seq, _ = h.next(topic)
        h.append(topic, seq, b"x" * 10)
    kept = len(h.since(topic, 20000 - 6000, epoch))
    assert kept == 6000 and h.since(topic, 20000 - 6600, epoch) is None   # the last 60 s and not much more
    # a budget too small for two topics: the older goes whole, and its sequence starts again
    small = History(1 << 16)
    for t in (("a", "X"), ("b", "Y")):
        for _ in range(300):
            s, _ = small.next(t)
            small.append(t, s, b"y" * 50)
    assert small.evicted == 1 and small.bytes <= 1 << 16 and small.position(("a", "X")) is None
    assert small.next(("a", "X"))[0] == 1


def test_history_bytes_is_checked():
    from tickcast.config import Settings
    with pytest.raises(ValueError, match="history-bytes"):
        Settings(history_bytes=100).validate()
    Settings(history_bytes=0).validate()


# -- across nodes: numbered where updates enter the bus ---------------------------

@pytest.mark.bus
async def test_a_client_of_a_node_killed_mid_stream_resumes_on_another(redis_url, serve_process):
    """Two nodes on one Redis; a client of node A reads trades; A is killed
    with -9 while the producer goes on; the client resumes on B from its
    last position: every trade exactly once, in order, recovered. A node C
    started after all of it recovers the same position from the bus."""
    import signal

    from tickcast.publisher import Publisher
    a, b = serve_process("--bus", redis_url), serve_process("--bus", redis_url, keys=None)
    entry = {"type": "trades", "symbols": ["BTC/USDT"]}
    async with Publisher(redis_url) as pub:
        async with websockets.connect(a.url() + "&seq=1") as ws:
            await send(ws, subscribe(entry))
            await recv(ws)
            for i in range(10):
                await pub.publish("trades", "BTC/USDT", trade(i))
            got = await updates(ws, 10)
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(10)
        for i in range(10, 40):                    # published while the client has no node
            await pub.publish("trades", "BTC/USDT", trade(i))
        last = got[-1]
        since = {"BTC/USDT": {"seq": last["seq"], "epoch": last["epoch"]}}
        async with websockets.connect(b.url() + "&seq=1") as ws:
            await send(ws, subscribe({**entry, "since": since}))
            assert (await recv(ws))["recovered"] == {"BTC/USDT": True}
            for i in range(40, 45):
                await pub.publish("trades", "BTC/USDT", trade(i))
            got += await updates(ws, 35)
        c = serve_process("--bus", redis_url)            # started after every one of them
        async with websockets.connect(c.url() + "&seq=1") as ws:
            await send(ws, subscribe({**entry, "since": {"BTC/USDT": {"seq": 30, "epoch": last["epoch"]}}}))
            assert (await recv(ws))["recovered"] == {"BTC/USDT": True}
            late = await updates(ws, 15)
    assert [u["data"]["id"] for u in got] == [str(i) for i in range(45)]          # each once, in order
    assert [u["seq"] for u in got] == list(range(got[0]["seq"], got[0]["seq"] + 45))
    assert len({u["epoch"] for u in got}) == 1
    assert late == got[-15:]


def test_positions_from_the_bus_are_taken_only_in_our_form():
    from tickcast.bus.record import read_positions
    assert read_positions(b"1733234567123456 3 0 7") == ("1733234567123456", [3, 0, 7])
    for bad in (b'ab"c 1', b"e\\ 1", b"e 1 x", b"e -1", b"e " + b"9" * 19, b"", None, b"\xff 1"):
        assert read_positions(bad) == (None, []), bad


async def test_a_resume_larger_than_the_queue_allows_is_refused_not_a_slow_consumer(make_server, key):
    server = await make_server(max_queue=64 * 1024)
    for i in range(300):                                      # 300 updates of ~1 KB: past half of 64 KiB
        server.marketai.publish("trades", "BTC/USDT", {**trade(i), "pad": "x" * 1000})
    epoch = server.history.position(("trades", "BTC/USDT"))[1]
    async with websockets.connect(url(server, key) + "&seq=1") as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"],
                                  "since": {"BTC/USDT": {"seq": 1, "epoch": epoch}}}))
        assert (await recv(ws))["recovered"] == {"BTC/USDT": False}
        await send(ws, subscribe({"type": "trades", "symbols": ["ETH/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"         # still served
