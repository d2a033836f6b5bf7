"""Subscribe / unsubscribe rules, symbol limits, snapshots and delivery."""
import asyncio

import uvloop
import websockets
from conftest import recv, send, silent, subscribe, until, url
from tickcast.wire.marketai import CHANNELS


async def connect(server, keystore, tier="max"):
    return await websockets.connect(url(server, keystore.add(tier)))


def trade(symbol, n=1):
    return {"exchange": "binance", "symbol": symbol, "price": "1.00", "quantity": "1",
            "side": "buy", "timestamp": 1, "trade_id": f"t{n}", "is_liquidation": False}


async def test_runs_on_uvloop(server):
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_one_confirmation_per_channel_in_order(server, keystore):
    async with await connect(server, keystore) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["btc/usdt", "ETH/USDT"]},
                                 {"type": "signals"},
                                 {"type": "trades", "symbols": ["BTC/USDT"]},
                                 {"type": "funding", "symbols": []}))
        assert await recv(ws) == {"type": "subscribed", "channel": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}
        assert await recv(ws) == {"type": "subscribed", "channel": "signals", "symbols": ["*"]}
        assert await recv(ws) == {"type": "subscribed", "channel": "trades", "symbols": ["BTC/USDT"]}
        assert await recv(ws) == {"type": "subscribed", "channel": "funding", "symbols": ["*"]}
        assert await silent(ws)


async def test_updates_reach_only_subscribers_with_envelope(server, keystore):
    async with await connect(server, keystore) as a, await connect(server, keystore) as b:
        await send(a, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
        await send(b, subscribe({"type": "trades", "symbols": ["ETH/USDT"]}))
        await recv(a), await recv(b)
        assert server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT"), ts=1708776300000) == 1
        msg = await recv(a)
        assert msg == {"type": "update", "channel": "trades", "ts": 1708776300000, "data": trade("BTC/USDT")}
        assert await silent(b)


async def test_wildcard_and_symbol_deliver_once(server, keystore):
    async with await connect(server, keystore) as ws:
        await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}, {"type": "trades"}))
        await recv(ws), await recv(ws)
        server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT"))
        server.marketai.publish("trades", "SOL/USDT", trade("SOL/USDT"))
        assert (await recv(ws))["data"]["symbol"] == "BTC/USDT"
        assert (await recv(ws))["data"]["symbol"] == "SOL/USDT"
        assert await silent(ws)


async def test_repeated_subscribe_is_confirmed_without_duplicates(server, keystore):
    async with await connect(server, keystore) as ws:
        for _ in range(3):
            await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
            assert await recv(ws) == {"type": "subscribed", "channel": "trades", "symbols": ["BTC/USDT"]}
        server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT"))
        await recv(ws)
        assert await silent(ws)


async def test_unsubscribe(server, keystore):
    async with await connect(server, keystore) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}))
        await recv(ws)
        await send(ws, {"action": "unsubscribe", "channels": [{"type": "quotes", "symbols": ["ETH/USDT"]}]})
        assert await recv(ws) == {"type": "unsubscribed", "channel": "quotes", "symbols": ["ETH/USDT"]}
        server.marketai.publish("quotes", "ETH/USDT", {"symbol": "ETH/USDT"})
        assert await silent(ws)
        server.marketai.publish("quotes", "BTC/USDT", {"symbol": "BTC/USDT"})
        assert (await recv(ws))["data"] == {"symbol": "BTC/USDT"}
        # Not subscribed: confirmed all the same.
        await send(ws, {"action": "unsubscribe", "channels": [{"type": "trades", "symbols": ["XRP/USDT"]}]})
        assert await recv(ws) == {"type": "unsubscribed", "channel": "trades", "symbols": ["XRP/USDT"]}
        # No symbols: the whole channel.
        await send(ws, {"action": "unsubscribe", "channels": [{"type": "quotes"}]})
        assert await recv(ws) == {"type": "unsubscribed", "channel": "quotes", "symbols": ["*"]}
        server.marketai.publish("quotes", "BTC/USDT", {"symbol": "BTC/USDT"})
        assert await silent(ws)


async def test_invalid_channel_does_not_stop_other_entries(server, keystore):
    async with await connect(server, keystore) as ws:
        await send(ws, subscribe({"type": "nope"}, {"type": "trades", "symbols": ["BTC/USDT"]}, {"symbols": ["X/Y"]}))
        assert await recv(ws) == {"type": "error", "code": "INVALID_CHANNEL", "message": "Unknown channel type 'nope'."}
        assert (await recv(ws))["type"] == "subscribed"
        assert (await recv(ws))["code"] == "INVALID_CHANNEL"
        await send(ws, {"action": "unsubscribe", "channels": [{"type": "bogus"}]})
        assert (await recv(ws))["code"] == "INVALID_CHANNEL"


async def test_invalid_messages(server, keystore):
    async with await connect(server, keystore) as ws:
        cases = ["not json", "[1,2]", '"str"', "{}", '{"action": "dance"}',
                 '{"action": "subscribe"}', '{"action": "subscribe", "channels": []}',
                 '{"action": "subscribe", "channels": "quotes"}',
                 '{"action": "subscribe", "channels": [42]}',
                 '{"action": "subscribe", "channels": [{"type": "quotes", "symbols": "BTC/USDT"}]}',
                 '{"action": "subscribe", "channels": [{"type": "quotes", "symbols": ["BTCUSDT"]}]}',
                 '{"action": "subscribe", "channels": [{"type": "quotes", "symbols": [7]}]}',
                 '{"action": "subscribe", "channels": [{"type": "quotes", "symbols": ["B T C/USDT"]}]}',
                 '{"action": "auth", "key": "whatever"}', "\ud800".encode("utf-8", "surrogatepass")]
        for c in cases:
            await ws.send(c)
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["code"] == "INVALID_MESSAGE", (c, reply)
            assert reply["message"]
        await ws.send("{bad")
        assert await recv(ws) == {"type": "error", "code": "INVALID_MESSAGE", "message": "Invalid JSON"}
        # The connection is still fine.
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_symbol_limit_partial_subscribe(server, keystore):
    async with await connect(server, keystore, "free") as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["A1/USDT", "A2/USDT", "A3/USDT"]},
                                 {"type": "trades", "symbols": ["A1/USDT", "A4/USDT", "A5/USDT", "A6/USDT", "A7/USDT"]}))
        assert await recv(ws) == {"type": "subscribed", "channel": "quotes", "symbols": ["A1/USDT", "A2/USDT", "A3/USDT"]}
        # A1 counts once across channels; A4 and A5 fit; A6, A7 do not.
        assert await recv(ws) == {"type": "subscribed", "channel": "trades", "symbols": ["A1/USDT", "A4/USDT", "A5/USDT"]}
        assert await recv(ws) == {"type": "error", "code": "SYMBOL_LIMIT_EXCEEDED",
                                  "message": "Symbol limit (5) exceeded. Rejected: A6/USDT, A7/USDT"}
        server.marketai.publish("trades", "A6/USDT", trade("A6/USDT"))
        assert await silent(ws)
        # Freeing a symbol makes room again.
        await send(ws, {"action": "unsubscribe", "channels": [{"type": "quotes", "symbols": ["A2/USDT"]}]})
        await recv(ws)
        await send(ws, subscribe({"type": "trades", "symbols": ["A6/USDT", "A7/USDT"]}))
        assert await recv(ws) == {"type": "subscribed", "channel": "trades", "symbols": ["A6/USDT"]}
        assert (await recv(ws))["message"].endswith("Rejected: A7/USDT")


async def test_wildcard_counts_as_one_symbol(server, keystore):
    async with await connect(server, keystore, "free") as ws:
        await send(ws, subscribe({"type": "signals"}, {"type": "trades"},
                                 {"type": "quotes", "symbols": ["A1/B", "A2/B", "A3/B", "A4/B", "A5/B"]}))
        assert (await recv(ws))["symbols"] == ["*"]
        assert (await recv(ws))["symbols"] == ["*"]
        assert (await recv(ws))["symbols"] == ["A1/B", "A2/B", "A3/B", "A4/B"]
        assert (await recv(ws))["message"] == "Symbol limit (5) exceeded. Rejected: A5/B"


async def test_polymarket_filters_name_a_coin(server, keystore):
    async with await connect(server, keystore) as a, await connect(server, keystore) as b:
        await send(a, subscribe({"type": "polymarket", "symbols": ["BTC"]}))
        await send(b, subscribe({"type": "polymarket", "symbols": ["btc/usdt"]}))
        assert (await recv(a))["symbols"] == ["BTC"]
        assert (await recv(b))["symbols"] == ["BTC"]
        server.marketai.publish("polymarket", "BTC", {"coin": "BTC", "timeframe": "1h"})
        assert (await recv(a))["data"]["coin"] == "BTC"
        assert (await recv(b))["data"]["coin"] == "BTC"


async def test_state_channel_snapshot_follows_confirmation(server, keystore):
    pub = server.marketai.publish
    pub("quotes", "BTC/USDT", {"symbol": "BTC/USDT", "global_mid": "1"})
    pub("quotes", "BTC/USDT", {"symbol": "BTC/USDT", "global_mid": "2"})
    pub("book", "ETH/USDT", {"symbol": "ETH/USDT", "exchange": "binance", "best_bid": "1"})
    pub("book", "ETH/USDT", {"symbol": "ETH/USDT", "exchange": "okx", "best_bid": "2"})
    pub("trades", "BTC/USDT", trade("BTC/USDT"))   # an event channel: no snapshot
    async with await connect(server, keystore) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT", "SOL/USDT"]},
                                 {"type": "trades", "symbols": ["BTC/USDT"]}, {"type": "book"}))
        assert (await recv(ws))["type"] == "subscribed"
        assert (await recv(ws))["data"]["global_mid"] == "2"      # latest only
        assert (await recv(ws))["channel"] == "trades"
        assert (await recv(ws))["channel"] == "book"
        books = [await recv(ws), await recv(ws)]
        assert {m["data"]["exchange"] for m in books} == {"binance", "okx"}
        assert await silent(ws)
        # Already flowing: no second snapshot.
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT"]}))
        assert (await recv(ws))["type"] == "subscribed"
        assert await silent(ws)


async def test_app_ping(server, keystore):
    async with await connect(server, keystore) as ws:
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_disconnect_frees_slot_and_subscriptions(server, keystore):
    ws = await connect(server, keystore)
    await send(ws, subscribe({"type": "trades"}))
    await recv(ws)
    await ws.close()
    await until(lambda: not server.connections)
    assert not server.connections
    assert server.hub.index.slots() == []
    assert server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT")) == 0


async def test_symbols_nobody_holds_keep_no_topic(server, keystore):
    # A client may name any number of well-formed symbols over time, and a
    # feed may publish any number: only the ones held at once keep a topic.
    index = server.hub.index
    server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT"))      # a feed's symbol: no topic
    fed = index.topics
    assert fed == len(CHANNELS)                   # the channels' wildcards, nothing else
    unsubscribe = {"action": "unsubscribe", "channels": []}
    async with await connect(server, keystore) as ws:
        for n in range(5):
            symbols = [f"X{n}N{i}/USDT" for i in range(20)] + ["BTC/USDT"]
            await send(ws, subscribe({"type": "trades", "symbols": symbols}))
            await recv(ws)
            assert index.topics == fed + 21
            await send(ws, {**unsubscribe, "channels": [{"type": "trades", "symbols": symbols}]})
            await recv(ws)
            assert index.topics == fed
        # A new symbol takes an id given back and hears its own updates only.
        await send(ws, subscribe({"type": "trades", "symbols": ["NEW/USDT", "X4N19/USDT"]}))
        await recv(ws)
        assert server.marketai.publish("trades", "X0N0/USDT", trade("X0N0/USDT")) == 0
        assert server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT")) == 0
        assert server.marketai.publish("trades", "NEW/USDT", trade("NEW/USDT")) == 1
        assert (await recv(ws))["data"]["symbol"] == "NEW/USDT"
        assert await silent(ws)
        assert index.topics == fed + 2        # NEW/USDT and X4N19/USDT; publishing X0N0/USDT interned nothing
    await until(lambda: not server.connections)
    assert index.topics == fed                # closing gave back both


async def test_dense_updates_share_writes_sparse_ones_go_at_once(make_server, keystore):
    # Five updates in five successive loop iterations: one write each without
    # coalescing; with it, the first goes out at once and the other four wait
    # for the interval and share one write.
    for coalesce_us, expected_writes in ((50_000, 2), (0, 5)):
        server = await make_server(coalesce_us=coalesce_us)
        async with await connect(server, keystore) as ws:
            await send(ws, subscribe({"type": "trades", "symbols": ["BTC/USDT"]}))
            await recv(ws)
            await asyncio.sleep(0.1)                  # a quiet spell
            writes = server.hub.writes
            for i in range(5):
                server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT", i))
                await asyncio.sleep(0)
            got = [(await recv(ws))["data"]["trade_id"] for _ in range(5)]
            assert got == [f"t{i}" for i in range(5)]
            assert server.hub.writes - writes == expected_writes
            await asyncio.sleep(0.1)                  # quiet again: the next one is not held
            writes = server.hub.writes
            server.marketai.publish("trades", "BTC/USDT", trade("BTC/USDT", 5))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert server.hub.writes - writes == 1
