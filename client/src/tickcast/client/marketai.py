"""MarketAiClient: the Market.ai push API, reconnecting as its guide says.

Replies carry no request id, but the server answers a connection's messages
in order: each request is followed by an app-level ping, and every reply
before its pong belongs to the request (a subscription that is partly over
the symbol limit gets a confirmation and an error; one wholly over gets the
error alone).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from decimal import Decimal
from urllib.parse import urlencode, urlsplit, urlunsplit

from tickcast.client import _json
from tickcast.client.errors import (AuthenticationError, ClientError, InvalidChannel, InvalidMessage,
                                    SymbolLimitExceeded)
from tickcast.client.session import Retry, Session
from tickcast.client.types import TYPES, Update, build

PING = b'{"action":"ping"}'
# Channels whose updates are a latest value: a reader that falls behind gets
# the latest (the server conflates), so a jump in their numbers loses nothing.
STATE_CHANNELS = frozenset(("quotes", "book", "funding", "polymarket"))
log = logging.getLogger("tickcast.client")


class MarketAiClient(Session):
    """``async with MarketAiClient(url, key=...) as client``: subscribe, then
    ``async for update in client``. ``auth``: "query" (``?key=``) or
    "message" (the auth message after the upgrade). ``decimals``: decimal
    strings become ``Decimal``. The rest (``backoff``, ``on_state``,
    ``keepalive``, ``dead_after``) as Session takes them.

    ``resume`` (the default): updates come with their position in their
    topic, and after a reconnection each subscription asks for what it
    missed: the program sees each update once, in order. What could not be
    recovered (the server no longer had it, or its sequence started again)
    is a gap: counted in ``gaps`` and told to ``on_gap(channel, symbol)``,
    never passed over silently."""

    def __init__(self, url: str, key: str, *, auth: str = "query", decimals: bool = False, resume: bool = True,
                 on_gap=None, **session) -> None:
        if auth not in ("query", "message"):
            raise ValueError("auth is 'query' or 'message'")
        super().__init__(url, **session)
        self.key = key
        self.auth = auth
        self.decimals = decimals
        self.resume = resume
        self.on_gap = on_gap
        self.gaps = 0                                    # gaps told (on_gap)
        self.tier: str | None = None
        self.subscriptions: dict[str, list[str]] = {}   # channel -> symbols (["*"]: all), sent again on reconnecting
        self.positions: dict[tuple[str, str], tuple[int, str]] = {}   # (channel, symbol) -> (seq, epoch) last seen
        self._waiting: deque = deque()                  # [replies, future or None] per request, in order

    # -- the program's side -----------------------------------------------------

    async def subscribe(self, channel: str, symbols: list[str] | None = None) -> dict:
        """Subscribe; returns the server's confirmation. Raises InvalidChannel,
        InvalidMessage, or SymbolLimitExceeded (the accepted symbols stay
        subscribed and are named in it)."""
        entry = {"type": channel} if not symbols else {"type": channel, "symbols": list(symbols)}
        replies = await self._request({"action": "subscribe", "channels": [entry]})
        confirmed = next((r for r in replies if r.get("type") == "subscribed"), None)
        if confirmed is not None:
            held = self.subscriptions.setdefault(channel, [])
            held.extend(s for s in confirmed.get("symbols", []) if s not in held)
        for r in replies:
            if r.get("type") == "error":
                raise self._error(r, confirmed)
        return confirmed

    async def unsubscribe(self, channel: str, symbols: list[str] | None = None) -> dict:
        entry = {"type": channel} if not symbols else {"type": channel, "symbols": list(symbols)}
        replies = await self._request({"action": "unsubscribe", "channels": [entry]})
        for r in replies:
            if r.get("type") == "error":
                raise self._error(r, None)
        held = self.subscriptions.get(channel, [])
        gone = set(symbols or ["*"])
        self.subscriptions[channel] = [s for s in held if s not in gone]
        if not self.subscriptions[channel] or not symbols:
            self.subscriptions.pop(channel, None)
        for topic in [t for t in self.positions if t[0] == channel and (not symbols or t[1] in gone)]:
            del self.positions[topic]
        return next((r for r in replies if r.get("type") == "unsubscribed"), {})

    # -- requests and replies ---------------------------------------------------

    async def _request(self, msg: dict) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self._send(_json.dumps(msg))
        await self._send(PING)
        self._waiting.append(([], future))
        return await future

    def _error(self, reply: dict, confirmed: dict | None) -> ClientError:
        code, message = reply.get("code", "?"), reply.get("message", "")
        if code == "SYMBOL_LIMIT_EXCEEDED":
            m = re.search(r"Rejected: (.*)$", message)
            rejected = [s.strip() for s in m.group(1).split(",")] if m else []
            return SymbolLimitExceeded(code, message, confirmed.get("symbols", []) if confirmed else [], rejected)
        if code == "INVALID_CHANNEL":
            return InvalidChannel(code, message)
        if code == "INVALID_MESSAGE":
            return InvalidMessage(code, message)
        return ClientError(code, message)

    # -- the session's hooks ----------------------------------------------------------

    def connect_url(self) -> str:
        if self.auth == "message":
            return self.url
        parts = urlsplit(self.url)
        params = {"key": self.key, **({"seq": 1} if self.resume else {})}
        query = "&".join(filter(None, [parts.query, urlencode(params)]))
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))

    def refused(self, status: int, body: bytes) -> BaseException | None:
        try:
            error = _json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": f"HTTP {status}", "message": body[:200].decode("latin-1")}
        if status == 401:
            return AuthenticationError(error.get("code", "UNAUTHORIZED"), error.get("message", ""))
        return None                       # 429 CONNECTION_LIMIT, 503...: try again later

    async def opened(self, ws) -> None:
        if self.auth == "message":
            auth = {"action": "auth", "key": self.key, **({"seq": True} if self.resume else {})}
            await ws.send(_json.dumps(auth), text=True)
            reply = _json.loads(await asyncio.wait_for(ws.recv(decode=False), self.open_timeout))
            if reply.get("type") == "authenticated":
                self.tier = reply.get("tier")
            elif reply.get("code") == "UNAUTHORIZED":
                raise AuthenticationError("UNAUTHORIZED", reply.get("message", ""))
            else:
                error = reply.get("error", reply)
                raise Retry(f"{error.get('code')}: {error.get('message')}")    # CONNECTION_LIMIT
        if self.subscriptions:             # the server remembers nothing: all of them again
            channels = []
            for c, s in self.subscriptions.items():
                entry = {"type": c} if s == ["*"] else {"type": c, "symbols": s}
                since = {sym: {"seq": seq, "epoch": epoch} for (ch, sym), (seq, epoch) in self.positions.items()
                         if ch == c and (s == ["*"] or sym in s)}
                if since:                  # from where it was: what it missed, then the live stream
                    entry["since"] = since
                channels.append(entry)
            await ws.send(_json.dumps({"action": "subscribe", "channels": channels}), text=True)
            await ws.send(PING, text=True)
            self._waiting.append(([], None))

    def ping(self) -> bytes:
        self._waiting.append(([], None))  # its pong closes nothing a program waits on
        return PING

    def received(self, raw: bytes) -> None:
        msg = json.loads(raw, parse_float=Decimal) if self.decimals else _json.loads(raw)
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "update":
            channel = msg.get("channel")
            seq, epoch, snapshot = msg.get("seq"), msg.get("epoch"), msg.get("snapshot") is True
            if seq is not None and not self._in_order(channel, msg.get("data"), seq, epoch, snapshot):
                return                     # had it already (a resume overlapping what came before)
            cls = TYPES.get(channel)
            data = build(cls, msg.get("data"), self.decimals) if cls else msg.get("data")
            self._deliver(Update(channel, msg.get("ts"), data, raw, seq, epoch, snapshot))
        elif kind == "subscribed" and msg.get("recovered"):
            # (a state channel's snapshot follows: the latest of it, nothing missing)
            if msg.get("channel") not in STATE_CHANNELS:
                for symbol, recovered in msg["recovered"].items():
                    if not recovered:
                        self._gap(msg.get("channel"), symbol)
            if self._waiting:
                self._waiting[0][0].append(msg)
        elif kind == "pong":
            if self._waiting:
                replies, future = self._waiting.popleft()
                if future is not None and not future.done():
                    future.set_result(replies)
        elif self._waiting:
            self._waiting[0][0].append(msg)
        elif kind == "error" and msg.get("code") == "UNAUTHORIZED":
            self._fail(AuthenticationError("UNAUTHORIZED", msg.get("message", "")))   # revoked

    def _in_order(self, channel, data, seq: int, epoch, snapshot: bool) -> bool:
        """Track the topic's position: False for an update already seen; a
        jump, or a sequence that started again, is a gap."""
        symbol = data.get("symbol") if isinstance(data, dict) else None
        if not isinstance(symbol, str):
            return True
        symbol = symbol.strip().upper()
        if channel == "polymarket":
            symbol = symbol.partition("/")[0]           # a polymarket topic is its coin
        topic = (channel, symbol)
        last = self.positions.get(topic)
        if snapshot:                                    # the state as of this position
            if last is None or last[1] != epoch or seq > last[0]:
                self.positions[topic] = (seq, epoch)
            return True
        if last is not None and last[1] == epoch:
            if seq <= last[0]:
                return False
            if seq > last[0] + 1 and channel not in STATE_CHANNELS:
                self._gap(channel, symbol)
        elif last is not None:
            self._gap(channel, symbol)                  # its sequence started again
        self.positions[topic] = (seq, epoch)
        return True

    def _gap(self, channel: str, symbol: str) -> None:
        self.gaps += 1
        if self.on_gap is not None:
            try:
                self.on_gap(channel, symbol)
            except Exception:                            # the program's callback: never the connection's end
                log.exception("on_gap raised")

    def lost(self) -> None:
        while self._waiting:
            _, future = self._waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(ConnectionError("the connection was lost before the answer; "
                                                     "subscriptions are sent again on reconnecting"))
