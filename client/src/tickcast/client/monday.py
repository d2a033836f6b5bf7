"""MondayClient: the v4 public API (/v4/public/ws), reconnecting the same way.

Requests carry ids and acks name them, so each SUBSCRIBE / UNSUBSCRIBE waits
for its own ack. The keep-alive is the text "ping" (answered "pong"); every
subscription is sent again, with new ids, after a reconnect.
"""
from __future__ import annotations

import asyncio
import itertools

from tickcast.client import _json
from tickcast.client.errors import RequestFailed
from tickcast.client.session import Session
from tickcast.client.types import StreamFrame


class MondayClient(Session):
    """``async with MondayClient("ws://host:8765/v4/public/ws") as client``:
    ``await client.subscribe(type="orderBook", chainId=143, instrument=..., expiry=...)``,
    then ``async for frame in client``."""

    def __init__(self, url: str, **session) -> None:
        super().__init__(url, **session)
        self.subscriptions: list[dict] = []        # params of each, sent again on reconnecting
        self._ids = itertools.count(1)
        self._acks: dict[int, asyncio.Future] = {}

    async def subscribe(self, **params) -> dict:
        """SUBSCRIBE with these params (type, chainId, ...); returns the ack or
        raises RequestFailed with its code (400, 404, 429...)."""
        ack = await self._request("SUBSCRIBE", params)
        if params not in self.subscriptions:
            self.subscriptions.append(params)
        return ack

    async def unsubscribe(self, **params) -> dict:
        ack = await self._request("UNSUBSCRIBE", params)
        if params in self.subscriptions:
            self.subscriptions.remove(params)
        return ack

    async def _request(self, method: str, params: dict) -> dict:
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._acks[rid] = future
        try:
            await self._send(_json.dumps({"id": rid, "method": method, "params": params}))
            ack = await future
        finally:
            self._acks.pop(rid, None)
        if ack.get("result") != "success":
            raise RequestFailed(str(ack.get("code")), ack.get("msg", ""))
        return ack

    # -- the session's hooks ----------------------------------------------------------

    async def opened(self, ws) -> None:
        for params in self.subscriptions:     # the server remembers nothing
            await ws.send(_json.dumps({"id": next(self._ids), "method": "SUBSCRIBE", "params": params}),
                          text=True)

    def ping(self) -> bytes:
        return b"ping"

    def received(self, raw: bytes) -> None:
        if raw == b"pong":
            return
        msg = _json.loads(raw)
        if not isinstance(msg, dict):
            return
        if "stream" in msg:
            self._deliver(StreamFrame(msg["stream"], msg.get("chainId"), msg.get("instrument"),
                                      msg.get("expiry"), msg.get("data"), raw))
        elif "result" in msg:
            future = self._acks.get(msg.get("id"))
            if future is not None and not future.done():
                future.set_result(msg)

    def lost(self) -> None:
        for future in self._acks.values():
            if not future.done():
                future.set_exception(ConnectionError("the connection was lost before the ack; "
                                                     "subscriptions are sent again on reconnecting"))
