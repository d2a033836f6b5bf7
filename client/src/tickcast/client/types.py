"""Typed updates of the nine Market.ai channels, as the guide shows them.

Prices, sizes and other decimals travel as strings and stay strings, or
become ``Decimal`` with ``decimals=True``; never ``float`` by accident. A
field the server leaves out is None; a field it adds that is not here is
kept in ``extra``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Union

Dec = Union[str, Decimal]     # a decimal string, or a Decimal on request


@dataclass
class QuoteExchange:
    exchange: str | None = None
    bid: Dec | None = None
    ask: Dec | None = None
    mid: Dec | None = None
    volume_24h: Dec | None = None
    obi: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Quote:
    symbol: str | None = None
    global_mid: Dec | None = None
    global_vwap: Dec | None = None
    max_arb_bps: float | None = None
    consensus_trend: str | None = None
    exchanges: list[QuoteExchange] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class Wall:
    price: Dec | None = None
    quantity: Dec | None = None
    multiple_of_median: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Book:
    symbol: str | None = None
    exchange: str | None = None
    best_bid: Dec | None = None
    best_ask: Dec | None = None
    mid_price: Dec | None = None
    spread_bps: float | None = None
    obi_5: float | None = None
    obi_10: float | None = None
    bid_depth_1pct: Dec | None = None
    ask_depth_1pct: Dec | None = None
    bid_walls: list[Wall] = field(default_factory=list)
    ask_walls: list[Wall] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass
class Trade:
    exchange: str | None = None
    symbol: str | None = None
    price: Dec | None = None
    quantity: Dec | None = None
    side: str | None = None
    timestamp: int | None = None
    trade_id: str | None = None
    is_liquidation: bool | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Signal:
    id: str | None = None
    signal_type: str | None = None
    symbol: str | None = None
    severity: str | None = None
    data: dict = field(default_factory=dict)
    timestamp: int | None = None
    narrative: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Liquidation:
    exchange: str | None = None
    symbol: str | None = None
    side: str | None = None
    price: Dec | None = None
    quantity: Dec | None = None
    timestamp: int | None = None
    notional_usd: Dec | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Funding:
    exchange: str | None = None
    symbol: str | None = None
    rate: float | None = None
    next_funding_time: int | None = None
    predicted_rate: float | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Kline:
    exchange: str | None = None
    symbol: str | None = None
    interval: str | None = None
    open: Dec | None = None
    high: Dec | None = None
    low: Dec | None = None
    close: Dec | None = None
    volume: Dec | None = None
    open_time: int | None = None
    close_time: int | None = None
    is_closed: bool | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Narrative:
    symbol: str | None = None
    narrative: str | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Polymarket:
    coin: str | None = None
    timeframe: str | None = None
    upPrice: Dec | None = None          # noqa: N815 (the wire's names)
    downPrice: Dec | None = None        # noqa: N815
    volume: Dec | None = None
    liquidity: Dec | None = None
    timeRemainingSeconds: int | None = None   # noqa: N815
    active: bool | None = None
    extra: dict = field(default_factory=dict)


TYPES: dict[str, type] = {"quotes": Quote, "book": Book, "trades": Trade, "signals": Signal,
                          "liquidations": Liquidation, "funding": Funding, "klines": Kline,
                          "narratives": Narrative, "polymarket": Polymarket}
_NESTED = {(Quote, "exchanges"): QuoteExchange, (Book, "bid_walls"): Wall, (Book, "ask_walls"): Wall}
_DECIMAL = {cls: {f.name for f in dataclasses.fields(cls) if "Dec" in str(f.type)}
            for cls in (*TYPES.values(), QuoteExchange, Wall)}
_NAMES = {cls: {f.name for f in dataclasses.fields(cls)} - {"extra"} for cls in _DECIMAL}


def build(cls: type, data: Any, decimals: bool):
    """``data`` (a JSON object) as ``cls``; anything else is left as it came."""
    if not isinstance(data, dict):
        return data
    names, dec = _NAMES[cls], _DECIMAL[cls]
    known, extra = {}, {}
    for k, v in data.items():
        if k not in names:
            extra[k] = v
            continue
        inner = _NESTED.get((cls, k))
        if inner is not None and isinstance(v, list):
            v = [build(inner, x, decimals) for x in v]
        elif decimals and k in dec and isinstance(v, str):
            try:
                v = Decimal(v)
            except ArithmeticError:
                pass                         # not a decimal after all: kept as sent
        known[k] = v
    return cls(**known, extra=extra)


@dataclass
class Update:
    """One update: its channel, the server's timestamp (ms), the typed data
    (``data``; a dict for a channel this version does not know) and the
    frame as it came (``raw``); with sequence numbers, its position in its
    topic (``seq``, ``epoch``) and whether it is the state a subscription
    starts from (``snapshot``)."""
    channel: str
    ts: int | None
    data: Any
    raw: bytes
    seq: int | None = None
    epoch: str | None = None
    snapshot: bool = False


@dataclass
class StreamFrame:
    """One v4 stream frame: its stream, chain, instrument and expiry (for
    the instrument streams), data, and the frame as it came."""
    stream: str
    chain_id: int | None
    instrument: str | None
    expiry: int | None
    data: Any
    raw: bytes
