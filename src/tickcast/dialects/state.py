"""The latest state of each topic, kept for the snapshots a new subscriber
gets, within a byte budget.

A topic's state is one payload per state key (a book per exchange, a kline
per exchange and interval, a v4 stream). Every topic a feed or the bus names
is kept, whether anybody holds it or not, until the budget is spent: then
the topics updated least recently go first, whole. A feed that names each
symbol once cannot grow a node past the budget; a symbol it names again comes
back with its next update.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Hashable

# What a kept topic and one of its state keys cost besides their payloads
# (dict and ordered-dict entries, the keys' tuples): measured with
# tracemalloc, rounded up, so that the budget is about the process's memory.
TOPIC_OVERHEAD = 450
KEY_OVERHEAD = 150


class LatestState:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.evicted = 0                                   # topics let go for the budget
        self._groups: dict[Hashable, dict[Hashable, dict]] = {}
        self._order: OrderedDict[tuple, dict] = OrderedDict()   # (group, name) -> states, oldest first

    def __len__(self) -> int:
        return len(self._order)

    def put(self, group: Hashable, name: Hashable, state: Hashable, payload: bytes) -> None:
        """Keep ``payload`` as the latest of ``state`` on the topic ``name`` of ``group``."""
        key = (group, name)
        states = self._order.get(key)
        if states is None:
            states = self._order[key] = self._groups.setdefault(group, {})[name] = {}
            self.bytes += TOPIC_OVERHEAD
        else:
            self._order.move_to_end(key)
        old = states.get(state)
        self.bytes += len(payload) - (len(old) if old is not None else -KEY_OVERHEAD)
        states[state] = payload
        while self.bytes > self.budget and len(self._order) > 1:
            self._evict()

    def _evict(self) -> None:
        (group, name), states = self._order.popitem(last=False)
        names = self._groups[group]
        del names[name]
        if not names:
            del self._groups[group]
        self.bytes -= TOPIC_OVERHEAD + sum(KEY_OVERHEAD + len(p) for p in states.values())
        self.evicted += 1

    def get(self, group: Hashable, name: Hashable) -> dict:
        """state key -> payload of one topic (empty if none is kept)."""
        return self._groups.get(group, {}).get(name, _EMPTY)

    def names(self, group: Hashable):
        """The topics of ``group`` with a state kept."""
        return self._groups.get(group, _EMPTY).keys()


_EMPTY: dict = {}
