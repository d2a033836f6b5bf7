"""The Monday-style public API at /v4/public/ws, rule by rule of monday-wire.md."""
import asyncio
import json
import time

import pytest
import websockets
from conftest import closed_with, recv, send, silent, subscribe, until, url

from tickcast.feeds.perp import INTERVALS, PERPETUAL, SimulatedPerpExchange, kline_bucket

NOW = time.time()


@pytest.fixture
async def v4(make_server):
    feed = SimulatedPerpExchange(seed=3, tick=0.1)
    server = await make_server(feed=feed)
    await until(lambda: server.monday.instruments)     # the first step makes every market known
    return server, feed


def v4url(server):
    return url(server, path="/v4/public/ws")


def market(feed, chain=143, base="ETH"):
    return next(m for (c, _), m in feed.markets.items() if c == chain and m.base == base)


def params(kind, m=None, expiry=PERPETUAL, **extra):
    p = {"type": kind, "chainId": m.chain if m else 143}
    if kind in ("kline", "orderBook", "instrument", "instrumentBasicInfo"):
        p.update(instrument=m.addr, expiry=expiry)
    p.update(extra)
    return p


def req(rid, kind_or_params, method="SUBSCRIBE", **kw):
    p = kind_or_params if isinstance(kind_or_params, dict) else params(kind_or_params, **kw)
    return {"id": rid, "method": method, "params": p}


async def test_vendor_style_client(v4):
    """Written as the vendor's docs show a client: frames with an id are acks,
    frames with a stream are data."""
    server, feed = v4
    m = market(feed)
    acks, streams = {}, []
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(1, "orderBook", m=m))
        await send(ws, req(2, "kline", m=m, interval="1m"))
        await send(ws, req(3, "instrument", m=m))
        await send(ws, req(4, "common", chainId=143))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except asyncio.TimeoutError:
                continue
            if "id" in msg:
                acks[msg["id"]] = msg
            elif "stream" in msg:
                streams.append(msg)
            else:
                raise AssertionError(f"neither ack nor data: {msg}")
    assert acks == {i: {"id": i, "result": "success"} for i in (1, 2, 3, 4)}
    names = {s["stream"] for s in streams}
    assert {"orderBook", "kline", "instrument", "marketPairInfoChanged", "blockNumChanged"} <= names
    assert all("id" not in s for s in streams)


async def test_ack_then_snapshot_for_each_snapshot_type(v4):
    server, feed = v4
    m = market(feed)
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(7, "orderBook", m=m))
        assert await recv(ws) == {"id": 7, "result": "success"}
        book = await recv(ws)
        assert (book["stream"], book["chainId"], book["instrument"], book["expiry"]) == \
               ("orderBook", 143, m.addr, PERPETUAL)
        assert set(book["data"]) == {"1", "10", "100", "200"}

    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(8, "instrument", m=m))
        assert await recv(ws) == {"id": 8, "result": "success"}
        first, second = await recv(ws), await recv(ws)
        assert [first["stream"], second["stream"]] == ["instrument", "marketPairInfoChanged"]
        assert first["data"]["instrumentAddr"] == m.addr == second["data"]["instrumentAddr"]

    async with websockets.connect(v4url(server)) as ws:
        for i, iv in enumerate(INTERVALS):
            await send(ws, req(100 + i, "kline", m=m, interval=iv))
            assert await recv(ws) == {"id": 100 + i, "result": "success"}
            k = await recv(ws)
            while k.get("stream") != "kline" or k["data"]["interval"] != iv:   # live pushes may interleave
                k = await recv(ws)
            d = k["data"]
            assert set(d) == {"interval", "open", "high", "low", "close", "baseVolume", "quoteVolume",
                              "volumeUSD", "timestamp", "startTime", "endTime"}
            assert all(isinstance(d[f], (int, float)) for f in ("open", "high", "low", "close", "baseVolume"))
            assert d["low"] <= min(d["open"], d["close"]) <= max(d["open"], d["close"]) <= d["high"]
            assert (d["startTime"], d["endTime"]) == kline_bucket(iv, d["timestamp"])
            assert abs(d["timestamp"] - NOW) < 3600                             # seconds, not ms


async def test_instrument_basic_info_acks_and_never_pushes(v4):
    server, feed = v4
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(5, "instrumentBasicInfo", m=market(feed)))
        assert await recv(ws) == {"id": 5, "result": "success"}
        assert await silent(ws, 1.5)


@pytest.mark.parametrize("message,code,text", [
    ({"id": 1, "method": "PUBLISH", "params": {"type": "common", "chainId": 143}}, 400, "invalid method"),
    ({"id": 1, "params": {"type": "common", "chainId": 143}}, 400, "invalid method"),
    ({"id": 1, "method": "SUBSCRIBE", "params": [1]}, 400, "params must be an object"),
    ({"id": 1, "method": "SUBSCRIBE"}, 400, "params must be an object"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "trades", "chainId": 143}}, 400, "unknown type"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"chainId": 143}}, 400, "unknown type"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "common"}}, 400, "missing param 'chainId'"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "common", "chainId": "x1"}}, 400, "invalid chainId"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "common", "chainId": -5}}, 400, "invalid chainId"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "common", "chainId": True}}, 400, "invalid chainId"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "orderBook", "chainId": 143, "expiry": 1}}, 400,
     "missing param 'instrument'"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "orderBook", "chainId": 143, "instrument": "0x12",
                                                 "expiry": 1}}, 400, "invalid instrument"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "orderBook", "chainId": 143, "instrument": "0x" + "a" * 40,
                                                 "expiry": 2 ** 32}}, 400, "invalid expiry"),
    ({"id": 1, "method": "SUBSCRIBE", "params": {"type": "portfolio", "chainId": 143, "userAddress": "bob"}}, 400,
     "invalid userAddress"),
])
async def test_bad_requests_are_400_with_the_id(v4, message, code, text):
    server, _ = v4
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, message)
        reply = await recv(ws)
        assert reply["id"] == 1 and reply["result"] == "error" and reply["code"] == code
        assert text in reply["msg"], reply


async def test_bad_interval_message_is_the_documented_one(v4):
    server, feed = v4
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(2, "kline", m=market(feed), interval="2m"))
        assert await recv(ws) == {"id": 2, "result": "error", "code": 400,
                                  "msg": "invalid interval '2m'; expected one of 1m,5m,15m,30m,1h,4h,8h,12h,1d,1w,1M"}


async def test_unknown_chain_or_instrument_is_404(v4):
    server, feed = v4
    m = market(feed)
    async with websockets.connect(v4url(server)) as ws:
        for p in ({"type": "common", "chainId": 1},
                  {"type": "portfolio", "chainId": 999, "userAddress": "0x" + "b" * 40},
                  params("orderBook", m, instrument="0x" + "c" * 40),
                  params("orderBook", m, expiry=12345),
                  params("kline", market(feed, 8453), chainId=143, interval="1h")):
            await send(ws, req(9, p))
            reply = await recv(ws)
            assert (reply["id"], reply["result"], reply["code"]) == (9, "error", 404), (p, reply)


@pytest.mark.parametrize("frame", ["not json", "[1, 2]", '"ping me"', "{}", '{"method": "SUBSCRIBE"}',
                                   '{"id": "7", "method": "SUBSCRIBE", "params": {}}',
                                   '{"id": null, "method": "SUBSCRIBE"}', '{"id": true}', "{bad"])
async def test_unusable_id_gets_id_null_and_stays_open(v4, frame):
    server, _ = v4
    async with websockets.connect(v4url(server)) as ws:
        await ws.send(frame)
        assert await recv(ws) == {"id": None, "result": "error", "code": 400, "msg": "invalid JSON"}
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 3) == "pong"


async def test_text_ping(v4):
    server, _ = v4
    async with websockets.connect(v4url(server)) as ws:
        for ping in ("ping", " PING \n", "Ping", "\tping"):
            await ws.send(ping)
            assert await asyncio.wait_for(ws.recv(), 3) == "pong"     # text, not JSON


async def test_duplicates_unsubscribe_and_lenient_params(v4):
    server, feed = v4
    user = "0x" + "ab" * 20
    p = {"type": "portfolio", "chainId": 143, "userAddress": user}
    lenient = {"type": "portfolio", "chainId": "143", "userAddress": user.upper().replace("0X", "0x"),
               "extra": "ignored"}
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(1, p))
        await send(ws, req(2, lenient, method="subscribe"))
        assert await recv(ws) == {"id": 1, "result": "success"}
        assert await recv(ws) == {"id": 2, "result": "success"}
        server.monday.publish_portfolio(143, user, {"chainId": 143, "userAddress": user, "type": "gate"})
        frame = await recv(ws)
        assert frame == {"stream": "portfolio", "chainId": 143,
                         "data": {"chainId": 143, "userAddress": user, "type": "gate"}}
        assert await silent(ws)                                # once, not twice
        await send(ws, req(3, p, method="UNSUBSCRIBE"))
        assert await recv(ws) == {"id": 3, "result": "success"}
        server.monday.publish_portfolio(143, user, {"chainId": 143, "userAddress": user, "type": "gate"})
        assert await silent(ws)
        await send(ws, req(4, p, method="UNSUBSCRIBE"))         # not subscribed: success all the same
        assert await recv(ws) == {"id": 4, "result": "success"}


async def test_order_book_units_order_and_sums(v4):
    server, feed = v4
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(1, "orderBook", m=market(feed, base="BTC")))
        await recv(ws)
        book = (await recv(ws))["data"]
    for depth, view in book.items():
        assert set(view) == {"blockInfo", "bids", "asks"}
        assert set(view["blockInfo"]) == {"height", "timestamp"} and abs(view["blockInfo"]["timestamp"] - NOW) < 3600
        assert view["bids"] and view["asks"]
        for side, descending in (("bids", True), ("asks", False)):
            levels = view[side]
            prices = [int(lv["price"]) for lv in levels]
            assert prices == sorted(prices, reverse=descending)
            base_sum = quote_sum = 0
            for lv in levels:
                assert isinstance(lv["tick"], int) and lv["tick"] % int(depth) == 0
                for f in ("price", "baseSize", "quoteSize", "baseSum", "quoteSum"):
                    assert isinstance(lv[f], str) and lv[f].isdigit()
                base_sum += int(lv["baseSize"])
                quote_sum += int(lv["quoteSize"])
                assert int(lv["baseSum"]) == base_sum and int(lv["quoteSum"]) == quote_sum
                assert int(lv["quoteSize"]) == int(lv["baseSize"]) * int(lv["price"]) // 10 ** 18
                assert abs(int(lv["price"]) / 1e18 - 1.0001 ** lv["tick"]) < 1e-9 * 1.0001 ** lv["tick"] + 1e-18
        assert int(view["bids"][0]["price"]) < int(view["asks"][0]["price"])


async def test_market_summary_and_instrument_units(v4):
    server, feed = v4
    m = market(feed)
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(1, "instrument", m=m))
        await recv(ws)
        inst, pair = (await recv(ws))["data"], (await recv(ws))["data"]
    for f in ("markPrice", "fairPrice", "spotPrice", "baseVolume24h", "openInterests", "tvl", "fundingRatePerHour"):
        float(pair[f])
        assert isinstance(pair[f], str)
    assert pair["fullSymbol"] == "ETH/USD-PERP" and pair["marketType"] == "perp"
    assert isinstance(pair["maxLeverage"], int) and isinstance(pair["updateTime"], int)
    amm = next(a for a in inst["amms"] if a["expiry"] == PERPETUAL)
    for f in ("sqrtPX96", "liquidity", "totalLong", "longFundingIndex", "insuranceFund", "markPrice"):
        assert isinstance(amm[f], str) and amm[f].lstrip("-").isdigit()
    assert amm["status"] in (0, 1, 2, 3) and inst["condition"] in (0, 1, 2)
    fair = 1.0001 ** amm["tick"]
    assert abs(int(amm["sqrtPX96"]) / 2 ** 96 - fair ** 0.5) < 1e-6 * fair ** 0.5
    assert {a["expiry"] for a in inst["amms"]} >= {PERPETUAL}
    assert len(inst["amms"]) >= 2                            # a dated expiry beside the perpetual


async def test_chains_are_independent_and_market_list_is_full(v4):
    server, feed = v4
    async with websockets.connect(v4url(server)) as a, websockets.connect(v4url(server)) as b:
        await send(a, req(1, "common", chainId=143))
        await send(b, req(1, "common", chainId=8453))
        await recv(a), await recv(b)
        seen = {143: set(), 8453: set()}
        lists = {}
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and (len(lists) < 2 or not all(seen.values())):
            for ws, chain in ((a, 143), (b, 8453)):
                try:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                except asyncio.TimeoutError:
                    continue
                assert msg["chainId"] == chain and set(msg) == {"stream", "chainId", "data"}
                assert msg["stream"] in ("blockNumChanged", "marketListChanged")
                seen[chain].add(msg["stream"])
                if msg["stream"] == "marketListChanged":
                    lists[chain] = msg["data"]
                else:
                    assert set(msg["data"]) == {"chainId", "blockNum", "blockTime"}
    for chain, markets in lists.items():
        expected = {(mk.addr, e) for (c, _), mk in feed.markets.items() if c == chain for e in mk.amms}
        assert {(x["instrumentAddr"], x["expiry"]) for x in markets} == expected


async def test_portfolio_of_a_simulated_trader(v4):
    server, feed = v4
    trader = feed.traders[143][0]
    kinds = set()
    async with websockets.connect(v4url(server)) as ws:
        await send(ws, req(1, {"type": "portfolio", "chainId": 143, "userAddress": trader}))
        assert await recv(ws) == {"id": 1, "result": "success"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "order" not in kinds:
            msg = await recv(ws, 15)
            d = msg["data"]
            assert msg["stream"] == "portfolio" and msg["chainId"] == 143 and d["userAddress"] == trader
            assert d["type"] in ("order", "range", "position", "gate")
            assert ("orderInfo" in d) == (d["type"] == "order")
            if "orderInfo" in d:
                assert d["orderInfo"]["type"] in ("placed", "filled", "partialFilled", "canceled")
                assert int(d["orderInfo"]["oid"]) > 0 and int(d["orderInfo"]["orderId"]) > 0
            kinds.add(d["type"])
    assert "order" in kinds


async def test_portfolios_nobody_watches_keep_no_topic(make_server):
    # Any address may be watched; only those watched at once keep a topic.
    server = await make_server(rate=1000, burst=100)
    server.monday.publish_common(143, "blockNumChanged", {})        # chain 143 exists
    index, base = server.hub.index, server.hub.index.topics
    users = ["0x%040x" % i for i in range(1, 31)]
    async with websockets.connect(v4url(server)) as ws:
        for method in ("SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"):
            for rid, user in enumerate(users):
                await send(ws, req(rid, {"type": "portfolio", "chainId": 143, "userAddress": user}, method=method))
            for rid in range(len(users)):
                assert await recv(ws) == {"id": rid, "result": "success"}
            assert index.topics == base + (len(users) if method == "SUBSCRIBE" else 0)
        assert server.monday.publish_portfolio(143, users[0], {"type": "gate"}) == 1
    await until(lambda: not server.connections)
    assert index.topics == base              # closing gave back every one (publishing interns none)


async def test_subscription_limit_is_429(make_server):
    server = await make_server(v4_max_subscriptions=2)
    for c in (143, 144, 145):
        server.monday.publish_common(c, "blockNumChanged", {})
    async with websockets.connect(v4url(server)) as ws:
        for rid, chain in enumerate((143, 144, 145)):
            await send(ws, req(rid, "common", chainId=chain))
        assert (await recv(ws))["result"] == "success"
        assert (await recv(ws))["result"] == "success"
        reply = await recv(ws)
        assert (reply["id"], reply["code"]) == (2, 429)
        await send(ws, req(9, "common", chainId=143, method="UNSUBSCRIBE"))
        await recv(ws)
        await send(ws, req(10, "common", chainId=145))
        assert await recv(ws) == {"id": 10, "result": "success"}


async def test_per_address_connection_limit_is_429(make_server):
    server = await make_server(v4_max_connections_per_ip=2)
    a = await websockets.connect(v4url(server))
    b = await websockets.connect(v4url(server))
    async with websockets.connect(v4url(server)) as c:
        assert await recv(c) == {"id": None, "result": "error", "code": 429,
                                 "msg": "too many connections from this address"}
        assert (await closed_with(c))[0] == 1008
    await a.close()
    await asyncio.sleep(0.1)
    async with websockets.connect(v4url(server)) as d:
        await d.send("ping")
        assert await asyncio.wait_for(d.recv(), 3) == "pong"
    await b.close()


async def test_request_rate_is_429_with_the_id(make_server):
    server = await make_server(rate=2, burst=2)
    server.monday.publish_common(143, "blockNumChanged", {})
    async with websockets.connect(v4url(server)) as ws:
        for rid in range(4):
            await send(ws, req(rid, "common", chainId=143))
        replies = [await recv(ws) for _ in range(4)]
        assert [r["result"] for r in replies[:2]] == ["success", "success"]
        assert replies[2] == {"id": 2, "result": "error", "code": 429, "msg": "too many requests"}


async def test_one_core_serves_both_dialects_in_one_tick(make_server, key):
    server = await make_server()
    assert server.monday.hub is server.marketai.hub is server.hub
    user = "0x" + "cd" * 20
    server.monday.publish_portfolio(143, user, {})
    async with websockets.connect(url(server, key)) as m, websockets.connect(v4url(server)) as v:
        await send(m, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        await send(v, req(1, {"type": "portfolio", "chainId": 143, "userAddress": user}))
        await recv(m), await recv(v)
        delivered, writes = server.hub.delivered, server.hub.writes
        # One tick: both publishes, then one flush writes each connection once.
        assert server.marketai.publish("trades", "BTC/USDT", {"symbol": "BTC/USDT"}) == 1
        assert server.monday.publish_portfolio(143, user, {"type": "gate"}) == 1
        assert server.hub.delivered == delivered + 2
        assert (await recv(m))["data"] == {"symbol": "BTC/USDT"}
        assert (await recv(v))["data"] == {"type": "gate"}
        assert server.hub.writes == writes + 2


async def test_marketai_path_still_needs_a_key_and_v4_does_not(server):
    async with websockets.connect(v4url(server)) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 3) == "pong"
    async with websockets.connect(url(server)) as ws:
        await send(ws, {"action": "ping"})
        assert (await recv(ws))["code"] == "UNAUTHORIZED"


async def test_protocol_ping_gets_a_pong_frame(v4):
    server, _ = v4
    async with websockets.connect(v4url(server)) as ws:
        latency = await asyncio.wait_for(await ws.ping(), 3)
        assert latency >= 0


def test_expiry_rollover_changes_the_market_list():
    """A dated expiry that passes is delisted, the next is listed, and the
    list goes out at once rather than at the next periodic send."""
    class Sink:
        def __init__(self):
            self.lists = []

        def publish_common(self, chain, stream, data):
            if stream == "marketListChanged" and chain == 143:
                self.lists.append({(x["instrumentAddr"], x["expiry"]) for x in data})

        def __getattr__(self, name):
            return lambda *a, **k: 0

    ex, sink = SimulatedPerpExchange(seed=2, tick=0.1), Sink()
    t = time.time()
    ex.publish_step(sink, t)
    ex.publish_step(sink, t + 0.1)
    assert len(sink.lists) == 1
    dated = next(e for m in ex.markets.values() for e in m.amms if e != PERPETUAL)
    ex.publish_step(sink, dated + 1.0)
    assert len(sink.lists) == 2
    before, after = sink.lists
    assert {e for _, e in before} - {e for _, e in after} == {dated}
    assert all(e > dated for _, e in after if e != PERPETUAL)
