"""The Market.ai push API: its control messages, envelope and topics.

A dialect owns no fan-out: it turns control messages into bitset changes on
the hub's index and updates into payload bytes for ``Hub.publish``.
Rules: ../shared/spec/marketai-push-api.txt and marketai-decisions.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

import orjson

from tickcast.http import Refusal, refusal
from tickcast.keys import Principal
from tickcast.keys.places import connection_limit, limit_message
from tickcast.connection import INVALID, CloseCode, Connection, Host, parse_json
from tickcast.wire import show
from tickcast.wire.marketai import (CHANNELS, STATE_KEYS, SYMBOL_MEMO, UNSEEN, WILDCARD, channel_symbol,
                                   envelope, sequenced)

if TYPE_CHECKING:
    from tickcast.admission import Admission
    from tickcast.dialects.history import History
    from tickcast.dialects.state import LatestState
    from tickcast.keys import KeyStore
    from tickcast.keys.places import Places

# What one subscribe or unsubscribe may name (README, "Limits"): its work is
# bounded whatever the tier, and a client with more sends several messages.
MAX_ENTRIES = 32                  # channel entries (there are nine channels)
MAX_SYMBOLS = 1000                # symbols, over all its entries
MAX_WAITING = 32                  # messages kept while the cluster is asked for a key's place
_CHANNELS = frozenset(CHANNELS)


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


_UNAUTHORIZED = Refusal(401, "UNAUTHORIZED", "Invalid API key.")


class MarketAiHost(Host, Protocol):
    """What the Market.ai dialect and its connections use of their node."""
    marketai: MarketAi
    latest: LatestState
    history: History | None
    keystore: KeyStore
    places: Places
    admission: Admission

    def spawn(self, coro) -> None: ...


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
        topic = (channel, key)
        if seq > 0 and history is not None and not history.take(topic, seq, epoch):
            return 0                  # had it already: read twice as the node started
        state_key = None
        if state is not None:
            self.latest.put(channel, key, state, payload)
            # A kline is an event to a reader behind: the candle that closed must
            # not be replaced by the next one (it is kept for snapshots all the same).
            if channel != "klines":
                state_key = (channel, key, state)
        if history is None or seq < 0:
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


_NO_SYMBOLS: frozenset[str] = frozenset()
# A subscribe's confirmation up to its symbols, per channel (orjson's bytes for the whole dict).
_SUBSCRIBED = {c: b'{"type":"subscribed","channel":"%s","symbols":' % c.encode() for c in CHANNELS}


class MarketAiConnection(Connection):
    DIALECT = "marketai"
    PARSES_TEXT = True
    SEQ = False                # its updates carry their sequence numbers (MarketAiSeqConnection)
    __slots__ = ("principal", "place", "subs")

    def __init__(self, server: MarketAiHost, principal: Principal | None, peer: str = "?",
                 place: object = None) -> None:
        super().__init__(server, peer)
        self.principal = principal
        # Its place among its key's connections (keys/places.py): None (not
        # counted yet), the token Places gave, or while the cluster is asked
        # for one, a list of the messages that came meanwhile.
        self.place = place
        # What it is subscribed to: the index's own keys of its topics
        # (("m", channel, symbol), shared with every subscriber), in one
        # tuple: a connection on one symbol holds 48 bytes for it, where a
        # dict of channels took 230.
        self.subs: tuple[tuple[str, str, str], ...] = ()

    @property
    def dialect(self) -> MarketAi:
        return self.server.marketai

    # -- lifecycle ---------------------------------------------------------------

    def opened(self) -> None:
        if self.principal is None:
            self.server.admission.expect_auth(self, self.server.loop.time())

    def released(self) -> None:
        self.server.admission.auth_done(self)
        place, self.place = self.place, None
        if place is not None and type(place) is not list:
            self.server.places.give_back(self.principal, place)

    def revoked(self) -> None:
        self.send_json(error("UNAUTHORIZED", "API key revoked."))
        self.close(CloseCode.POLICY_VIOLATION, "API key revoked")

    def auth_timed_out(self) -> None:
        self.send_json(error("UNAUTHORIZED", "Authentication timed out."))
        self.close(CloseCode.POLICY_VIOLATION, "authentication timeout")

    def _count(self, principal: Principal) -> None:
        """Count the connection against its key (then say 'authenticated'),
        or refuse it (the CONNECTION_LIMIT frame, then 1008).
        With --limits the count is the cluster's: asked of Redis, and the
        messages that come meanwhile wait their turn."""
        places = self.server.places
        if not places.clustered:
            self.place = places.take_here(principal)
            self._counted(self.place is not None)
        else:
            self.place = []
            self.server.spawn(self._take_place(principal))

    async def _take_place(self, principal: Principal) -> None:
        places = self.server.places
        place = await places.take(principal)
        if self.closing:                  # gone meanwhile
            if place is not None:
                places.give_back(principal, place)
            return
        waiting, self.place = self.place, place
        self._counted(place is not None)
        for payload, is_text in waiting if place is not None else ():
            self.handle(payload, is_text)

    def _counted(self, counted: bool) -> None:
        if not counted:
            self.send_json(refusal("CONNECTION_LIMIT", limit_message(self.principal)))
            self.close(CloseCode.POLICY_VIOLATION, "connection limit")
        else:
            self.send_json({"type": "authenticated", "tier": self.principal.tier.name})

    # -- control messages ---------------------------------------------------------

    def rate_limited(self, payload: bytes) -> None:
        s = self.server.settings
        self.send_json(error("RATE_LIMITED",
                             f"Too many messages: the budget is {s.rate:g} per second, burst {s.burst}."))

    def failed(self, payload: bytes) -> None:
        self.send_json(error("INTERNAL_ERROR", "The server could not handle this message."))

    def on_message(self, payload: bytes, is_text: bool) -> None:
        place = self.place
        if type(place) is list:
            if len(place) < MAX_WAITING:
                place.append((payload, is_text))
            else:
                self.send_json(error("RATE_LIMITED", "Wait for the answer to your auth message."))
            return
        msg = parse_json(payload)
        if msg is INVALID:
            if is_text and self.not_text(payload):
                return
            self.send_json(error("INVALID_MESSAGE", "Invalid JSON"))
            return
        if not isinstance(msg, dict):
            self.send_json(error("INVALID_MESSAGE", "Expected a JSON object with an 'action'."))
            return
        action = msg.get("action")
        if place is None:                 # not counted yet: only auth
            if action == "auth":
                self._auth(msg.get("key"), msg.get("seq") is True)
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
            self.send_json(error("INVALID_MESSAGE", f"Unknown action {show(action)}; expected "
                                                    "subscribe, unsubscribe, ping or auth."))

    def _auth(self, key: object, seq: bool) -> None:
        principal = self.server.keystore.lookup(key)
        if principal is None:
            self.send_json(error("UNAUTHORIZED", "Invalid API key."))
            self.close(CloseCode.POLICY_VIOLATION, "invalid API key")
            return
        if seq and not self.SEQ:
            # The same connection, from now on with sequence numbers (the
            # subclass adds no field: the object's layout is the same).
            self.__class__ = MarketAiSeqConnection
            self.server.hub.set_seq(self.slot)
        self.server.admission.auth_done(self)
        self.principal = principal
        self._count(principal)

    def _entries(self, msg: dict) -> list[tuple[str | None, object, dict | None]]:
        """(channel, symbols as sent or None for all, positions to resume
        from or None) for each entry on a known channel, and (None, the
        error to send, None) for each other entry, in order. A message
        naming more than the bounds allow is refused whole, first."""
        channels = msg.get("channels")
        if type(channels) is not list or not channels:
            return [(None, error("INVALID_MESSAGE", "'channels' must be a non-empty list."), None)]
        entries = []
        named = 0
        if len(channels) <= MAX_ENTRIES:
            for entry in channels:
                if type(entry) is not dict:
                    entries.append((None, error("INVALID_MESSAGE", "Each channel must be an object with a 'type'."),
                                    None))
                    continue
                channel = entry.get("type")
                raw = entry.get("symbols")
                since = entry.get("since")
                if type(raw) is list:
                    named += len(raw)
                if since is not None:
                    named += len(since) if type(since) is dict else 0
                    since, wrong = self._since(since)
                    if wrong is not None:
                        entries.append((None, wrong, None))
                        continue
                if type(channel) is not str or channel not in _CHANNELS:
                    entries.append((None, error("INVALID_CHANNEL", f"Unknown channel type {show(channel)}."), None))
                elif type(raw) is list:
                    entries.append((channel, raw or None, since))
                elif raw is None:
                    entries.append((channel, None, since))
                else:
                    entries.append((None, error("INVALID_MESSAGE", "'symbols' must be a list of strings."), None))
        if len(channels) > MAX_ENTRIES or named > MAX_SYMBOLS:
            return [(None, error("INVALID_MESSAGE", f"A message may have at most {MAX_ENTRIES} channel "
                                                    f"entries and name at most {MAX_SYMBOLS} symbols."), None)]
        return entries

    def _since(self, since: object) -> tuple[dict | None, dict | None]:
        """An entry's ``since`` ({symbol: {"seq": N, "epoch": E}}) as
        ({symbol: (N, E)}, None), or (None, the error to send)."""
        if not self.SEQ or self.server.marketai.history is None:
            return None, error("INVALID_MESSAGE", "'since' needs sequence numbers: connect with ?seq=1 "
                                            "or authenticate with \"seq\": true.")
        if type(since) is not dict:
            return None, error("INVALID_MESSAGE", "'since' must map symbols to {\"seq\": N, \"epoch\": E}.")
        out = {}
        for symbol, position in since.items():
            seq = position.get("seq") if type(position) is dict else None
            epoch = position.get("epoch") if type(position) is dict else None
            if type(seq) is not int or seq < 0 or type(epoch) is not str or len(epoch) > 64:
                return None, error("INVALID_MESSAGE", f"Invalid position for {show(symbol)} in 'since': "
                                                      "expected {\"seq\": N, \"epoch\": E}.")
            out[symbol] = (seq, epoch)
        return out, None

    def _take(self, channel: str, raw: list, held: set[str], room: int | None):
        """One entry's symbols in order, canonical and without repeats, as far
        as ``room`` more distinct symbols (None: no limit) beyond ``held`` allow:
        (taken, over), ``over`` the names past the limit. Past it a name is
        only compared with what is held (a repeat is still confirmed), never
        validated, so a long list costs a tier no more than its limit. None,
        once INVALID_MESSAGE is sent, if a name within the limit is malformed."""
        if len(raw) == 1 and (room is None or room > 0):      # the usual entry, in fewer steps
            s = raw[0]
            # channel_symbol's memo read here first: a call fewer
            c = SYMBOL_MEMO[channel].get(s, UNSEEN) if type(s) is str else None
            if c is UNSEEN:
                c = channel_symbol(channel, s)
            if c is not None:
                return [c], ()
        taken: dict[str, None] = {}           # an ordered set
        over: list[str] = []
        bad: list[str] = []
        for s in raw:
            if room is None or room > 0:
                c = channel_symbol(channel, s)
                if c is None:
                    bad.append(show(s))
                    if len(bad) == 10:
                        break
                    continue
            else:
                c = _loose(channel, s)
                if c not in held and c not in taken:
                    over.append(c if c is not None else show(s))
                    continue
            if c in taken:
                continue
            taken[c] = None
            if room is not None and c not in held:
                room -= 1
        if bad:
            expected = "a coin or BASE/QUOTE" if channel == "polymarket" else "BASE/QUOTE"
            self.send_json(error("INVALID_MESSAGE",
                                 f"Invalid symbol {', '.join(bad)} on {channel}: expected {expected}."))
            return None
        return list(taken), over

    def _subscribe(self, msg: dict) -> None:
        hub = self.server.hub
        dialect, index, slot = self.server.marketai, hub.index, self.slot
        limit = self.principal.tier.max_symbols
        held = {key[2] for key in self.subs} if self.subs else set()    # distinct symbols, all channels
        rejected: list[str] = []
        for channel, raw, since in self._entries(msg):
            if channel is None:
                self.send_json(raw)
                continue
            room = None if limit is None else limit - len(held)
            if raw is None:
                raw = [WILDCARD]
                took = ([WILDCARD], []) if WILDCARD in held or room is None or room > 0 else ([], raw)
            else:
                took = self._take(channel, raw, held, room)
                if took is None:
                    continue
            accepted, over = took
            if over:
                rejected += over
            if not accepted:
                continue
            before = {key[2] for key in self.subs if key[1] == channel} if self.subs else _NO_SYMBOLS
            wild = dialect.wild[channel]
            new, keys = [], []           # (loops, not comprehensions: each of those is a call)
            for s in accepted:
                if s not in before:
                    keys.append(index.subscribe(("m", channel, s), -1 if s == WILDCARD else wild, slot))
                    new.append(s)
            if keys:
                self.subs += tuple(keys)
                held.update(new)
            if since is None:
                hub.send(slot, _SUBSCRIBED[channel] + orjson.dumps(accepted) + b"}")
                replays = None
            else:
                # What it missed since the positions it names: the confirmation says
                # which were recovered, then come their updates, then the live stream.
                replays = self._recover(channel, since, new, before)
                hub.send(slot, _SUBSCRIBED[channel] + orjson.dumps(accepted) + b',"recovered":'
                         + orjson.dumps({s: r is not None for s, r in replays.items()}) + b"}")
                for payloads in replays.values():
                    for payload in payloads or ():
                        hub.send(slot, payload)
            # Snapshots only for what was not flowing already (a repeated
            # subscribe must never duplicate an update), nor recovered.
            if channel in STATE_KEYS and WILDCARD not in before:
                if WILDCARD in new:
                    fresh = [s for s in dialect.latest.names(channel) if s not in before]
                else:
                    fresh = new
                if replays:
                    fresh = [s for s in fresh if replays.get(s) is None]
                for payload in dialect.snapshots(channel, fresh, self.SEQ):
                    hub.send(slot, payload)
        if rejected:
            more = f" and {len(rejected) - 10} more" if len(rejected) > 10 else ""
            self.send_json(error("SYMBOL_LIMIT_EXCEEDED",
                                 f"Symbol limit ({limit}) exceeded. Rejected: {', '.join(rejected[:10])}{more}"))

    def _recover(self, channel: str, since: dict, new: list, before) -> dict[str, list | None]:
        """For each symbol ``since`` names: its updates after the position it
        gives, if this subscribe starts it (not flowing already), they are
        all still kept and they fit in half of --max-queue with those before
        them (a resume must not make its client a slow consumer); else
        None, never a part of them."""
        history = self.server.marketai.history
        everything = WILDCARD in new
        room = self.server.settings.max_queue // 2
        out: dict[str, list | None] = {}
        for symbol, (seq, epoch) in since.items():
            c = channel_symbol(channel, symbol)
            if c is None or not (c in new or everything and c not in before):
                out[c or show(symbol)] = None
                continue
            replay = history.since((channel, c), seq, epoch)
            if replay is not None:
                room -= sum(len(p) + 10 for p in replay)
                if room < 0:
                    replay = None
            out[c] = replay
        stats = self.server.stats
        for replay in out.values():
            stats["resumes_recovered" if replay is not None else "resumes_not_recovered"] += 1
        return out

    def _symbols(self, channel: str) -> list[str]:
        return [key[2] for key in self.subs if key[1] == channel]

    def _unsubscribe(self, msg: dict) -> None:
        dialect, index = self.dialect, self.server.hub.index
        for channel, raw, _ in self._entries(msg):
            if channel is None:
                self.send_json(raw)
                continue
            symbols = None
            if raw is not None:
                took = self._take(channel, raw, set(), None)
                if took is None:
                    continue
                symbols = took[0]
            mine = self._symbols(channel)
            gone = set(mine) if symbols is None else set(symbols).intersection(mine)
            for s in gone:
                index.discard(dialect.topic(channel, s), self.slot)
            if gone:
                self.subs = tuple(key for key in self.subs if key[1] != channel or key[2] not in gone)
            self.send_json({"type": "unsubscribed", "channel": channel,
                            "symbols": symbols if symbols is not None else [WILDCARD]})


def _loose(channel: str, symbol: object) -> str | None:
    """The canonical form a name would have, without checking it (names past
    the symbol limit are only compared with what is held)."""
    if not isinstance(symbol, str):
        return None
    s = symbol.strip().upper()
    return s.partition("/")[0] if channel == "polymarket" else s


class MarketAiSeqConnection(MarketAiConnection):
    """A Market.ai connection that asked for sequence numbers (``?seq=1``, or
    ``"seq": true`` in its auth message): its updates carry "seq" and
    "epoch", its snapshots "snapshot": true and their topic's position, and
    its subscribe may name positions to resume from ("since")."""
    SEQ = True
    __slots__ = ()

    def opened(self) -> None:
        self.server.hub.set_seq(self.slot)
        super().opened()
