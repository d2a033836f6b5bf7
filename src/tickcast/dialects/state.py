"""The latest state of each topic, kept for the snapshots a new subscriber
gets, within a byte budget.

A topic's state is one payload per state key (a book per exchange, a kline
per exchange and interval, a v4 stream). Every topic a feed or the bus names
is kept, whether anybody holds it or not, until the budget is spent: then
the topics updated least recently go first, whole. A feed that names each
symbol once cannot grow a node past the budget; a symbol it names again comes
back with its next update.

Most topics have one state key (a quote, a v4 stream), so a topic's state is
a (state key, payload) pair until it has a second key, and a dict from then
on; the topics are one ordered dict, in the order of their last update,
which is the eviction order.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterator

# What a kept topic and each further state key cost besides their payloads
# (the ordered dict's entry and node, the (group, name) and (state, payload)
# tuples, the payload's bytes object header): measured with tracemalloc, rounded up, so that the
# budget is about the process's memory.
TOPIC_OVERHEAD = 250
KEY_OVERHEAD = 120


class LatestState:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.evicted = 0                                   # topics let go for the budget
        # (group, name) -> (state key, payload) or {state key: payload}, least recently updated first
        self._topics: OrderedDict[tuple, tuple | dict] = OrderedDict()

    def __len__(self) -> int:
        return len(self._topics)

    def put(self, group: Hashable, name: Hashable, state: Hashable, payload: bytes) -> None:
        """Keep ``payload`` as the latest of ``state`` on the topic ``name`` of ``group``."""
        # A copy of exactly its size: orjson's output keeps a buffer of 4 KiB
        # or more whatever its length (3.12 and later), which a payload kept
        # for hours must not hold.
        payload = bytes(memoryview(payload))
        key = (group, name)
        topics = self._topics
        kept = topics.get(key)
        if kept is None:
            kept = (state, payload)
            self.bytes += TOPIC_OVERHEAD + len(payload)
        elif type(kept) is tuple:
            if kept[0] == state:
                self.bytes += len(payload) - len(kept[1])
                kept = (state, payload)
            else:
                kept = {kept[0]: kept[1], state: payload}
                self.bytes += KEY_OVERHEAD + len(payload)
        else:
            old = kept.get(state)
            self.bytes += len(payload) - (len(old) if old is not None else -KEY_OVERHEAD)
            kept[state] = payload
        topics[key] = kept
        topics.move_to_end(key)
        while self.bytes > self.budget and len(self._topics) > 1:
            self._evict()

    def _evict(self) -> None:
        _, kept = self._topics.popitem(last=False)
        if type(kept) is tuple:
            self.bytes -= TOPIC_OVERHEAD + len(kept[1])
        else:
            self.bytes -= TOPIC_OVERHEAD - KEY_OVERHEAD + sum(KEY_OVERHEAD + len(p) for p in kept.values())
        self.evicted += 1

    def get(self, group: Hashable, name: Hashable) -> list[bytes]:
        """The payloads kept for one topic, one per state key."""
        kept = self._topics.get((group, name))
        if kept is None:
            return []
        return [kept[1]] if type(kept) is tuple else list(kept.values())

    def stream(self, group: Hashable, name: Hashable, state: Hashable) -> bytes | None:
        """The payload kept for one state key of a topic, or None."""
        kept = self._topics.get((group, name))
        if kept is None:
            return None
        if type(kept) is tuple:
            return kept[1] if kept[0] == state else None
        return kept.get(state)

    def names(self, group: Hashable) -> Iterator:
        """The topics of ``group`` with a state kept (a walk over every topic
        kept: for a wildcard's snapshots, which send them all anyway)."""
        return (name for g, name in self._topics if g == group)
