"""A wide market: what a node keeps follows what is held, within documented bounds."""
import asyncio

import websockets
from conftest import recv, send, silent, subscribe, until, url
from test_monday import req, v4url

import tickcast.dialects.monday as monday
from tickcast.wire.marketai import CHANNELS


async def test_index_memory_returns_to_its_baseline_after_churn_over_many_topics(server, keystore):
    # Three rounds of 100 connections, each holding 30 symbols of its own on
    # two channels (6,000 distinct topics a round): once they are gone, the
    # index holds no more than after the first round (its per-slot tables
    # keep the peak's size, a few bytes a slot) and only the wildcards live.
    index = server.hub.index
    keys = [keystore.add("max") for _ in range(100)]
    after = []
    for rnd in range(3):
        conns = await asyncio.gather(*(websockets.connect(url(server, k)) for k in keys))
        for i, ws in enumerate(conns):
            symbols = [f"R{rnd}C{i}S{j}/USDT" for j in range(30)]
            await send(ws, subscribe({"type": "trades", "symbols": symbols}, {"type": "quotes", "symbols": symbols}))
        for ws in conns:
            assert (await recv(ws))["type"] == "subscribed"
            assert (await recv(ws))["type"] == "subscribed"
        assert index.topics == len(CHANNELS) + 6000
        held = index.nbytes
        await asyncio.gather(*(ws.close() for ws in conns))
        await until(lambda: not server.connections)
        assert index.topics == len(CHANNELS)
        after.append(index.nbytes)
        assert held - after[-1] >= 6000 * 30        # each topic's memory went back
    assert after[1] == after[0] and after[2] == after[0]


def quote(symbol, mid):
    return {"symbol": symbol, "global_mid": str(mid)}


async def test_a_feed_naming_each_symbol_once_stays_within_state_bytes(make_server, keystore):
    # 3,000 symbols, each published once: the node keeps the latest state of
    # the most recent ones within --state-bytes, interns no topic for any,
    # and a symbol it let go comes back with its next update.
    server = await make_server(state_bytes=1 << 16)
    pub = server.marketai.publish
    for i in range(3000):
        pub("quotes", f"S{i}/USDT", quote(f"S{i}/USDT", i))
        assert server.latest.bytes <= 1 << 16
    assert 0 < len(server.latest) < 3000 and server.latest.evicted == 3000 - len(server.latest)
    assert server.hub.index.topics == len(CHANNELS)
    async with websockets.connect(url(server, keystore.add("max"))) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["S2999/USDT", "S0/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        assert (await recv(ws))["data"] == quote("S2999/USDT", 2999)     # kept
        assert await silent(ws)                                          # S0/USDT was let go
        pub("quotes", "S0/USDT", quote("S0/USDT", "again"))
        assert (await recv(ws))["data"] == quote("S0/USDT", "again")
    async with websockets.connect(url(server, keystore.add("max"))) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["S0/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        assert (await recv(ws))["data"] == quote("S0/USDT", "again")     # kept again


async def test_v4_instruments_a_feed_named_are_bounded(make_server, monkeypatch):
    # Past MAX_INSTRUMENTS, the least recently published instrument is
    # forgotten (a subscription to it is 404) until it is published again.
    monkeypatch.setattr(monday, "MAX_INSTRUMENTS", 50)
    server = await make_server()
    addr = ["0x%040x" % i for i in range(60)]
    for a in addr:
        server.monday.publish_instrument(143, a, 0, "orderBook", {"bids": [], "asks": [], "a": a})
    assert len(server.monday.instruments) == 50
    async with websockets.connect(v4url(server)) as ws:
        params = {"type": "orderBook", "chainId": 143, "expiry": 0}
        await send(ws, req(1, {**params, "instrument": addr[-1]}))
        assert await recv(ws) == {"id": 1, "result": "success"}
        assert (await recv(ws))["data"]["a"] == addr[-1]                # its snapshot
        await send(ws, req(2, {**params, "instrument": addr[0]}))
        assert (await recv(ws))["code"] == 404
        server.monday.publish_instrument(143, addr[0], 0, "orderBook", {"bids": [], "asks": [], "a": addr[0]})
        await send(ws, req(3, {**params, "instrument": addr[0]}))
        assert await recv(ws) == {"id": 3, "result": "success"}
        assert (await recv(ws))["data"]["a"] == addr[0]
        assert len(server.monday.instruments) == 50


def test_latest_state_counts_what_it_keeps_and_evicts_the_least_recently_updated():
    import random

    from tickcast.dialects.state import KEY_OVERHEAD, TOPIC_OVERHEAD, LatestState
    rng = random.Random(5)
    st, model = LatestState(1 << 30), {}
    for _ in range(5000):
        topic, state = rng.randrange(200), rng.randrange(3)
        payload = b"p" * rng.randrange(1, 300)
        st.put("book", topic, state, payload)
        model.setdefault(topic, {})[state] = payload
        model[topic] = model.pop(topic)                       # most recently updated last
    assert st.bytes == sum(TOPIC_OVERHEAD - KEY_OVERHEAD + sum(KEY_OVERHEAD + len(p) for p in s.values())
                           for s in model.values())
    for topic, states in model.items():
        assert sorted(st.get("book", topic)) == sorted(states.values())
        assert st.stream("book", topic, 0) == states.get(0)
    st.budget = st.bytes // 2                                  # half must go, oldest first
    st.put("book", "new", 0, b"x")
    kept = [t for t in model if st.get("book", t)]
    assert kept == list(model)[-len(kept):] and st.bytes <= st.budget
    assert st.evicted == len(model) - len(kept)
    assert sorted(st.names("book"), key=str) == sorted(kept + ["new"], key=str)


def test_latest_state_holds_about_what_it_counts():
    # --state-bytes bounds the process's memory only if what is counted is
    # what is held: orjson's output keeps a 4 KiB buffer whatever its length,
    # so a kept payload must be a copy of its own size.
    import tracemalloc

    import orjson

    from tickcast.dialects.state import LatestState
    st = LatestState(1 << 30)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            st.put("quotes", f"S{i}/USDT", (), orjson.dumps({"type": "update", "data": {"symbol": f"S{i}/USDT"}}))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert st.bytes * 0.8 <= held <= st.bytes * 1.25
