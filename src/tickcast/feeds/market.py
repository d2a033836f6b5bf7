"""A seeded, reproducible simulated market for the Market.ai channels.

One random walk per symbol drives every exchange's order book; trades take
liquidity from those books; everything else is derived, so the channels agree:
quotes aggregate the books, klines are built from the trades, book analytics
come from the books, funding follows each exchange's premium, Polymarket odds
follow the price since the window opened, and signals come from detectors
watching the same events. With the defaults every channel of every symbol
emits within 10 seconds.
"""
from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tickcast.feeds.sink import Sink

SYMBOLS = {  # symbol: (start price, decimals of price, decimals of quantity, typical trade size)
    "BTC/USDT": (67450.0, 2, 4, 0.05),
    "ETH/USDT": (3450.0, 2, 3, 0.8),
    "SOL/USDT": (145.0, 3, 2, 15.0),
    "XRP/USDT": (0.5200, 4, 0, 2500.0),
}
EXCHANGES = ("binance", "okx", "bybit", "coinbase")
KLINE_INTERVALS = {"1m": 60, "5m": 300, "1h": 3600}
POLY_TIMEFRAMES = {"15m": 900, "1h": 3600}
LEVELS = 20
SIGNAL_COOLDOWN = 5.0


def fmt(x: float, decimals: int) -> str:
    return f"{x:.{decimals}f}"


@dataclass
class Book:
    bids: list[list[float]]        # [price, quantity], best first
    asks: list[list[float]]
    offset: float = 0.0            # this exchange's premium over the global price
    walls: dict = field(default_factory=dict)   # (side, level) -> multiple
    spread: int = 1                # levels between best bid and best ask
    volume_24h: float = 0.0
    trade_seq: int = 0
    funding: float = 0.0001

    def best(self) -> tuple[float, float]:
        return self.bids[0][0], self.asks[0][0]


@dataclass
class Candle:
    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


class SimulatedMarket:
    def __init__(self, seed: int = 1, tick: float = 0.1):
        self.rng = random.Random(seed)
        self.tick = tick
        self.n = 0
        self.price = {s: p for s, (p, *_) in SYMBOLS.items()}
        self.history = {s: deque(maxlen=600) for s in SYMBOLS}      # (t, price), last minute
        self.books = {(s, e): self._new_book(s) for s in SYMBOLS for e in EXCHANGES}
        self.candles: dict[tuple, Candle] = {}
        self.trades = {s: deque() for s in SYMBOLS}                  # (t, price, qty) for VWAP
        self.liqs = {s: deque() for s in SYMBOLS}
        self.last_signal: dict[tuple, float] = {}
        self.poly_open: dict[tuple, tuple[int, float]] = {}
        self.poly_volume = {(c, tf): 20000.0 for c in self._coins() for tf in POLY_TIMEFRAMES}
        self.signal_seq = 0
        self.wall_events: list[tuple] = []

    # -- model -----------------------------------------------------------------

    @staticmethod
    def _coins():
        return [s.split("/")[0] for s in SYMBOLS]

    def _step_of(self, symbol: str) -> float:
        """Distance between book levels: about 1 bp, a whole number of price ticks."""
        tick = 10.0 ** -SYMBOLS[symbol][1]
        return max(1, round(self.price[symbol] * 0.0001 / tick)) * tick

    def _new_book(self, symbol: str) -> Book:
        p, _, _, size = SYMBOLS[symbol]
        r = self.rng
        mk = lambda: [[0.0, size * r.lognormvariate(1.0, 0.6)] for _ in range(LEVELS)]  # noqa: E731
        # The 24-hour volume starts where trades of the typical size keep it
        # (_fill decays it by 1e-5 a trade), not at 0: a first quote from a dead market misleads.
        b = Book(mk(), mk(), offset=r.gauss(0, 0.0002), volume_24h=size * 1e5)
        self._anchor(symbol, b)
        return b

    def _anchor(self, symbol: str, b: Book) -> None:
        """Re-price the levels on the tick grid around this exchange's mid."""
        mid = self.price[symbol] * (1 + b.offset)
        step = self._step_of(symbol)
        best_bid = round(mid / step) * step - (b.spread + 1) // 2 * step
        for i, lvl in enumerate(b.bids):
            lvl[0] = best_bid - i * step
        for i, lvl in enumerate(b.asks):
            lvl[0] = best_bid + (b.spread + i) * step

    def _evolve(self, now: float) -> None:
        r = self.rng
        for s in SYMBOLS:
            self.price[s] *= math.exp(r.gauss(0, 0.00025))
            self.history[s].append((now, self.price[s]))
            for e in EXCHANGES:
                b = self.books[(s, e)]
                b.offset += -0.1 * b.offset + r.gauss(0, 0.00004)     # mean-reverting premium
                size = SYMBOLS[s][3]
                for side in (b.bids, b.asks):
                    for lvl in side:
                        lvl[1] = max(size * 0.05, lvl[1] * math.exp(r.gauss(0, 0.08)))
                if r.random() < 0.05:
                    b.spread = r.choices((1, 2, 3), (0.6, 0.3, 0.1))[0]
                # Walls come and go: a resting order of many times the median.
                if r.random() < 0.02:
                    where = (r.choice("ba"), r.randrange(3, LEVELS))
                    if where not in b.walls:
                        b.walls[where] = r.uniform(6, 15)
                        self.wall_events.append((s, e, "wall_appearance", where, b.walls[where]))
                if b.walls and r.random() < 0.015:
                    where = r.choice(list(b.walls))
                    self.wall_events.append((s, e, "wall_removal", where, b.walls.pop(where)))
                self._anchor(s, b)

    def _level_qty(self, b: Book, side: str, i: int, base: float) -> float:
        return base * b.walls.get((side, i), 1.0)

    def _book_view(self, b: Book):
        bids = [(p, self._level_qty(b, "b", i, q)) for i, (p, q) in enumerate(b.bids)]
        asks = [(p, self._level_qty(b, "a", i, q)) for i, (p, q) in enumerate(b.asks)]
        return bids, asks

    # -- derived views -----------------------------------------------------------

    @staticmethod
    def _obi(bids, asks, n: int) -> float:
        bv = sum(q for _, q in bids[:n])
        av = sum(q for _, q in asks[:n])
        return round((bv - av) / (bv + av), 4) if bv + av else 0.0

    def book_update(self, s: str, e: str) -> dict:
        _, pd, qd, _ = SYMBOLS[s]
        bids, asks = self._book_view(self.books[(s, e)])
        bid, ask = bids[0][0], asks[0][0]
        mid = (bid + ask) / 2
        median = statistics.median(q for _, q in bids + asks)
        walls = lambda side: [  # noqa: E731
            {"price": fmt(p, pd), "quantity": fmt(q, qd), "multiple_of_median": round(q / median, 1)}
            for p, q in side if q >= 5 * median]
        return {
            "symbol": s, "exchange": e,
            "best_bid": fmt(bid, pd), "best_ask": fmt(ask, pd), "mid_price": fmt(mid, pd),
            "spread_bps": round((ask - bid) / mid * 1e4, 2),
            "obi_5": self._obi(bids, asks, 5), "obi_10": self._obi(bids, asks, 10),
            "bid_depth_1pct": fmt(sum(q for p, q in bids if p >= mid * 0.99), qd),
            "ask_depth_1pct": fmt(sum(q for p, q in asks if p <= mid * 1.01), qd),
            "bid_walls": walls(bids), "ask_walls": walls(asks),
        }

    def quote_update(self, s: str, now: float) -> dict:
        _, pd, qd, _ = SYMBOLS[s]
        rows, mids = [], []
        best_bid, best_ask = 0.0, math.inf
        for e in EXCHANGES:
            b = self.books[(s, e)]
            bids, asks = self._book_view(b)
            bid, ask = bids[0][0], asks[0][0]
            best_bid, best_ask = max(best_bid, bid), min(best_ask, ask)
            mids.append((bid + ask) / 2)
            rows.append({"exchange": e, "bid": fmt(bid, pd), "ask": fmt(ask, pd),
                         "mid": fmt((bid + ask) / 2, pd), "volume_24h": fmt(b.volume_24h, qd or 1),
                         "obi": self._obi(bids, asks, 10)})
        mid = sum(mids) / len(mids)
        trades = self.trades[s]
        notional = sum(p * q for _, p, q in trades)
        qty = sum(q for _, _, q in trades)
        first = self.history[s][0][1]
        change = (self.price[s] - first) / first * 1e4
        trend = "bullish" if change > 3 else "bearish" if change < -3 else "neutral"
        return {
            "symbol": s, "global_mid": fmt(mid, pd),
            "global_vwap": fmt(notional / qty if qty else mid, pd),
            "max_arb_bps": round(max(0.0, (best_bid - best_ask) / mid * 1e4), 2),
            "consensus_trend": trend, "exchanges": rows,
        }

    def funding_update(self, s: str, e: str, now_ms: int) -> dict:
        b = self.books[(s, e)]
        predicted = max(-0.0075, min(0.0075, 0.0001 + b.offset * 0.5))
        b.funding = b.funding * 0.8 + predicted * 0.2
        period = 8 * 3600 * 1000
        return {"exchange": e, "symbol": s, "rate": round(b.funding, 6),
                "next_funding_time": (now_ms // period + 1) * period,
                "predicted_rate": round(predicted, 6)}

    # -- the loop ----------------------------------------------------------------

    async def run(self, sink: Sink) -> None:
        publish = sink.marketai.publish
        while True:
            started = time.monotonic()
            for channel, symbol, data, ts in self.step():
                publish(channel, symbol, data, ts)
            await asyncio.sleep(max(0.0, self.tick - (time.monotonic() - started)))

    def step(self, now: float | None = None):
        """Advance one tick; yield (channel, symbol, data, ts) updates."""
        now = time.time() if now is None else now
        ms = int(now * 1000)
        n = self.n
        per_s = max(1, round(1 / self.tick))
        self._evolve(now)
        events = []
        for s in SYMBOLS:
            for k, e in enumerate(EXCHANGES):
                events += self._trades(s, e, now, ms)
                if (n + k) % max(1, per_s // 2) == 0:
                    events.append(("book", s, self.book_update(s, e), ms))
                if (n + k * 7) % (5 * per_s) == 0:
                    events.append(("funding", s, self.funding_update(s, e, ms), ms))
                if (n + k) % per_s == 0:
                    events += self._klines(s, e, ms)
            if n % max(1, per_s // 5) == 0:
                events.append(("quotes", s, self.quote_update(s, now), ms))
            if n % (5 * per_s) == list(SYMBOLS).index(s):
                events.append(("narratives", s, self._narrative(s), ms))
        if n % per_s == 0:
            events += self._polymarket(now)
        events += self._signals(events, now, ms)
        self.n += 1
        return events

    def _trades(self, s: str, e: str, now: float, ms: int) -> list:
        r = self.rng
        _, pd, qd, size = SYMBOLS[s]
        b = self.books[(s, e)]
        out = []
        count = int(r.random() < 0.5) + int(r.random() < 0.15)
        for _ in range(count):
            side = "buy" if r.random() < 0.5 + b.offset * 500 else "sell"
            qty = size * r.lognormvariate(0, 1.0) * (40 if r.random() < 0.004 else 1)
            liq = r.random() < 0.03
            out.append(self._fill(s, e, side, qty, liq, now, ms))
            if liq:
                price = float(out[-1][2]["price"])
                out.append(("liquidations", s, {
                    "exchange": e, "symbol": s, "side": side, "price": fmt(price, pd),
                    "quantity": fmt(qty, qd), "timestamp": ms,
                    "notional_usd": fmt(price * qty, 2)}, ms))
                self.liqs[s].append(now)
        return out

    def _fill(self, s, e, side, qty, liq, now, ms):
        _, pd, qd, _ = SYMBOLS[s]
        b = self.books[(s, e)]
        bid, ask = b.best()
        price = ask if side == "buy" else bid
        b.trade_seq += 1
        b.volume_24h = b.volume_24h * 0.99999 + qty
        trades = self.trades[s]
        trades.append((now, price, qty))
        while trades and trades[0][0] < now - 60:
            trades.popleft()
        for iv, secs in KLINE_INTERVALS.items():
            self._candle_add(s, e, iv, secs, ms, price, qty)
        qty_s = fmt(qty, qd) if qd else str(max(1, round(qty)))
        return ("trades", s, {"exchange": e, "symbol": s, "price": fmt(price, pd), "quantity": qty_s,
                              "side": side, "timestamp": ms, "trade_id": f"t{b.trade_seq}",
                              "is_liquidation": liq}, ms)

    def _candle_add(self, s, e, iv, secs, ms, price, qty):
        key = (s, e, iv)
        start = ms // (secs * 1000) * secs * 1000
        c = self.candles.get(key)
        if c is None or c.open_time != start:
            c = self.candles[key] = Candle(start, price, price, price, price)
        c.high, c.low, c.close = max(c.high, price), min(c.low, price), price
        c.volume += qty

    def _klines(self, s, e, ms):
        _, pd, qd, _ = SYMBOLS[s]
        out = []
        for iv, secs in KLINE_INTERVALS.items():
            c = self.candles.get((s, e, iv))
            if c is None:
                price = self.books[(s, e)].best()[0]
                c = self.candles[(s, e, iv)] = Candle(ms // (secs * 1000) * secs * 1000, price, price, price, price)
            close_time = c.open_time + secs * 1000
            closed = ms >= close_time
            out.append(("klines", s, {
                "exchange": e, "symbol": s, "interval": iv, "open": fmt(c.open, pd),
                "high": fmt(c.high, pd), "low": fmt(c.low, pd), "close": fmt(c.close, pd),
                "volume": fmt(c.volume, qd or 1), "open_time": c.open_time,
                "close_time": close_time, "is_closed": closed}, ms))
            if closed:
                start = ms // (secs * 1000) * secs * 1000
                self.candles[(s, e, iv)] = Candle(start, c.close, c.close, c.close, c.close)
        return out

    def _polymarket(self, now: float) -> list:
        out = []
        for s in SYMBOLS:
            coin = s.split("/")[0]
            for tf, secs in POLY_TIMEFRAMES.items():
                start = int(now // secs * secs)
                opened = self.poly_open.get((coin, tf))
                if opened is None or opened[0] != start:
                    opened = self.poly_open[(coin, tf)] = (start, self.price[s])
                remaining = max(1, start + secs - int(now))
                sigma = 0.00025 * math.sqrt(remaining / self.tick)
                z = math.log(self.price[s] / opened[1]) / max(sigma, 1e-9)
                up = min(0.99, max(0.01, 0.5 * (1 + math.erf(z / math.sqrt(2)))))
                self.poly_volume[(coin, tf)] += self.rng.uniform(0, 50)
                out.append(("polymarket", coin, {
                    "coin": coin, "timeframe": tf, "upPrice": fmt(up, 3), "downPrice": fmt(1 - up, 3),
                    "volume": fmt(self.poly_volume[(coin, tf)], 2),
                    "liquidity": fmt(8000 + 4000 * (1 - abs(up - 0.5) * 2), 2),
                    "timeRemainingSeconds": remaining, "active": True}, int(now * 1000)))
        return out

    def _narrative(self, s: str) -> dict:
        first = self.history[s][0][1]
        change = (self.price[s] - first) / first * 100
        obis = [self._obi(*self._book_view(self.books[(s, e)]), 10) for e in EXCHANGES]
        obi = sum(obis) / len(obis)
        base = s.split("/")[0]
        mood = "rallying" if change > 0.03 else "sliding" if change < -0.03 else "flat"
        pressure = "buying" if obi > 0.05 else "selling" if obi < -0.05 else "balanced"
        text = (f"{base} {mood} {change:+.2f}% in the past minute with {pressure} pressure. "
                f"OBI at {obi:.2f} across exchanges.")
        walls = self.book_update(s, EXCHANGES[0])["bid_walls"]
        if walls:
            w = walls[0]
            text += (f" A bid wall at ${float(w['price']):,.2f} ({w['quantity']} {base}, "
                     f"{w['multiple_of_median']}x median) is supporting price.")
        rate = self.books[(s, EXCHANGES[0])].funding
        text += f" Funding rate {'elevated' if abs(rate) > 0.0003 else 'normal'} at {rate * 100:.3f}%."
        return {"symbol": s, "narrative": text, "source": "template"}

    # -- signal detectors ------------------------------------------------------

    def _signal(self, kind, s, severity, data, ms, narrative, now):
        key = (kind, s)
        if now - self.last_signal.get(key, -1e9) < SIGNAL_COOLDOWN:
            return []
        self.last_signal[key] = now
        self.signal_seq += 1
        return [("signals", s, {"id": f"sig_{self.signal_seq:06d}", "signal_type": kind, "symbol": s,
                                "severity": severity, "data": data, "timestamp": ms,
                                "narrative": narrative}, ms)]

    def _signals(self, events, now, ms) -> list:
        out = []
        for s, e, kind, (side, level), multiple in self.wall_events:
            b = self.books[(s, e)]
            price, qty = (b.bids if side == "b" else b.asks)[level]
            name = "bid" if side == "b" else "ask"
            verb = "appeared" if kind == "wall_appearance" else "was pulled"
            out += self._signal(kind, s, "warning" if multiple > 10 else "info", {
                "exchange": e, "side": name, "price": fmt(price, SYMBOLS[s][1]),
                "quantity": fmt(qty * multiple, SYMBOLS[s][2]), "multiple_of_median": round(multiple, 1)}, ms,
                f"{'An' if name == 'ask' else 'A'} {name} wall {verb} at {fmt(price, SYMBOLS[s][1])} on {e.title()} "
                f"({multiple:.1f}x the level's size)", now)
        self.wall_events.clear()
        for channel, s, d, _ in events:
            if channel == "trades":
                recent = self.trades[s]
                last10 = sum(q for t, _, q in recent if t >= now - 10)
                minute = sum(q for _, _, q in recent)
                if recent and recent[0][0] <= now - 50 and last10 > 0.4 * minute:
                    out += self._signal("volume_spike", s, "warning", {
                        "volume_10s": fmt(last10, SYMBOLS[s][2]), "volume_60s": fmt(minute, SYMBOLS[s][2])}, ms,
                        f"{s} traded {last10 / minute:.0%} of the last minute's volume in 10 seconds", now)
                notional = float(d["price"]) * float(d["quantity"])
                whale = 40 * SYMBOLS[s][3] * self.price[s] * 0.5
                if notional > whale:
                    sev = "critical" if notional > 4 * whale else "alert"
                    out += self._signal("whale_movement", s, sev, {
                        "exchange": d["exchange"], "size_usd": round(notional), "side": d["side"]}, ms,
                        f"Whale {d['side']} detected on {d['exchange'].title()}: "
                        f"${notional / 1e6:.2f}M {s.split('/')[0]} market order", now)
            elif channel == "liquidations":
                liqs = self.liqs[s]
                while liqs and liqs[0] < now - 30:
                    liqs.popleft()
                if len(liqs) >= 3:
                    out += self._signal("liquidation_cascade", s, "warning" if len(liqs) < 6 else "alert",
                                        {"count_30s": len(liqs), "last_side": d["side"]}, ms,
                                        f"{len(liqs)} liquidations on {s} in 30 seconds", now)
            elif channel == "book":
                if abs(d["obi_10"]) > 0.3:
                    out += self._signal("orderbook_imbalance", s, "info" if abs(d["obi_10"]) < 0.45 else "warning",
                                        {"exchange": d["exchange"], "obi_10": d["obi_10"]}, ms,
                                        f"Order book on {d['exchange'].title()} leans "
                                        f"{'bid' if d['obi_10'] > 0 else 'ask'}: OBI {d['obi_10']:.2f}", now)
                if d["spread_bps"] > 2.5:
                    out += self._signal("spread_anomaly", s, "info", {
                        "exchange": d["exchange"], "spread_bps": d["spread_bps"]}, ms,
                        f"Spread on {d['exchange'].title()} widened to {d['spread_bps']} bps", now)
            elif channel == "funding" and abs(d["rate"]) > 0.00012:
                out += self._signal("funding_spike", s, "warning", {
                    "exchange": d["exchange"], "rate": d["rate"]}, ms,
                    f"Funding on {d['exchange'].title()} at {d['rate'] * 100:.4f}%", now)
            elif channel == "quotes":
                if d["max_arb_bps"] > 1.0:
                    out += self._signal("cross_exchange_divergence", s, "info", {
                        "max_arb_bps": d["max_arb_bps"]}, ms,
                        f"{s} prices diverge across exchanges by {d['max_arb_bps']} bps", now)
                hist = self.history[s]
                if len(hist) > 20:
                    prev, cur = hist[-20][1], hist[-1][1]
                    level = 10 ** math.floor(math.log10(cur) - 1)
                    if math.floor(prev / level) != math.floor(cur / level):
                        mark = math.floor(max(prev, cur) / level) * level
                        out += self._signal("price_level_break", s, "info", {
                            "level": fmt(mark, SYMBOLS[s][1]), "direction": "up" if cur > prev else "down"}, ms,
                            f"{s} broke {'above' if cur > prev else 'below'} {mark:g}", now)
        return out
