"""What tickcast watch shows: the latest state of each symbol, built from updates.

Kept apart from the terminal so that the live view and the one-shot text
print the same thing. Values stay the strings the server sent; only the
spread is computed (in basis points of the mid).
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from tickcast.client import State, Update
from tickcast.client.types import Polymarket, Quote, Signal, Trade

CHANNELS = ("quotes", "trades", "signals", "polymarket")
TRADES_KEPT = 3           # per symbol
SIGNALS_KEPT = 5          # in all


@dataclass
class SymbolView:
    quote: Quote | None = None
    trades: deque = field(default_factory=lambda: deque(maxlen=TRADES_KEPT))


class Board:
    """Symbols (None: every symbol the server sends) and what was heard of them."""

    def __init__(self, url: str, symbols: list[str] | None = None) -> None:
        self.url = url
        self.wanted = symbols
        self.symbols: dict[str, SymbolView] = {s: SymbolView() for s in symbols or ()}
        self.signals: deque = deque(maxlen=SIGNALS_KEPT)
        self.odds: dict[str, dict[str, Polymarket]] = {}    # coin -> timeframe -> the latest odds
        self.state = State("connecting")
        self.notes: list[str] = []                     # refusals the server sent (over the symbol limit...)
        self.updates = 0
        self.rate = 0.0                                # updates per second, over the last second or so
        self._rate_since, self._rate_base = time.monotonic(), 0

    def set_state(self, state: State) -> None:
        self.state = state

    def view(self, symbol: str | None) -> SymbolView | None:
        if symbol is None:
            return None
        v = self.symbols.get(symbol)
        if v is None and self.wanted is None:
            v = self.symbols[symbol] = SymbolView()
        return v

    def apply(self, update: Update) -> None:
        self.updates += 1
        data = update.data
        if isinstance(data, Quote):
            v = self.view(data.symbol)
            if v is not None:
                v.quote = data
        elif isinstance(data, Trade):
            v = self.view(data.symbol)
            if v is not None:
                v.trades.appendleft(data)
        elif isinstance(data, Signal):
            self.signals.appendleft(data)
        elif isinstance(data, Polymarket) and data.coin:
            self.odds.setdefault(data.coin, {})[data.timeframe or "?"] = data

    def odds_of(self, symbol: str) -> list[Polymarket]:
        """A symbol's Polymarket odds (they name its base coin), one per timeframe."""
        return list(self.odds.get(symbol.split("/")[0], {}).values())

    def status(self) -> str:
        """One line: the connection's state and what flows."""
        now = time.monotonic()
        if now - self._rate_since >= 1.0:
            self.rate = (self.updates - self._rate_base) / (now - self._rate_since)
            self._rate_since, self._rate_base = now, self.updates
        s = self.state
        if s.name == "backing_off":
            text = f"reconnecting in {s.delay:.1f} s ({s.reason})"
        elif s.name == "closed" and s.reason:
            text = f"closed: {s.reason}"
        else:
            text = s.name
        return f"{self.url}  {text}  {len(self.symbols)} symbols  {self.updates} updates ({self.rate:.0f}/s)"


def spread_bps(bid: str | None, ask: str | None) -> float | None:
    try:
        b, a = float(bid), float(ask)
    except (TypeError, ValueError):
        return None
    mid = (a + b) / 2
    return (a - b) / mid * 1e4 if mid > 0 else None
