"""Clients of both push APIs that reconnect as the Market.ai guide says.

    from tickcast.client import MarketAiClient

    async with MarketAiClient("ws://127.0.0.1:8765/", key="mk_...") as client:
        await client.subscribe("quotes", ["BTC/USDT", "ETH/USDT"])
        async for update in client:
            print(update.channel, update.data)
"""
from __future__ import annotations

from tickcast.client._version import __version__
from tickcast.client.backoff import Backoff, State
from tickcast.client.errors import (AuthenticationError, ClientError, InvalidChannel, InvalidMessage,
                                    RequestFailed, SymbolLimitExceeded)
from tickcast.client.marketai import MarketAiClient
from tickcast.client.monday import MondayClient
from tickcast.client.types import StreamFrame, Update

__all__ = ["AuthenticationError", "Backoff", "ClientError", "InvalidChannel", "InvalidMessage", "MarketAiClient",
           "MondayClient", "RequestFailed", "State", "StreamFrame", "SymbolLimitExceeded", "Update", "__version__"]
