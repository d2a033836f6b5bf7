"""The Monday-style public API v4's wire: subscription identities (checked
as the server checks them), the streams and their frames, and V4Streams,
the names a feed publishes by. Shared by the server's dialect, the bus
record and the publisher; nothing here needs the server.
The contract is ../shared/spec/monday-wire.md.
"""
from __future__ import annotations

import re

from tickcast.wire import show

PATH = "/v4/public/ws"
INTERVALS = ("1m", "5m", "15m", "30m", "1h", "4h", "8h", "12h", "1d", "1w", "1M")
# type -> params that identify a subscription (all required)
TYPES = {
    "kline": ("chainId", "instrument", "expiry", "interval"),
    "orderBook": ("chainId", "instrument", "expiry"),
    "instrument": ("chainId", "instrument", "expiry"),
    "instrumentBasicInfo": ("chainId", "instrument", "expiry"),
    "portfolio": ("chainId", "userAddress"),
    "common": ("chainId",),
}
# Streams pushed to each subscription type right after its ack.
SNAPSHOTS = {"kline": ("kline",), "orderBook": ("orderBook",),
             "instrument": ("instrument", "marketPairInfoChanged")}
_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")
_UINT32 = 2 ** 32 - 1


class RequestError(Exception):
    """A v4 request refused: its error ack's code and message."""

    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _number(params: dict, name: str, limit: int) -> int:
    """A non-negative integer given as a JSON number or a numeric string."""
    if name not in params:
        raise RequestError(400, f"missing param '{name}'")
    v = params[name]
    if isinstance(v, str) and len(v) <= 20 and v.isascii() and v.isdigit():
        v = int(v)
    elif isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= limit:
        raise RequestError(400, f"invalid {name} {show(v, 60)}: expected a non-negative integer up to {limit}")
    return v


def _address(params: dict, name: str) -> str:
    if name not in params:
        raise RequestError(400, f"missing param '{name}'")
    v = params[name]
    if not isinstance(v, str) or not _ADDRESS.match(v.lower()):
        raise RequestError(400, f"invalid {name} {show(v, 60)}: expected 0x followed by 40 hex digits")
    return v.lower()


def parse_identity(params: object) -> tuple:
    """The subscription identity (type, chainId, ...) of a request's params."""
    if not isinstance(params, dict):
        raise RequestError(400, "params must be an object")
    kind = params.get("type")
    if not isinstance(kind, str) or kind not in TYPES:
        raise RequestError(400, f"unknown type {show(kind, 60)}; expected one of {', '.join(TYPES)}")
    ident: list = [kind]
    for name in TYPES[kind]:
        if name == "chainId":
            ident.append(_number(params, name, 2 ** 63 - 1))
        elif name == "expiry":
            ident.append(_number(params, name, _UINT32))
        elif name in ("instrument", "userAddress"):
            ident.append(_address(params, name))
        else:                                             # interval
            v = params.get(name)
            if name not in params:
                raise RequestError(400, "missing param 'interval'")
            if v not in INTERVALS:
                raise RequestError(400, f"invalid interval {show(v, 60)}; expected one of {','.join(INTERVALS)}")
            ident.append(v)
    return tuple(ident)


# Subscription types whose identity names an instrument and expiry.
INSTRUMENT_KINDS = ("kline", "orderBook", "instrument", "instrumentBasicInfo")
# Each pushed stream: the subscription type it belongs to, and whether its
# latest frame per identity is kept for snapshots.
STREAMS = {"orderBook": ("orderBook", True), "instrument": ("instrument", True),
           "marketPairInfoChanged": ("instrument", True), "kline": ("kline", True),
           "portfolio": ("portfolio", False), "blockNumChanged": ("common", False),
           "marketListChanged": ("common", False)}


def stream_frame(ident: tuple, stream: str, data) -> dict:
    """A stream's frame as its subscribers get it, from the identity it is routed by."""
    if ident[0] in INSTRUMENT_KINDS:
        return {"stream": stream, "chainId": ident[1], "instrument": ident[2], "expiry": ident[3], "data": data}
    return {"stream": stream, "chainId": ident[1], "data": data}


class V4Streams:
    """The v4 streams a feed publishes, named as the feed knows them. Each
    becomes a frame and the identity it is routed by; ``emit`` says where it
    goes (this server's subscribers, or a bus)."""

    def emit(self, ident: tuple, frame: dict, latest: str | None) -> int:
        raise NotImplementedError

    def publish_instrument(self, chain: int, instrument: str, expiry: int, stream: str, data) -> int:
        """orderBook, instrument or marketPairInfoChanged for one instrument and expiry."""
        ident = ("orderBook" if stream == "orderBook" else "instrument", chain, instrument, expiry)
        return self.emit(ident, stream_frame(ident, stream, data), stream)

    def publish_kline(self, chain: int, instrument: str, expiry: int, interval: str, data: dict) -> int:
        ident = ("kline", chain, instrument, expiry, interval)
        return self.emit(ident, stream_frame(ident, "kline", data), "kline")

    def publish_portfolio(self, chain: int, user: str, data: dict) -> int:
        ident = ("portfolio", chain, user)
        return self.emit(ident, stream_frame(ident, "portfolio", data), None)

    def publish_common(self, chain: int, stream: str, data) -> int:
        ident = ("common", chain)
        return self.emit(ident, stream_frame(ident, stream, data), None)
