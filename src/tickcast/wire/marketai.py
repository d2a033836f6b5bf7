"""The Market.ai push API's wire: its channels, the canonical form of a
symbol, and the update envelope. Shared by the server's dialect, the bus
record and the publisher; nothing here needs the server.
Rules: ../shared/spec/marketai-push-api.txt and marketai-decisions.md.
"""
from __future__ import annotations

import re
import time

import orjson

CHANNELS = ("quotes", "book", "trades", "signals", "liquidations", "funding",
            "klines", "narratives", "polymarket")

# State channels: a subscriber gets the latest update of each of its symbols
# right after the confirmation. The fields say what one "latest" is per symbol
# (the book of each exchange, the kline of each exchange and interval, ...).
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "quotes": (),
    "book": ("exchange",),
    "funding": ("exchange",),
    "klines": ("exchange", "interval"),
    "polymarket": ("timeframe",),
}

WILDCARD = "*"
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")
_COIN = re.compile(r"^([A-Z0-9]{1,20})(?:/[A-Z0-9]{1,20})?$")


def channel_symbol(channel: str, symbol: str) -> str | None:
    """The canonical symbol a filter names on ``channel``, None if malformed.

    Symbols are upper-cased; on polymarket a filter names a coin, so ``BTC``
    and ``BTC/USDT`` both mean ``BTC``. Memoised (a storm of subscribers
    names the same symbols, a feed the same few thousand), one memo for the
    channels that take a pair and one for polymarket, up to _MEMO names
    each, each short enough to be a symbol (so the memo stays small whatever
    clients send; a market wider than it would miss it on every name)."""
    if not isinstance(symbol, str):
        return None
    if len(symbol) > _MEMO_LENGTH:
        return _canonical(channel, symbol)
    memo = SYMBOL_MEMO[channel]
    c = memo.get(symbol, UNSEEN)
    if c is UNSEEN:
        c = _canonical(channel, symbol)
        if len(memo) >= _MEMO:
            memo.clear()
        memo[symbol] = c
    return c


def _canonical(channel: str, symbol: str) -> str | None:
    s = symbol.strip().upper()
    if channel == "polymarket":
        m = _COIN.match(s)
        return m.group(1) if m else None
    return s if _SYMBOL.match(s) else None


_MEMO = 1 << 15                   # names a memo holds: about 5 MB at most
_MEMO_LENGTH = 64                 # a symbol is at most 41 characters, spaces aside
UNSEEN = object()
_PAIRS: dict[str, str | None] = {}
SYMBOL_MEMO: dict[str, dict[str, str | None]] = {c: {} if c == "polymarket" else _PAIRS for c in CHANNELS}


def envelope(channel: str, data: dict, ts: int | None = None) -> bytes:
    """An update as its subscribers get it, serialised."""
    return orjson.dumps({"type": "update", "channel": channel,
                         "ts": ts if ts is not None else time.time_ns() // 1_000_000, "data": data})


_DATA = b',"data":'


def sequenced(payload: bytes, seq: int, epoch: str, snapshot: bool = False) -> bytes | None:
    """An update envelope with its position in its topic's sequence: "seq"
    and "epoch" before its "data" (and "snapshot": true, for the state a
    subscriber gets first, as of that position). None if ``payload`` is not
    an envelope of ours (its "data" is not where envelope() puts it)."""
    at = payload.find(_DATA, 0, 96)
    if at < 0:
        return None
    position = b',"seq":%d,"epoch":"%s"' % (seq, epoch.encode())
    return b"".join((payload[:at], b',"snapshot":true' if snapshot else b"", position, payload[at:]))


_POSITION = re.compile(rb'(?:,"snapshot":true)?,"seq":\d+,"epoch":"[^"\\]*"(?=,"data":)')


def unsequenced(payload: bytes) -> bytes:
    """An update as a client that did not ask for sequence numbers gets it
    (what sequenced() added, taken out)."""
    return _POSITION.sub(b"", payload, count=1)
