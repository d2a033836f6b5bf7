"""The Market.ai push API: its control messages, envelope and topics.

A dialect owns no fan-out: it turns control messages into bitset changes on
the hub's index and updates into payload bytes for ``Hub.publish``.
Rules: ../shared/spec/marketai-push-api.txt and marketai-decisions.md.
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import orjson
import simdjson
from picows import WSCloseCode, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from tickcast.auth import Principal
from tickcast.connection import Connection

if TYPE_CHECKING:
    from tickcast.server import Server

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
_JSON_HEADERS = {"Content-Type": "application/json"}


def channel_symbol(channel: str, symbol: str) -> str | None:
    """The canonical symbol a filter names on ``channel``, None if malformed.

    Symbols are upper-cased; on polymarket a filter names a coin, so ``BTC``
    and ``BTC/USDT`` both mean ``BTC``."""
    if not isinstance(symbol, str):
        return None
    s = symbol.strip().upper()
    if channel == "polymarket":
        m = _COIN.match(s)
        return m.group(1) if m else None
    return s if _SYMBOL.match(s) else None


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def refusal(code: str, message: str) -> dict:
    """The body of a refused connection (HTTP before the upgrade, a frame after it)."""
    return {"ok": False, "error": {"code": code, "message": message}}


def http_error(status: int, code: str, message: str) -> WSUpgradeResponseWithListener:
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(
        status, orjson.dumps(refusal(code, message)), _JSON_HEADERS), None)


def limit_message(principal: Principal) -> str:
    return f"Connection limit ({principal.tier.max_connections}) reached for your tier."


class MarketAi:
    """The Market.ai side of a server: topics, latest state, new connections."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hub = server.hub
        self.index = server.hub.index
        self._wild = {c: self.index.topic(("m", c, WILDCARD), pin=True) for c in CHANNELS}
        # channel -> symbol as a feed spells it -> (topic, canonical symbol): a feed
        # names the same few symbols over and over, so they are checked once.
        self._routes: dict[str, dict[str, tuple[int, str]]] = {c: {} for c in CHANNELS}
        # channel -> symbol -> state key -> latest payload
        self.latest: dict[str, dict[str, dict[tuple, bytes]]] = {c: {} for c in STATE_KEYS}

    def topic(self, channel: str, symbol: str, pin: bool = False) -> int:
        """A subscription's topic (it lives while subscribed), or with ``pin`` a publisher's."""
        if symbol == WILDCARD:
            return self._wild[channel]
        return self.index.topic(("m", channel, symbol), self._wild[channel], pin)

    def publish(self, channel: str, symbol: str, data: dict, ts: int | None = None) -> int:
        """Serialise one update once and fan it out; returns the deliveries."""
        routes = self._routes[channel]
        route = routes.get(symbol)
        if route is None:
            key = channel_symbol(channel, symbol)
            if key is None:
                raise ValueError(f"malformed symbol {symbol!r} for {channel}")
            route = routes[symbol] = (self.topic(channel, key, pin=True), key)
        tid, key = route
        state = STATE_KEYS.get(channel)
        if state is None and not self.hub.has_audience(tid):
            return 0
        payload = orjson.dumps({
            "type": "update", "channel": channel,
            "ts": ts if ts is not None else time.time_ns() // 1_000_000,
            "data": data,
        })
        if state is not None:
            self.latest[channel].setdefault(key, {})[tuple([data.get(f) for f in state])] = payload
        return self.hub.publish(tid, payload)

    def snapshots(self, channel: str, symbols: list[str]) -> list[bytes]:
        latest = self.latest.get(channel)
        if not latest:
            return []
        return [p for s in symbols for p in latest.get(s, {}).values()]

    # -- the upgrade -----------------------------------------------------------

    def accept(self, request: WSUpgradeRequest, query: str):
        params = parse_qs(query, keep_blank_values=True)
        if "key" not in params:
            return MarketAiConnection(self.server, None)
        principal = self.server.keystore.lookup(params["key"][0])
        if principal is None:
            return http_error(401, "UNAUTHORIZED", "Invalid API key.")
        # Counted when the connection is established (on_ws_connected, in this
        # same event-loop step), so a failed handshake never holds a place.
        if not self.server.limiter.has_room(principal.key_hash, principal.tier.max_connections):
            return http_error(429, "CONNECTION_LIMIT", limit_message(principal))
        return MarketAiConnection(self.server, principal)


class MarketAiConnection(Connection):
    __slots__ = ("principal", "counted", "subs")

    _parser = simdjson.Parser()

    def __init__(self, server: Server, principal: Principal | None) -> None:
        super().__init__(server)
        self.principal = principal
        self.counted = False
        self.subs: dict[str, set[str]] | None = None   # made by the first subscribe

    @property
    def dialect(self) -> MarketAi:
        return self.server.marketai

    # -- lifecycle ---------------------------------------------------------------

    def opened(self) -> None:
        if self.principal is None:
            self.server.expect_auth(self)
        else:
            self._count(self.principal)

    def released(self) -> None:
        self.server.auth_done(self)
        if self.counted:
            self.counted = False
            self.server.limiter.release(self.principal.key_hash)

    def auth_timed_out(self) -> None:
        self.send_json(error("UNAUTHORIZED", "Authentication timed out."))
        self.close(WSCloseCode.POLICY_VIOLATION, "authentication timeout")

    def _count(self, principal: Principal) -> bool:
        """Count the connection against its key, or refuse it (frame, then 1008)."""
        self.counted = self.server.limiter.acquire(principal.key_hash, principal.tier.max_connections)
        if not self.counted:
            self.send_json(refusal("CONNECTION_LIMIT", limit_message(principal)))
            self.close(WSCloseCode.POLICY_VIOLATION, "connection limit")
        return self.counted

    # -- control messages ---------------------------------------------------------

    def rate_limited(self, payload: bytes) -> None:
        s = self.server.settings
        self.send_json(error("RATE_LIMITED",
                             f"Too many messages: the budget is {s.rate:g} per second, burst {s.burst}."))

    def on_message(self, payload: bytes, is_text: bool) -> None:
        try:
            msg = self._parser.parse(payload, True)
        except ValueError:
            self.send_json(error("INVALID_MESSAGE", "Invalid JSON"))
            return
        if not isinstance(msg, dict):
            self.send_json(error("INVALID_MESSAGE", "Expected a JSON object with an 'action'."))
            return
        action = msg.get("action")
        if not self.counted:
            if action == "auth":
                self._auth(msg.get("key"))
            else:
                self.send_json(error("UNAUTHORIZED", "Authenticate first."))
            return
        if action == "subscribe":
            self._subscribe(msg)
        elif action == "unsubscribe":
            self._unsubscribe(msg)
        elif action == "ping":
            self.send_raw(b'{"type":"pong"}')
        elif action == "auth":
            self.send_json(error("INVALID_MESSAGE", "Already authenticated."))
        else:
            self.send_json(error("INVALID_MESSAGE", f"Unknown action {_show(action)}; expected "
                                                    "subscribe, unsubscribe, ping or auth."))

    def _auth(self, key: object) -> None:
        principal = self.server.keystore.lookup(key)
        if principal is None:
            self.send_json(error("UNAUTHORIZED", "Invalid API key."))
            self.close(WSCloseCode.POLICY_VIOLATION, "invalid API key")
            return
        self.server.auth_done(self)
        self.principal = principal
        if not self._count(principal):
            return
        self.send_json({"type": "authenticated", "tier": principal.tier.name})

    def _entries(self, msg: dict):
        """Yield (channel, symbols or None for all) per valid entry; report the rest."""
        channels = msg.get("channels")
        if not isinstance(channels, list) or not channels:
            self.send_json(error("INVALID_MESSAGE", "'channels' must be a non-empty list."))
            return
        for entry in channels:
            if not isinstance(entry, dict):
                self.send_json(error("INVALID_MESSAGE", "Each channel must be an object with a 'type'."))
                continue
            channel = entry.get("type")
            if channel not in CHANNELS:
                self.send_json(error("INVALID_CHANNEL", f"Unknown channel type {_show(channel)}."))
                continue
            raw = entry.get("symbols")
            if raw is None or raw == []:
                yield channel, None
                continue
            if not isinstance(raw, list):
                self.send_json(error("INVALID_MESSAGE", "'symbols' must be a list of strings."))
                continue
            symbols, bad = [], []
            for s in raw:
                c = channel_symbol(channel, s)
                if c is None:
                    bad.append(_show(s))
                elif c not in symbols:
                    symbols.append(c)
            if bad:
                expected = "a coin or BASE/QUOTE" if channel == "polymarket" else "BASE/QUOTE"
                self.send_json(error("INVALID_MESSAGE",
                                     f"Invalid symbol {', '.join(bad[:10])} on {channel}: expected {expected}."))
                continue
            yield channel, symbols

    def _subscribe(self, msg: dict) -> None:
        dialect, index, hub = self.dialect, self.server.hub.index, self.server.hub
        limit = self.principal.tier.max_symbols
        rejected: list[str] = []
        if self.subs is None:
            self.subs = {}
        for channel, symbols in self._entries(msg):
            symbols = symbols or [WILDCARD]
            mine = self.subs.setdefault(channel, set())
            before = set(mine)
            held = set().union(*self.subs.values())
            accepted, new = [], []
            for s in symbols:
                if s in mine:
                    accepted.append(s)
                elif s in held or limit is None or len(held) < limit:
                    accepted.append(s)
                    new.append(s)
                    mine.add(s)
                    held.add(s)
                else:
                    rejected.append(s)
            if not mine:
                del self.subs[channel]
            if not accepted:
                continue
            for s in new:
                index.add(dialect.topic(channel, s), self.slot)
            self.send_json({"type": "subscribed", "channel": channel, "symbols": accepted})
            # Snapshots only for what was not flowing already: a repeated
            # subscribe must never duplicate an update.
            if WILDCARD in before:
                fresh = []
            elif WILDCARD in new:
                fresh = [s for s in dialect.latest.get(channel, ()) if s not in before]
            else:
                fresh = new
            for payload in dialect.snapshots(channel, fresh):
                hub.send(self.slot, payload)
        if rejected:
            self.send_json(error("SYMBOL_LIMIT_EXCEEDED",
                                 f"Symbol limit ({limit}) exceeded. Rejected: {', '.join(rejected)}"))

    def _unsubscribe(self, msg: dict) -> None:
        dialect, index = self.dialect, self.server.hub.index
        for channel, symbols in self._entries(msg):
            mine = self.subs.get(channel, set()) if self.subs else set()
            gone = list(mine) if symbols is None else [s for s in symbols if s in mine]
            for s in gone:
                mine.discard(s)
                index.discard(dialect.topic(channel, s), self.slot)
            if not mine and self.subs:
                self.subs.pop(channel, None)
            self.send_json({"type": "unsubscribed", "channel": channel,
                            "symbols": symbols if symbols is not None else [WILDCARD]})


def _show(value: object) -> str:
    try:
        text = repr(value) if isinstance(value, str) else orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
