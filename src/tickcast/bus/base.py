"""What a bus does (the records it carries: record.py)."""
from __future__ import annotations

from typing import Awaitable, Callable, Protocol

from tickcast.bus.record import Record


class BusError(Exception):
    """The bus cannot be reached, or refused what was sent."""


class Bus(Protocol):
    url: str

    async def connect(self) -> None:
        """Reach the bus once, or raise BusError."""

    async def send(self, records: list[Record]) -> None:
        """Publish records in order, as one message; BusError if not accepted."""

    async def consume(self, on_latest: Callable[[bytes, bytes], None],
                      on_message: Callable[[bytes, bytes | None], None],
                      on_state: Callable[[bool, str], None],
                      on_past: Callable[[bytes, bytes | None], None] | None = None) -> Awaitable[None]:
        """Until cancelled: first, with ``on_past``, the messages of the last
        PAST_SECONDS (for a resume: what its clients had from other nodes),
        then the latest record of every state key (``on_latest(header,
        payload)``), then every message from then on (``on_message(message,
        positions)``). Across outages it reconnects with backoff and resumes
        where it was, and tells ``on_state(ready, why)``."""

    async def close(self) -> None: ...
