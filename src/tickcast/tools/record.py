"""tickcast record: a Market.ai feed into a recording, through the SDK (it reconnects)."""
from __future__ import annotations

import asyncio
import time

from tickcast.client import MarketAiClient
from tickcast.tools.recording import Writer
from tickcast.wire.marketai import unsequenced


def parse_subscriptions(specs: list[str]) -> list[tuple[str, list[str] | None]]:
    """``quotes:BTC/USDT,ETH/USDT`` and ``trades`` (every symbol)."""
    out = []
    for spec in specs:
        channel, _, symbols = spec.partition(":")
        out.append((channel, [s for s in symbols.split(",") if s] or None))
    return out


async def record(url: str, key: str, subscriptions, out: str, duration: float | None, on_state=None) -> int:
    """Until ``duration`` seconds pass (or cancelled); returns the updates written."""
    writer = Writer(out)
    try:
        async with MarketAiClient(url, key=key, on_state=on_state) as client:
            for channel, symbols in subscriptions:
                await client.subscribe(channel, symbols)
            loop = asyncio.get_running_loop()
            end = loop.time() + duration if duration else None
            flushed = loop.time()

            async def take():
                nonlocal flushed
                async for update in client:
                    # Each update once across reconnections (the SDK resumes), as a
                    # client without sequence numbers gets it: a replay sends the same.
                    writer.write(time.time(), unsequenced(update.raw))
                    if loop.time() - flushed > 0.5:
                        writer.flush()
                        flushed = loop.time()
            try:
                await asyncio.wait_for(take(), end - loop.time() if end else None)
            except asyncio.TimeoutError:
                pass
    finally:
        writer.close()
    return writer.count
