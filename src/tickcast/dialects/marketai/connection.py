"""A Market.ai connection: its control messages (auth, subscribe with
resume, unsubscribe, ping), its place among its key's connections, and
what it holds. Rules: ../shared/spec/marketai-push-api.txt and
marketai-decisions.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import orjson

from tickcast.connection import INVALID, CloseCode, Connection, Host, parse_json
from tickcast.http import refusal
from tickcast.keys import Principal
from tickcast.keys.places import limit_message
from tickcast.wire import show
from tickcast.wire.marketai import CHANNELS, STATE_KEYS, SYMBOL_MEMO, UNSEEN, WILDCARD, channel_symbol

if TYPE_CHECKING:
    from tickcast.admission import Admission
    from tickcast.dialects.history import History
    from tickcast.keys import KeyStore
    from tickcast.keys.places import Places

# What one subscribe or unsubscribe may name (README, "Limits"): its work is
# bounded whatever the tier, and a client with more sends several messages.
MAX_ENTRIES = 32                  # channel entries (there are nine channels)
MAX_SYMBOLS = 1000                # symbols, over all its entries
MAX_WAITING = 32                  # messages kept while the cluster is asked for a key's place
_CHANNELS = frozenset(CHANNELS)


_CHANNELS = frozenset(CHANNELS)


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


class Dialect(Protocol):
    """What a connection uses of its dialect (dialect.MarketAi)."""
    wild: dict[str, int]
    history: History | None
    latest: object

    def topic(self, channel: str, symbol: str) -> int: ...
    def snapshots(self, channel: str, symbols, numbered: bool = False) -> list[bytes]: ...


class MarketAiHost(Host, Protocol):
    """What the Market.ai dialect and its connections use of their node."""
    marketai: Dialect
    keystore: KeyStore
    places: Places
    admission: Admission

    def spawn(self, coro) -> None: ...


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
    def dialect(self) -> Dialect:
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
