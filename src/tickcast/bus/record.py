"""The bus record, both ends of it: what a producer writes and what a node reads.

A record is one update as its subscribers will get it (``payload``, the JSON
a producer serialised once) and its route (``header``, JSON too):

- Market.ai: ``["m", channel, symbol, state]``: the canonical symbol, and
  for a state channel the values of its state key (``STATE_KEYS``), else null;
- v4: ``["v4", identity, latest]``: the subscription identity it is routed
  by (``parse_identity``'s canonical form) and the stream kept for
  snapshots, or null.

Records published in one event-loop iteration travel together as one
message: header and payload lines alternating, joined by newlines (JSON as
orjson writes it holds none). A producer checks a record as the server
would (``marketai_record``, ``v4_record``); a node checks each distinct
header again (``read_header``), for producers that are not ours.

A Market.ai record also names its topic (channel and symbol): the bus
numbers it there, where it enters (every node then gives the same update
the same position), and a message carries its records' positions beside
it (``positions``: the epoch, then one number a record, 0 for none).
"""
from __future__ import annotations

import re
from typing import Iterable

import orjson

from tickcast.wire.marketai import CHANNELS, STATE_KEYS, channel_symbol, envelope
from tickcast.wire.monday import STREAMS, TYPES, RequestError, parse_identity, stream_frame

# header, payload, keep as the latest of its state key, the topic it is numbered in (b"": none)
Record = tuple[bytes, bytes, bool, bytes]


def pack(records: Iterable[Record]) -> bytes:
    return b"\n".join(h + b"\n" + p for h, p, _, _ in records)


def unpack(message: bytes) -> list[bytes]:
    """Header, payload, header, payload, ... (a trailing odd line is dropped by the reader)."""
    return message.split(b"\n")


_EPOCH = re.compile(rb"[0-9A-Za-z._-]{1,64}")


def read_positions(positions: bytes | None) -> tuple[str | None, list[int]]:
    """A message's positions: (epoch, a number per record, 0 for none);
    (None, []) when it has none or they are not of our form (an epoch goes
    into frames as a JSON string: only letters, digits and ._-)."""
    if not positions:
        return None, []
    epoch, *seqs = positions.split(b" ")
    if not _EPOCH.fullmatch(epoch) or not all(s.isdigit() and len(s) <= 18 for s in seqs):
        return None, []
    return epoch.decode("ascii"), [int(s) for s in seqs]


# -- a producer's side -------------------------------------------------------------

def marketai_record(channel: str, symbol: str, data: dict, ts: int | None = None) -> Record:
    """A Market.ai update checked as the server would and serialised once.
    ValueError says what is wrong."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    key = channel_symbol(channel, symbol)
    if key is None:
        expected = "a coin or BASE/QUOTE" if channel == "polymarket" else "BASE/QUOTE"
        raise ValueError(f"malformed symbol {symbol!r} for {channel}: expected {expected}")
    if not isinstance(data, dict):
        raise ValueError(f"data must be a JSON object, not {type(data).__name__}")
    state = STATE_KEYS.get(channel)
    header = orjson.dumps(["m", channel, key, None if state is None else [data.get(f) for f in state]])
    return header, envelope(channel, data, ts), state is not None, f"{channel}\x00{key}".encode()


def v4_route(stream: str, chain_id: int, instrument: str | None = None, expiry: int | None = None,
             interval: str | None = None, user: str | None = None) -> tuple[tuple, str | None]:
    """The identity a v4 stream's frame is routed by, checked by the server's
    own check of a subscription: (identity, the stream kept for snapshots or None)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown v4 stream {stream!r}; expected one of {', '.join(STREAMS)}")
    kind, kept = STREAMS[stream]
    given = {"chainId": chain_id, "instrument": instrument, "expiry": expiry, "interval": interval,
             "userAddress": user}
    try:
        ident = parse_identity({"type": kind, **{n: given[n] for n in TYPES[kind] if given[n] is not None}})
    except RequestError as exc:
        raise ValueError(f"{stream}: {exc.msg}") from None
    return ident, stream if kept else None


def v4_record(ident: tuple, frame: dict, latest: str | None) -> Record:
    """A v4 frame routed by its (canonical) identity."""
    return orjson.dumps(["v4", list(ident), latest]), orjson.dumps(frame), latest is not None, b""


def v4_stream_record(stream: str, chain_id: int, data, **names) -> Record:
    """A v4 stream's frame, its identity checked (``v4_route``'s names)."""
    ident, kept = v4_route(stream, chain_id, **names)
    return v4_record(ident, stream_frame(ident, stream, data), kept)


# -- a node's side ------------------------------------------------------------------

def read_header(header: bytes) -> tuple:
    """A route header checked: ("m", channel, symbol, state tuple or None) or
    ("v4", identity tuple, latest stream or None). ValueError says why not."""
    try:
        h = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed ({exc})") from None
    if not isinstance(h, list) or not h:
        raise ValueError("not a route")
    if h[0] == "m" and len(h) == 4:
        return ("m", *_marketai(*h[1:]))
    if h[0] == "v4" and len(h) == 3:
        return ("v4", *_v4(*h[1:]))
    raise ValueError("unknown dialect")


def _marketai(channel, key, state) -> tuple:
    if channel not in CHANNELS:
        raise ValueError("unknown channel")
    if not isinstance(key, str) or channel_symbol(channel, key) != key:
        raise ValueError("malformed symbol")
    fields = STATE_KEYS.get(channel)
    if fields is None:
        if state is not None:
            raise ValueError("a state key on a channel without state")
        return channel, key, None
    if not isinstance(state, list) or len(state) != len(fields) or \
            not all(v is None or isinstance(v, (str, int, float, bool)) for v in state):
        raise ValueError(f"state key must be the values of {', '.join(fields) or 'nothing'}")
    return channel, key, tuple(state)


def _v4(ident, latest) -> tuple:
    kind = ident[0] if isinstance(ident, list) and ident else None
    if not isinstance(kind, str) or kind not in TYPES or kind == "instrumentBasicInfo" \
            or len(ident) != 1 + len(TYPES[kind]):
        raise ValueError("unknown v4 identity")
    try:               # the server's own check of a subscription's identity
        canonical = parse_identity({"type": kind, **dict(zip(TYPES[kind], ident[1:]))})
    except RequestError as exc:
        raise ValueError(exc.msg) from None
    if list(canonical) != ident:
        raise ValueError("a v4 identity not in its canonical form")
    if latest is not None and STREAMS.get(latest, (None, False)) != (kind, True):
        raise ValueError(f"{latest!r} is not a kept stream of {kind}")
    return canonical, latest
