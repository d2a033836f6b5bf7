"""What a bus does, and how records travel on it.

A record is one update as its subscribers will get it (``payload``, the JSON
a producer serialised once) and its route (``header``: dialect, topic and
state key, JSON too; see marketai.encode and monday.route_header). Records
published in one event-loop iteration travel together as one message:
header and payload lines alternating, joined by newlines (JSON as orjson
writes it holds none). A node splits a message with one call.
"""
from __future__ import annotations

from typing import Awaitable, Callable, Iterable, Protocol

Record = tuple[bytes, bytes, bool]          # header, payload, keep as the latest of its state key


class BusError(Exception):
    """The bus cannot be reached, or refused what was sent."""


def pack(records: Iterable[Record]) -> bytes:
    return b"\n".join(h + b"\n" + p for h, p, _ in records)


def unpack(message: bytes) -> list[bytes]:
    """Header, payload, header, payload, ... (a trailing odd line is dropped by the reader)."""
    return message.split(b"\n")


class Bus(Protocol):
    url: str

    async def connect(self) -> None:
        """Reach the bus once, or raise BusError."""

    async def send(self, records: list[Record]) -> None:
        """Publish records in order, as one message; BusError if not accepted."""

    async def consume(self, on_latest: Callable[[bytes, bytes], None],
                      on_message: Callable[[bytes], None],
                      on_state: Callable[[bool, str], None]) -> Awaitable[None]:
        """Until cancelled: first the latest record of every state key
        (``on_latest(header, payload)``), then every message from then on
        (``on_message``). Across outages it reconnects with backoff and
        resumes where it was, and tells ``on_state(ready, why)``."""

    async def close(self) -> None: ...
