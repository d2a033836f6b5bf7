"""All nine channels from the simulated market: fields, types, units, coherence."""
import re
import time

import websockets
from conftest import recv, send, subscribe, url

from tickcast.feeds.market import EXCHANGES, KLINE_INTERVALS, SYMBOLS, SimulatedMarket

DEC = re.compile(r"^-?\d+(\.\d+)?$")
NOW_MS = time.time() * 1000


def dec(v): return isinstance(v, str) and DEC.match(v)
def num(v): return isinstance(v, (int, float)) and not isinstance(v, bool)
def ms(v): return isinstance(v, int) and not isinstance(v, bool) and abs(v - NOW_MS) < 86_400_000 * 2
def text(v): return isinstance(v, str) and v != ""
def boolean(v): return isinstance(v, bool)
def one_of(*xs): return lambda v: v in xs
def items(schema): return lambda v: isinstance(v, list) and all(check(schema, x) for x in v)


def check(schema, obj):
    assert isinstance(obj, dict) and set(obj) == set(schema), (sorted(obj), sorted(schema))
    for k, ok in schema.items():
        assert ok(obj[k]), (k, obj[k])
    return True


WALL = {"price": dec, "quantity": dec, "multiple_of_median": num}
SCHEMAS = {
    "quotes": {"symbol": text, "global_mid": dec, "global_vwap": dec, "max_arb_bps": num,
               "consensus_trend": one_of("bullish", "bearish", "neutral"),
               "exchanges": items({"exchange": text, "bid": dec, "ask": dec, "mid": dec,
                                   "volume_24h": dec, "obi": num})},
    "book": {"symbol": text, "exchange": text, "best_bid": dec, "best_ask": dec, "mid_price": dec,
             "spread_bps": num, "obi_5": num, "obi_10": num, "bid_depth_1pct": dec,
             "ask_depth_1pct": dec, "bid_walls": items(WALL), "ask_walls": items(WALL)},
    "trades": {"exchange": text, "symbol": text, "price": dec, "quantity": dec,
               "side": one_of("buy", "sell"), "timestamp": ms, "trade_id": text, "is_liquidation": boolean},
    "signals": {"id": text, "signal_type": one_of(
                    "whale_movement", "liquidation_cascade", "funding_spike", "orderbook_imbalance",
                    "spread_anomaly", "volume_spike", "cross_exchange_divergence", "wall_appearance",
                    "wall_removal", "price_level_break"),
                "symbol": text, "severity": one_of("info", "warning", "alert", "critical"),
                "data": lambda v: isinstance(v, dict), "timestamp": ms, "narrative": text},
    "liquidations": {"exchange": text, "symbol": text, "side": one_of("buy", "sell"), "price": dec,
                     "quantity": dec, "timestamp": ms, "notional_usd": dec},
    "funding": {"exchange": text, "symbol": text, "rate": num, "next_funding_time": ms,
                "predicted_rate": num},
    "klines": {"exchange": text, "symbol": text, "interval": one_of(*KLINE_INTERVALS), "open": dec,
               "high": dec, "low": dec, "close": dec, "volume": dec, "open_time": ms,
               "close_time": ms, "is_closed": boolean},
    "narratives": {"symbol": text, "narrative": text, "source": one_of("template", "llm")},
    "polymarket": {"coin": text, "timeframe": text, "upPrice": dec, "downPrice": dec, "volume": dec,
                   "liquidity": dec, "timeRemainingSeconds": lambda v: isinstance(v, int) and v > 0,
                   "active": boolean},
}


async def test_every_channel_of_every_symbol_within_10s(make_server, key):
    server = await make_server(feed=SimulatedMarket(seed=1, tick=0.1))
    async with websockets.connect(url(server, key), max_queue=None) as ws:
        await send(ws, subscribe(*({"type": c} for c in SCHEMAS)))
        confirmed = []
        wanted = {(c, s.split("/")[0] if c == "polymarket" else s) for c in SCHEMAS for s in SYMBOLS}
        seen, msgs = set(), []
        deadline = time.monotonic() + 10
        while seen != wanted and time.monotonic() < deadline:
            m = await recv(ws)
            if m["type"] == "subscribed":
                confirmed.append(m["channel"])
                continue
            assert m["type"] == "update" and ms(m["ts"]) and set(m) == {"type", "channel", "ts", "data"}
            check(SCHEMAS[m["channel"]], m["data"])
            d = m["data"]
            seen.add((m["channel"], d["coin"] if m["channel"] == "polymarket" else d["symbol"]))
            msgs.append(m)
        assert wanted - seen == set()
        assert confirmed == list(SCHEMAS)

    # Coherence. Quotes aggregate the books: at the same tick they agree.
    books = {(m["ts"], m["data"]["symbol"], m["data"]["exchange"]): m["data"]
             for m in msgs if m["channel"] == "book"}
    pairs = 0
    for m in msgs:
        if m["channel"] != "quotes":
            continue
        q = m["data"]
        mids = [float(x["mid"]) for x in q["exchanges"]]
        ulp = 10 ** -len(q["global_mid"].partition(".")[2])    # rounding of the printed values
        assert abs(float(q["global_mid"]) - sum(mids) / len(mids)) <= ulp
        assert [x["exchange"] for x in q["exchanges"]] == list(EXCHANGES)
        for x in q["exchanges"]:
            b = books.get((m["ts"], q["symbol"], x["exchange"]))
            if b is not None:
                assert (b["best_bid"], b["best_ask"]) == (x["bid"], x["ask"])
                pairs += 1
    assert pairs > 0
    # Klines are built from the trades: the open candle closes at the last trade.
    last_trade, checked = {}, 0
    for m in msgs:
        d = m["data"]
        if m["channel"] == "trades":
            last_trade[(d["symbol"], d["exchange"])] = (d["timestamp"], d["price"])
        elif m["channel"] == "klines":
            assert float(d["low"]) <= min(float(d["open"]), float(d["close"]))
            assert float(d["high"]) >= max(float(d["open"]), float(d["close"]))
            assert d["close_time"] - d["open_time"] == KLINE_INTERVALS[d["interval"]] * 1000
            t = last_trade.get((d["symbol"], d["exchange"]))
            if t is not None and t[0] >= d["open_time"] and not d["is_closed"]:
                assert d["close"] == t[1]
                checked += 1
        elif m["channel"] == "book":
            assert float(d["best_bid"]) < float(d["best_ask"])
        elif m["channel"] == "polymarket":
            assert abs(float(d["upPrice"]) + float(d["downPrice"]) - 1) < 1e-9
        elif m["channel"] == "liquidations":
            assert abs(float(d["notional_usd"]) - float(d["price"]) * float(d["quantity"])) < 0.01 * float(d["notional_usd"]) + 0.01
    assert checked > 0


def test_simulated_market_is_reproducible():
    t0 = 1_732_190_400.0
    a, b = SimulatedMarket(seed=7), SimulatedMarket(seed=7)
    c = SimulatedMarket(seed=8)
    run = lambda m: [m.step(t0 + i * 0.1) for i in range(50)]  # noqa: E731
    ra, rb, rc = run(a), run(b), run(c)
    assert ra == rb
    assert ra != rc


def test_the_simulated_market_starts_with_a_days_volume_and_reads_well():
    # A newcomer's first quote must not look like a dead market (volume_24h
    # read about 1 BTC after a few seconds), and the narratives read as English.
    m = SimulatedMarket(seed=1)
    out = [u for i in range(600) for u in m.step(1_732_190_400.0 + i * 0.1)]
    first = next(d for c, s, d, _ in out if c == "quotes" and s == "BTC/USDT")
    assert all(float(x["volume_24h"]) >= 1000 for x in first["exchanges"]), first["exchanges"]
    narratives = [d["narrative"] for c, _, d, _ in out if c == "signals"]
    walls = [n for n in narratives if " wall " in n]
    assert any(n.startswith("An ask wall") for n in walls) and any(n.startswith("A bid wall") for n in walls)
    assert not [n for n in narratives if re.search(r"\bA [aeiouAEIOU]", n)]
