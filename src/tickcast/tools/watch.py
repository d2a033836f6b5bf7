"""tickcast watch: a live terminal view of a Market.ai server, through the SDK.

Live (rich, on the terminal's alternate screen, so that quitting leaves it as
it was), plain (a text snapshot every interval, for a pipe or a log) or once
(one snapshot after a short gathering, for scripts and tests).
"""
from __future__ import annotations

import asyncio
import re
import time

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tickcast.client import MarketAiClient, SymbolLimitExceeded
from tickcast.tools.board import CHANNELS, Board, spread_bps


async def watch(url: str, key: str, symbols: list[str] | None, *, mode: str, console: Console,
                interval: float = 0.25, gather: float = 2.0, timeout: float = 10.0) -> None:
    """``mode``: "live", "plain" or "once". Raises the client's error (a bad
    key) or TimeoutError (once: no connection within ``timeout``)."""
    board = Board(url, symbols)
    client = MarketAiClient(url, key=key, on_state=board.set_state)
    subscribed = asyncio.Event()
    feeding = asyncio.get_running_loop().create_task(_feed(client, board, symbols, subscribed))
    try:
        if mode == "once":
            await _subscribed(feeding, subscribed, board, timeout)
            await _watching(feeding, gather)
            console.print(render(board, plain=True))
        elif mode == "plain":
            while True:
                console.print(render(board, plain=True))
                console.print()
                await _watching(feeding, interval)
        else:
            with Live(render(board), console=console, screen=True, auto_refresh=False) as live:
                while True:
                    live.update(render(board), refresh=True)
                    await _watching(feeding, interval)
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
        await client.close()


async def _feed(client: MarketAiClient, board: Board, symbols, subscribed: asyncio.Event) -> None:
    await client.start()
    for channel in CHANNELS:
        while True:
            try:
                await client.subscribe(channel, symbols)
                break
            except SymbolLimitExceeded as exc:
                board.notes.append(f"{channel}: over the tier's symbol limit, not shown: {', '.join(exc.rejected)}")
                break
            except ConnectionError:          # lost before the answer: once connected again, ask again
                await asyncio.sleep(0.2)
    subscribed.set()
    async for update in client:
        board.apply(update)


async def _subscribed(feeding: asyncio.Task, subscribed: asyncio.Event, board: Board, timeout: float) -> None:
    waiting = asyncio.get_running_loop().create_task(subscribed.wait())
    try:
        await asyncio.wait({feeding, waiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
    if feeding.done():
        feeding.result()                        # the client's error
    if not subscribed.is_set():
        reason = board.state.reason or board.state.name
        raise TimeoutError(f"no connection to {board.url} within {timeout:g} s ({reason})")


async def _watching(feeding: asyncio.Task, seconds: float) -> None:
    """Sleep, but raise at once what ended the client (a bad or revoked key)."""
    await asyncio.wait({feeding}, timeout=seconds)
    if feeding.done():
        feeding.result()


# -- what is shown ------------------------------------------------------------

def render(board: Board, plain: bool = False):
    lines = box.SIMPLE_HEAD if not plain else None
    out = [Text(board.status(), style="bold" if board.state.name == "connected" else "bold yellow")]
    out += [Text(note, style="yellow") for note in board.notes]
    for symbol in sorted(board.symbols):
        view = board.symbols[symbol]
        out.append(_symbol(symbol, view, board, lines))
    out += [Text(""), Text("latest signals", style="bold")]
    signals = Table(box=lines, show_edge=False, pad_edge=False)
    for name in ("time", "severity", "symbol", "signal", "narrative"):
        signals.add_column(name)
    for s in board.signals:
        signals.add_row(_clock(s.timestamp), s.severity or "", s.symbol or "", s.signal_type or "",
                        s.narrative or "", style=_SEVERITY.get(s.severity, ""))
    out.append(signals)
    return Group(*out)


_SEVERITY = {"critical": "bold red", "alert": "red", "warning": "yellow"}


def _symbol(symbol: str, view, board: Board, lines) -> Group:
    q = view.quote
    if q is None:
        head = f"{symbol}  (no quote yet)"
    else:
        head = (f"{symbol}  mid {q.global_mid}  vwap {q.global_vwap}  arb {q.max_arb_bps} bps  "
                f"{q.consensus_trend or ''}")
    table = Table(box=lines, show_edge=False, pad_edge=False)
    for name in ("exchange", "bid", "ask", "spread bps", "OBI"):
        table.add_column(name, justify="left" if name == "exchange" else "right")
    for e in q.exchanges if q is not None else ():
        spread = spread_bps(e.bid, e.ask)
        table.add_row(e.exchange or "", str(e.bid), str(e.ask), "" if spread is None else f"{spread:.2f}",
                      "" if e.obi is None else f"{e.obi:+.3f}",
                      style="green" if (e.obi or 0) > 0.2 else "red" if (e.obi or 0) < -0.2 else "")
    out = [Text(""), Text(head, style="bold"), table]
    out += [Text(f"  {_clock(t.timestamp)}  {t.side} {t.quantity} @ {t.price} on {t.exchange}",
                 style="green" if t.side == "buy" else "red") for t in view.trades]
    odds = sorted(board.odds_of(symbol), key=lambda p: _minutes(p.timeframe))
    if odds:
        out.append(Text("  polymarket  " + "  ".join(
            f"{p.timeframe}: up {p.upPrice} / down {p.downPrice} ({p.timeRemainingSeconds} s left)" for p in odds)))
    return Group(*out)


def _clock(ms) -> str:
    if not isinstance(ms, int):
        return ""
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _minutes(timeframe: str | None) -> float:
    """'15m' -> 15, '1h' -> 60, '1d' -> 1440 (to order the odds); unknown last."""
    m = re.fullmatch(r"(\d+)([mhd])", timeframe or "")
    return int(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)] if m else float("inf")
