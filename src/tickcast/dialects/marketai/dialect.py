"""The Market.ai side of a node: its topics, the one path of every update
(numbered, kept for snapshots and resume, published), and the upgrade of a
new connection. Rules: ../shared/spec/marketai-push-api.txt and
marketai-decisions.md.
"""
from __future__ import annotations

from urllib.parse import parse_qs

from tickcast.dialects.marketai.connection import MarketAiConnection, MarketAiHost, MarketAiSeqConnection
from tickcast.http import Refusal
from tickcast.keys import Principal
from tickcast.keys.places import connection_limit
from tickcast.wire.marketai import CHANNELS, STATE_KEYS, WILDCARD, channel_symbol, envelope, sequenced

_UNAUTHORIZED = Refusal(401, "UNAUTHORIZED", "Invalid API key.")


class MarketAi:
    """The Market.ai side of a server: topics, latest state, new connections."""

    def __init__(self, server: MarketAiHost) -> None:
        self.server = server
        self.hub = server.hub
        self.index = server.hub.index
        # channel -> the topic of all its symbols, parent of each symbol's
        self.wild = {c: self.index.topic(("m", c, WILDCARD), pin=True) for c in CHANNELS}
        # channel, symbol -> state key -> latest payload
        self.latest = server.latest
        # (channel, symbol) -> its sequence and recent updates (None: --history-bytes 0, no sequence numbers)
        self.history = server.history

    def topic(self, channel: str, symbol: str) -> int:
        """A subscription's topic (it lives while subscribed)."""
        if symbol == WILDCARD:
            return self.wild[channel]
        return self.index.topic(("m", channel, symbol), self.wild[channel])

    def publish(self, channel: str, symbol: str, data: dict, ts: int | None = None) -> int:
        """Serialise one update once and fan it out; returns the deliveries."""
        key = channel_symbol(channel, symbol)         # memoised: a feed names the same symbols
        if key is None:
            raise ValueError(f"malformed symbol {symbol!r} for {channel}")
        tid = self.target(channel, key)
        state = STATE_KEYS.get(channel)
        if state is None:
            if self.history is None and not self.hub.has_audience(tid):
                return 0             # nobody listens and nothing is kept: not even serialised
            return self._deliver(tid, channel, key, None, envelope(channel, data, ts))
        return self._deliver(tid, channel, key, tuple([data.get(f) for f in state]), envelope(channel, data, ts))

    def target(self, channel: str, key: str) -> int:
        """The topic an update of ``key`` is published to: the symbol's while
        somebody holds it, else the channel's wildcard (a publisher interns
        nothing, so the symbols a feed names cost the index nothing)."""
        tid = self.index.find(("m", channel, key))
        return self.wild[channel] if tid is None else tid

    def deliver(self, channel: str, key: str, state: tuple | None, payload: bytes, seq: int = 0,
                epoch: str | None = None) -> int:
        """One serialised update from the bus to its subscribers, with its
        position if the bus numbered it (-1: the latest state a node reads
        when it starts, not an update: kept, never numbered)."""
        return self._deliver(self.target(channel, key), channel, key, state, payload, seq, epoch)

    def remember(self, channel: str, key: str, payload: bytes, seq: int, epoch: str) -> None:
        """An update the bus numbered before this node started: kept for a
        resume, not sent (its subscribers had it from another node)."""
        history = self.history
        topic = (channel, key)
        if history is not None and history.take(topic, seq, epoch):
            numbered = sequenced(payload, seq, epoch)
            if numbered is not None:
                history.append(topic, seq, numbered)

    def _deliver(self, tid: int, channel: str, key: str, state: tuple | None, payload: bytes, seq: int = 0,
                 epoch: str | None = None) -> int:
        """The one path of every update, whether its feed runs here or it
        came from the bus; a state channel's is kept per symbol and state
        key for snapshots, and is the latest value a connection that fell
        behind gets (state_key: conflated, where an event is queued)."""
        history = self.history
        numbering = history is not None and seq >= 0     # (-1: a node's first read of the latest state)
        if numbering:
            topic = (channel, key)
            if seq > 0 and not history.take(topic, seq, epoch):
                return 0              # had it already: read twice as the node started
        state_key = None
        if state is not None:
            self.latest.put(channel, key, state, payload)
            # A kline is an event to a reader behind: the candle that closed must
            # not be replaced by the next one (it is kept for snapshots all the same).
            if channel != "klines":
                state_key = (channel, key, state)
        if not numbering:
            return self.hub.publish(tid, payload, None, state_key)
        # Its position in the topic's sequence (the bus's, else this node's):
        # kept in the form a connection that asked for numbers gets, for a resume.
        if not seq:
            seq, epoch = history.next(topic)
        numbered = sequenced(payload, seq, epoch)
        if numbered is None:          # a producer's payload that is not an envelope of ours
            return self.hub.publish(tid, payload, None, state_key)
        history.append(topic, seq, numbered)
        return self.hub.publish(tid, payload, numbered, state_key)

    def snapshots(self, channel: str, symbols, numbered: bool = False) -> list[bytes]:
        """The state a subscriber of ``symbols`` gets first; ``numbered``: marked
        as a snapshot, with the position of the topic it is the state as of."""
        get = self.latest.get
        if not numbered or self.history is None:
            return [p for s in symbols for p in get(channel, s)]
        out = []
        for s in symbols:
            position = self.history.position((channel, s))
            for p in get(channel, s):
                out.append(p if position is None else (sequenced(p, *position, snapshot=True) or p))
        return out

    # -- the upgrade -----------------------------------------------------------

    def principal(self, query: str) -> Principal | None:
        """The principal of ``?key=``, or None (no key, or not a valid one)."""
        key = query_key(query)
        return self.server.keystore.lookup(key) if key is not None else None

    def accept(self, query: str, peer: str, placed: tuple | None = None):
        """``placed``: (principal, place), the key's place taken in the cluster
        before the upgrade (--limits). ``?seq=1``: its updates carry their
        sequence numbers."""
        kind = MarketAiSeqConnection if "seq=" in query and query_value(query, "seq") == "1" else MarketAiConnection
        if placed is not None:
            principal, place = placed
            return kind(self.server, principal, peer, place)
        key = query_key(query)
        if key is None:
            refused = self.server.admission.keyless(peer)
            if refused is not None:
                return refused
            return kind(self.server, None, peer)
        principal = self.server.keystore.lookup(key)
        places = self.server.places
        # With --limits a valid key comes with its place (``placed``): one
        # without was not valid when the handshake looked a moment ago.
        if principal is None or places.clustered:
            return _UNAUTHORIZED
        # Counted here: the handshake upgrades whatever connection the route
        # returns, in this same step, and the connection gives its place back
        # when it goes. (With --limits the handshake took it: placed.)
        place = places.take_here(principal)
        if place is None:
            return connection_limit(principal)
        return kind(self.server, principal, peer, place)


def query_key(query: str) -> str | None:
    """The first ``key`` of a query string, or None. A query of the key
    alone, as clients send it, is read without parse_qs (a tenth of its time)."""
    if query.startswith("key=") and "&" not in query and ";" not in query and "%" not in query \
            and "+" not in query:
        return query[4:]
    return query_value(query, "key")


def query_value(query: str, name: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[0] if values else None
