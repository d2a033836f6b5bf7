"""A seeded simulated on-chain perpetuals exchange for the Monday-style API.

Two chains (143 and 8453) that share nothing. Each instrument has an oracle
spot price and, per expiry (the perpetual 4294967295 and a dated one), an AMM
(tick, sqrtPX96, liquidity, open interest, funding indexes) and a tick-level
order book around the AMM price. Trades move the AMM, fill book orders, feed
the 24h volumes and the klines of all eleven intervals, and change the
positions of a population of simulated traders, whose orders, ranges,
positions and gates produce the portfolio notifications.

Prices follow the convention price = 1.0001 ** tick. Book amounts are 1e18
fixed-point integers; timestamps are Unix seconds.
"""
from __future__ import annotations

import asyncio
import calendar
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tickcast.feeds.sink import Sink

PERPETUAL = 4294967295
WAD = 10 ** 18
Q96 = 2 ** 96
LOG_TICK = math.log(1.0001)
INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "4h": 14400,
             "8h": 28800, "12h": 43200, "1d": 86400, "1w": 604800, "1M": None}
DEPTHS = (1, 10, 100, 200)
BOOK_LEVELS = 20

CHAINS = {
    143: {"block_time": 0.4, "first_block": 38211045,
          "markets": [("ETH", 3450.0), ("BTC", 67450.0), ("SOL", 145.0), ("MON", 0.0452)]},
    8453: {"block_time": 2.0, "first_block": 22871034,
           "markets": [("ETH", 3450.0), ("BTC", 67450.0), ("AERO", 1.05)]},
}
TRADERS_PER_CHAIN = 12


def kline_bucket(interval: str, t: int) -> tuple[int, int]:
    """(startTime, endTime) of the bucket holding second ``t``: end = next start - 1."""
    secs = INTERVALS[interval]
    if secs is None:                                   # calendar month, UTC
        y, m = time.gmtime(t)[:2]
        start = calendar.timegm((y, m, 1, 0, 0, 0))
        y2, m2 = (y + 1, 1) if m == 12 else (y, m + 1)
        return start, calendar.timegm((y2, m2, 1, 0, 0, 0)) - 1
    if interval == "1w":                               # weeks start on Monday 00:00 UTC
        start = (t - 345600) // secs * secs + 345600
    else:
        start = t // secs * secs
    return start, start + secs - 1


def address(rng: random.Random) -> str:
    return "0x" + format(rng.getrandbits(160), "040x")


def dec(x: float, places: int = 6) -> str:
    return f"{x:.{places}f}".rstrip("0").rstrip(".") if x else "0"


@dataclass
class Candle:
    start: int
    end: int
    open: float
    high: float
    low: float
    close: float
    base: float = 0.0
    quote: float = 0.0
    last: int = 0


@dataclass
class Amm:
    expiry: int
    tick: int
    liquidity: int
    long: float = 0.0
    short: float = 0.0
    fund: float = 0.0
    fee_index: int = 0
    long_funding: int = 0
    short_funding: int = 0
    insurance: float = 0.0
    mark: float = 0.0
    orders: dict = field(default_factory=dict)     # tick -> base size (> 0 bids below, asks above)
    candles: dict = field(default_factory=dict)    # interval -> Candle
    volume: deque = field(default_factory=deque)   # (t, base, quote) over 24h
    base_24h: float = 0.0                           # running sums of ``volume``
    quote_24h: float = 0.0
    open_24h: float = 0.0

    @property
    def fair(self) -> float:
        return 1.0001 ** self.tick


@dataclass
class Market:
    chain: int
    base: str
    addr: str
    base_addr: str
    spot: float
    amms: dict = field(default_factory=dict)       # expiry -> Amm


class SimulatedPerpExchange:
    def __init__(self, seed: int = 1, tick: float = 0.1):
        self.rng = random.Random(seed * 7919 + 143)
        self.tick = tick
        self.started = time.time()
        self.blocks = {c: cfg["first_block"] for c, cfg in CHAINS.items()}
        self.next_block = {c: 0.0 for c in CHAINS}
        self.quote_addr = {c: address(self.rng) for c in CHAINS}
        self.beacon = {c: address(self.rng) for c in CHAINS}
        self.markets: dict[tuple[int, str], Market] = {}
        self.traders: dict[int, list[str]] = {}
        self.open_orders: dict[tuple[int, str], list] = {}
        self.oid = 1869451624454
        self.n = 0
        self.listed: dict[int, set] = {}                 # chain -> markets in the last list sent
        now = int(time.time())
        dated = self._next_friday(now)
        for chain, cfg in CHAINS.items():
            for base, price in cfg["markets"]:
                m = Market(chain, base, address(self.rng), address(self.rng), price)
                for expiry in (PERPETUAL, dated):
                    tick = round(math.log(price * (1 + self.rng.gauss(0, 0.001))) / LOG_TICK)
                    amm = Amm(expiry, tick, liquidity=self.rng.randrange(10 ** 20, 10 ** 22))
                    amm.long = amm.short = self.rng.uniform(50, 500) * 3450 / price
                    amm.fund = amm.long * price * 0.4
                    amm.insurance = amm.fund * 0.05
                    amm.mark = amm.fair
                    amm.open_24h = amm.fair * (1 + self.rng.gauss(0, 0.02))
                    self._refill_book(amm)
                    m.amms[expiry] = amm
                self.markets[(chain, m.addr)] = m
            self.traders[chain] = [address(self.rng) for _ in range(TRADERS_PER_CHAIN)]

    @staticmethod
    def _next_friday(now: int) -> int:
        days = (4 - time.gmtime(now).tm_wday) % 7 or 7
        return (now // 86400 + days) * 86400 + 8 * 3600

    # -- what the dialect asks for ----------------------------------------------

    def chains(self) -> list[int]:
        return list(CHAINS)

    def has_instrument(self, chain: int, instrument: str, expiry: int) -> bool:
        m = self.markets.get((chain, instrument))
        return m is not None and expiry in m.amms

    # -- model -------------------------------------------------------------------

    def _refill_book(self, amm: Amm) -> None:
        """Resting orders on ticks around the AMM price, sizes in base units."""
        r = self.rng
        amm.orders = {}
        for side in (-1, 1):
            t = amm.tick + side * r.randint(1, 4)
            for _ in range(60):
                # Below the price: bids (positive sizes); above: asks (negative).
                amm.orders[t] = -side * r.lognormvariate(0, 0.8) * (8.0 / max(amm.fair, 1e-9)) ** 0.5
                t += side * r.randint(1, 6)

    def _roll_expiries(self, m: Market, now: float) -> None:
        """A dated expiry that has passed is settled and delisted; the next one is listed."""
        for expiry in [e for e in m.amms if e != PERPETUAL and e <= now]:
            old = m.amms.pop(expiry)
            new = self._next_friday(int(now))
            amm = Amm(new, old.tick, liquidity=old.liquidity, mark=old.fair, open_24h=old.fair)
            amm.long = amm.short = old.long / 2
            amm.fund, amm.insurance = old.fund / 2, old.insurance / 2
            self._refill_book(amm)
            m.amms[new] = amm

    def _settle_book(self, amm: Amm, refresh: bool) -> None:
        """Orders the AMM price has crossed are filled; a thin side is replenished."""
        crossed = [t for t, q in amm.orders.items() if (q > 0 and t >= amm.tick) or (q < 0 and t <= amm.tick)]
        for t in crossed:
            del amm.orders[t]
        bids = sum(1 for q in amm.orders.values() if q > 0)
        if refresh or bids < 30 or len(amm.orders) - bids < 30:
            self._refill_book(amm)

    def _trade(self, m: Market, amm: Amm, now: float, events: list) -> None:
        r = self.rng
        side = 1 if r.random() < 0.5 + (m.spot - amm.fair) / m.spot * 50 else -1
        size = r.lognormvariate(0, 1.0) * (2000.0 / m.spot)
        # Take resting orders first, then the AMM moves the price.
        book = sorted((t for t, q in amm.orders.items() if (q < 0) == (side > 0)), key=lambda t: t * side)
        left = size
        for t in book[:3]:
            q = abs(amm.orders[t])
            fill = min(q, left)
            left -= fill
            amm.orders[t] = math.copysign(q - fill, amm.orders[t])
            if amm.orders[t] == 0:
                del amm.orders[t]
            if left <= 0:
                break
        amm.tick += side * max(1, round(left * amm.fair / 5e4 * 10))
        price = amm.fair
        if side > 0:
            amm.long += size
        else:
            amm.short += size
        amm.fund += size * price * 0.01
        amm.fee_index += int(size * price * 3e14)
        amm.volume.append((now, size, size * price))
        amm.base_24h += size
        amm.quote_24h += size * price
        t = int(now)
        for iv in INTERVALS:
            c = amm.candles.get(iv)
            if c is None or t > c.end:
                start, end = kline_bucket(iv, t)
                c = amm.candles[iv] = Candle(start, end, price, price, price, price)
            c.high, c.low, c.close = max(c.high, price), min(c.low, price), price
            c.base += size
            c.quote += size * price
            c.last = t
            events.append(("kline", m, amm, iv))
        trader = r.choice(self.traders[m.chain])
        events.append(("portfolio", m, amm, (trader, "position", None)))

    def step(self, now: float | None = None) -> list[tuple]:
        """Advance one tick; return (kind, market, amm, detail) events."""
        now = time.time() if now is None else now
        r = self.rng
        events: list[tuple] = []
        for m in self.markets.values():
            self._roll_expiries(m, now)
            m.spot *= math.exp(r.gauss(0, 0.0002))
            for amm in m.amms.values():
                # Arbitrage pulls the AMM toward the oracle; trades arrive at random.
                gap = math.log(m.spot / amm.fair) / LOG_TICK
                amm.tick += int(gap * 0.05) + (r.random() < abs(gap * 0.05) % 1) * (1 if gap > 0 else -1)
                if r.random() < 0.25:
                    self._trade(m, amm, now, events)
                amm.mark = amm.mark * 0.9 + amm.fair * 0.1
                premium = (amm.fair - m.spot) / m.spot
                amm.long_funding += int(premium * 1e15)
                amm.short_funding -= int(premium * 1e15)
                self._settle_book(amm, r.random() < 0.02)
        for chain in CHAINS:
            for trader in self.traders[chain]:
                if r.random() < 0.01:
                    events.append(self._trader_event(chain, trader))
        self.n += 1
        return events

    def _trader_event(self, chain: int, trader: str) -> tuple:
        r = self.rng
        m = r.choice([mk for (c, _), mk in self.markets.items() if c == chain])
        amm = r.choice(list(m.amms.values()))
        kind = r.choices(("order", "range", "position", "gate"), (0.6, 0.15, 0.15, 0.1))[0]
        info = None
        if kind == "order":
            mine = self.open_orders.setdefault((chain, trader), [])
            if mine and r.random() < 0.5:
                oid, order_id = mine.pop(r.randrange(len(mine)))
                info = {"oid": str(oid), "orderId": str(order_id),
                        "type": r.choice(("filled", "partialFilled", "canceled"))}
                if info["type"] == "partialFilled":
                    mine.append((oid, order_id))
            else:
                self.oid += r.randint(1, 50)
                order_id = self.oid * 551 + r.randrange(1000)
                mine.append((self.oid, order_id))
                info = {"oid": str(self.oid), "orderId": str(order_id), "type": "placed"}
        return ("portfolio", m, amm, (trader, kind, info))

    # -- payloads ----------------------------------------------------------------

    def block_info(self, chain: int, now: float) -> dict:
        return {"height": self.blocks[chain], "timestamp": int(now)}

    def order_book(self, m: Market, amm: Amm, now: float) -> dict:
        bi = self.block_info(m.chain, now)
        out = {}
        for depth in DEPTHS:
            sides = {"bids": {}, "asks": {}}
            for t, q in amm.orders.items():
                if q > 0:
                    sides["bids"][t // depth * depth] = sides["bids"].get(t // depth * depth, 0.0) + q
                else:
                    b = -(-t // depth) * depth
                    sides["asks"][b] = sides["asks"].get(b, 0.0) - q
            view = {"blockInfo": dict(bi)}
            for name, levels in sides.items():
                ticks = sorted(levels, reverse=(name == "bids"))[:BOOK_LEVELS]
                base_sum = quote_sum = 0
                rows = []
                for t in ticks:
                    price = int(1.0001 ** t * WAD)
                    base = int(levels[t] * WAD)
                    quote = base * price // WAD
                    base_sum += base
                    quote_sum += quote
                    rows.append({"tick": t, "price": str(price), "baseSize": str(base), "quoteSize": str(quote),
                                 "baseSum": str(base_sum), "quoteSum": str(quote_sum)})
                view[name] = rows
            out[str(depth)] = view
        return out

    def kline(self, amm: Amm, interval: str) -> dict:
        c = amm.candles[interval]
        return {"interval": interval, "open": round(c.open, 8), "high": round(c.high, 8),
                "low": round(c.low, 8), "close": round(c.close, 8), "baseVolume": round(c.base, 8),
                "quoteVolume": round(c.quote, 6), "volumeUSD": round(c.quote, 6),
                "timestamp": c.last, "startTime": c.start, "endTime": c.end}

    def _volume_24h(self, amm: Amm, now: float) -> tuple[float, float]:
        while amm.volume and amm.volume[0][0] < now - 86400:
            _, base, quote = amm.volume.popleft()
            amm.base_24h -= base
            amm.quote_24h -= quote
        return max(0.0, amm.base_24h), max(0.0, amm.quote_24h)

    def pair_info(self, m: Market, amm: Amm, now: float) -> dict:
        base_vol, quote_vol = self._volume_24h(amm, now)
        oi = max(amm.long, amm.short)
        rate = (amm.fair - m.spot) / m.spot / 24
        perp = amm.expiry == PERPETUAL
        return {
            "instrumentAddr": m.addr, "expiry": amm.expiry, "symbol": f"{m.base}/USD",
            "fullSymbol": f"{m.base}/USD-" + ("PERP" if perp else time.strftime("%Y%m%d", time.gmtime(amm.expiry))),
            "baseToken": {"symbol": m.base, "address": m.base_addr, "decimals": 18, "price": round(m.spot, 8),
                          "image": f"https://assets.tickcast.invalid/{m.base.lower()}.png"},
            "quoteToken": {"symbol": "USDC", "address": self.quote_addr[m.chain], "decimals": 6, "price": 1.0,
                           "image": "https://assets.tickcast.invalid/usdc.png"},
            "markPrice": dec(amm.mark, 8), "fairPrice": dec(amm.fair, 8), "spotPrice": dec(m.spot, 8),
            "fairPriceChange24h": dec((amm.fair / amm.open_24h - 1) * 100, 4),
            "baseVolume24h": dec(base_vol, 6), "quoteVolume24h": dec(quote_vol, 6),
            "volume24hUsd": dec(quote_vol, 6),
            "openInterests": dec(oi, 6), "openInterestsUsd": dec(oi * amm.mark, 6),
            "tvl": dec(amm.fund, 6), "tvlUsd": dec(amm.fund, 6),
            "longOi": dec(amm.long, 6), "shortOi": dec(amm.short, 6),
            "periods1hFunding": {"long": dec(-rate, 8), "short": dec(rate, 8)},
            "last1hFunding": {"long": dec(-rate * 0.9, 8), "short": dec(rate * 0.9, 8)},
            "fundingRatePerHour": dec(abs(rate), 8), "poolFee24h": dec(quote_vol * 0.0005, 6),
            "maxLeverage": 50 if m.base in ("ETH", "BTC") else 20, "updateTime": int(now),
            "marketType": "perp", "condition": 0, "ammStatus": 1,
        }

    def instrument(self, m: Market, now: float) -> dict:
        bi = self.block_info(m.chain, now)
        token = lambda sym, addr, decimals: {"symbol": sym, "address": addr, "decimals": decimals,  # noqa: E731
                                             "name": {"USDC": "USD Coin"}.get(sym, sym)}
        amms = []
        for amm in m.amms.values():
            oi = max(amm.long, amm.short)
            amms.append({
                "expiry": amm.expiry, "timestamp": int(now), "status": 1, "tick": amm.tick,
                "sqrtPX96": str(int(math.sqrt(amm.fair) * Q96)), "liquidity": str(amm.liquidity),
                "totalLiquidity": str(amm.liquidity * 3), "totalShort": str(int(amm.short * WAD)),
                "openInterests": str(int(oi * WAD)), "totalLong": str(int(amm.long * WAD)),
                "involvedFund": str(int(amm.fund * 10 ** 6)), "feeIndex": str(amm.fee_index),
                "protocolFee": str(amm.fee_index // 10), "longSocialLossIndex": "0", "shortSocialLossIndex": "0",
                "longFundingIndex": str(amm.long_funding), "shortFundingIndex": str(amm.short_funding),
                "insuranceFund": str(int(amm.insurance * 10 ** 6)), "settlementPrice": "0",
                "markPrice": str(int(amm.mark * WAD)), "fairPrice": str(int(amm.fair * WAD)),
                "blockInfo": dict(bi),
            })
        return {
            "instrumentAddr": m.addr, "symbol": f"{m.base}-USDC-LINK",
            "market": {"info": {"addr": self.beacon[m.chain], "beacon": self.beacon[m.chain], "type": "LINK"},
                       "config": {"dailyInterestRate": "0.0003", "feederSource": [{"type": "LINK"}]},
                       "feeder": {"aggregator0": m.base_addr, "heartBeat0": 3600}},
            "condition": 0,
            "setting": {"initialMarginRatio": 1000, "maintenanceMarginRatio": 500,
                        "quoteParam": {"minMarginAmount": "10000000", "tradingFeeRatio": 5,
                                       "protocolFeeRatio": 1000, "qtype": 1, "tip": "1000000"}},
            "spotPrice": str(int(m.spot * WAD)), "amms": amms,
            "base": token(m.base, m.base_addr, 18), "quote": token("USDC", self.quote_addr[m.chain], 6),
            "blockInfo": bi, "placePaused": False, "fundingHour": 1, "disableOrderRebate": False,
            "instrumentType": 1, "marketType": "perp", "minTradeValue": "10000000",
            "minOrderValue": "10000000", "minRangeValue": "100000000",
            "displayBase": token(m.base, m.base_addr, 18), "displayQuote": token("USD", self.quote_addr[m.chain], 6),
            "minTickDelta": 1,
        }

    def market_list(self, chain: int, now: float) -> list[dict]:
        return [self.pair_info(m, amm, now) for (c, _), m in self.markets.items() if c == chain
                for amm in m.amms.values()]

    # -- the loop ------------------------------------------------------------------

    async def run(self, sink: Sink) -> None:
        dialect = sink.monday
        while True:
            started = time.monotonic()
            self.publish_step(dialect, time.time())
            await asyncio.sleep(max(0.0, self.tick - (time.monotonic() - started)))

    def publish_step(self, dialect, now: float) -> None:
        """One tick: model events, then the streams they change."""
        first = self.n == 0
        events = self.step(now)
        per_s = max(1, round(1 / self.tick))
        for kind, m, amm, detail in events:
            if kind == "kline":
                dialect.publish_kline(m.chain, m.addr, amm.expiry, detail, self.kline(amm, detail))
            else:
                trader, what, info = detail
                data = {"chainId": m.chain, "userAddress": trader, "instrument": m.addr,
                        "expiry": amm.expiry, "type": what}
                if info is not None:
                    data["orderInfo"] = info
                dialect.publish_portfolio(m.chain, trader, data)
        for chain, cfg in CHAINS.items():
            new_block = now >= self.next_block[chain]
            if new_block:
                self.blocks[chain] += max(1, round((now - self.next_block[chain]) / cfg["block_time"])) if not first else 0
                self.next_block[chain] = now + cfg["block_time"]
                dialect.publish_common(chain, "blockNumChanged",
                                       {"chainId": chain, "blockNum": self.blocks[chain], "blockTime": int(now)})
            for (c, _), m in self.markets.items():
                if c != chain:
                    continue
                if new_block:
                    for amm in m.amms.values():
                        dialect.publish_instrument(chain, m.addr, amm.expiry, "orderBook",
                                                   self.order_book(m, amm, now))
                if first or self.n % per_s == 0:
                    for amm in m.amms.values():
                        dialect.publish_instrument(chain, m.addr, amm.expiry, "marketPairInfoChanged",
                                                   self.pair_info(m, amm, now))
                if first or self.n % (5 * per_s) == 0:
                    full = self.instrument(m, now)
                    for amm in m.amms.values():
                        dialect.publish_instrument(chain, m.addr, amm.expiry, "instrument", full)
            listed = {(m.addr, e) for (c, _), m in self.markets.items() if c == chain for e in m.amms}
            if listed != self.listed.get(chain) or self.n % (10 * per_s) == 0:
                self.listed[chain] = listed
                dialect.publish_common(chain, "marketListChanged", self.market_list(chain, now))
        if first:
            # Every kline exists from the start, so a subscriber always gets a snapshot.
            for m in self.markets.values():
                for amm in m.amms.values():
                    for iv in INTERVALS:
                        if iv not in amm.candles:
                            start, end = kline_bucket(iv, int(now))
                            p = amm.fair
                            amm.candles[iv] = Candle(start, end, p, p, p, p, last=int(now))
                        dialect.publish_kline(m.chain, m.addr, amm.expiry, iv, self.kline(amm, iv))
