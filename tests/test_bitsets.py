"""Property tests: the Cython bitset index against a plain set model."""
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tickcast._bitsets import SubscriptionIndex


class IndexModel(RuleBasedStateMachine):
    """Topics live while subscribed or pinned; the model forgets them as the index must."""

    def __init__(self):
        super().__init__()
        self.index = SubscriptionIndex(initial_slots=64)
        self.slots: set[int] = set()
        self.ids: dict[object, int] = {}          # live key -> topic
        self.subs: dict[int, set[int]] = {}       # live topic -> slots
        self.parent: dict[int, int] = {}
        self.pinned: set[int] = set()

    def _intern(self, key, parent=-1, pin=False):
        tid = self.index.topic(key, parent, pin)
        if key in self.ids:
            assert tid == self.ids[key]               # interning is stable while it lives
        else:
            assert tid not in self.subs               # a new key never shares a live id
            self.ids[key], self.subs[tid], self.parent[tid] = tid, set(), parent
            self.pinned.discard(tid)                  # an id handed out again starts afresh
            if parent >= 0:
                self.pinned.add(parent)
        if pin:
            self.pinned.add(tid)
        return tid

    def _left(self, tid, slot):
        self.subs[tid].discard(slot)
        if not self.subs[tid] and tid not in self.pinned:
            key = next(k for k, t in self.ids.items() if t == tid)
            del self.ids[key], self.subs[tid], self.parent[tid]

    @rule(key=st.integers(0, 40), with_parent=st.booleans(), pin=st.booleans())
    def intern(self, key, with_parent, pin):
        wild = self._intern(("wild", key % 4))
        self._intern(("t", key), wild if with_parent else -1, pin)

    @rule()
    def alloc(self):
        slot = self.index.alloc_slot()
        assert slot not in self.slots
        assert slot == min(set(range(len(self.slots) + 1)) - self.slots)   # lowest free first
        self.slots.add(slot)

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def free(self, data):
        slot = data.draw(st.sampled_from(sorted(self.slots)))
        self.index.free_slot(slot)
        self.slots.discard(slot)
        for tid in [t for t, members in self.subs.items() if slot in members]:
            self._left(tid, slot)

    @precondition(lambda self: self.slots and self.subs)
    @rule(data=st.data(), add=st.booleans())
    def change(self, data, add):
        slot = data.draw(st.sampled_from(sorted(self.slots)))
        tid = data.draw(st.sampled_from(sorted(self.subs)))
        if add:
            assert self.index.add(tid, slot) == (slot not in self.subs[tid])
            self.subs[tid].add(slot)
        else:
            assert self.index.discard(tid, slot) == (slot in self.subs[tid])
            if slot in self.subs[tid]:
                self._left(tid, slot)

    @rule(n=st.integers(1, 150))
    def alloc_many(self, n):
        # Crosses word and capacity boundaries (64, 128, 256 slots).
        for _ in range(n):
            self.slots.add(self.index.alloc_slot())

    @invariant()
    def agrees(self):
        assert self.index.slots() == sorted(self.slots)
        assert self.index.topics == len(self.ids)
        for key, tid in self.ids.items():
            assert self.index.find(key) == tid
        for key in [("t", k) for k in range(41)] + [("wild", k) for k in range(4)]:
            if key not in self.ids:
                assert self.index.find(key) is None       # a topic given back is forgotten
        for tid, members in self.subs.items():
            p = self.parent[tid]
            expected = members | (self.subs[p] if p >= 0 else set())
            assert self.index.members(tid) == sorted(expected)
            assert self.index.count(tid) == len(members)
            for s in list(self.slots)[:5]:
                assert self.index.contains(tid, s) == (s in members)


TestIndexModel = IndexModel.TestCase
TestIndexModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_topic_given_back_is_no_longer_addressable():
    import pytest
    ix = SubscriptionIndex()
    slot = ix.alloc_slot()
    t = ix.topic("a")
    ix.add(t, slot)
    ix.discard(t, slot)
    assert ix.topics == 0 and ix.find("a") is None
    for call in (lambda: ix.add(t, slot), lambda: ix.members(t), lambda: ix.topic("b", parent=t)):
        with pytest.raises((IndexError, ValueError)):
            call()
    assert ix.topic("b") == t                     # the id is handed out again, empty
    assert ix.members(t) == [] and ix.count(t) == 0


def test_bad_arguments_raise_not_crash():
    ix = SubscriptionIndex()
    t = ix.topic("a")
    import pytest
    for call in (lambda: ix.add(t, 5), lambda: ix.add(99, 0), lambda: ix.discard(-1, 0),
                 lambda: ix.members(7), lambda: ix.topic("b", parent=42), lambda: ix.free_slot(-1)):
        with pytest.raises((IndexError, ValueError)):
            call()
