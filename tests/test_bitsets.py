"""Property tests: the Cython bitset index against a plain set model."""
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tickcast._bitsets import SubscriptionIndex


class IndexModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.index = SubscriptionIndex(initial_slots=64)
        self.slots: set[int] = set()
        self.subs: dict[int, set[int]] = {}     # topic -> slots
        self.parent: dict[int, int] = {}

    @rule(key=st.integers(0, 40), with_parent=st.booleans())
    def intern(self, key, with_parent):
        wild = self.index.topic(("wild", key % 4))
        self.parent.setdefault(wild, -1)
        self.subs.setdefault(wild, set())
        tid = self.index.topic(("t", key), wild if with_parent else -1)
        self.parent.setdefault(tid, wild if with_parent else -1)
        self.subs.setdefault(tid, set())
        assert self.index.topic(("t", key)) == tid          # interning is stable

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
        for members in self.subs.values():
            members.discard(slot)

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
            self.subs[tid].discard(slot)

    @rule(n=st.integers(1, 150))
    def alloc_many(self, n):
        # Crosses word and capacity boundaries (64, 128, 256 slots).
        for _ in range(n):
            self.slots.add(self.index.alloc_slot())

    @invariant()
    def agrees(self):
        assert self.index.slots() == sorted(self.slots)
        for tid, members in self.subs.items():
            p = self.parent[tid]
            expected = members | (self.subs[p] if p >= 0 else set())
            assert self.index.members(tid) == sorted(expected)
            assert self.index.count(tid) == len(members)
            for s in list(self.slots)[:5]:
                assert self.index.contains(tid, s) == (s in members)


TestIndexModel = IndexModel.TestCase
TestIndexModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_bad_arguments_raise_not_crash():
    ix = SubscriptionIndex()
    t = ix.topic("a")
    import pytest
    for call in (lambda: ix.add(t, 5), lambda: ix.add(99, 0), lambda: ix.discard(-1, 0),
                 lambda: ix.members(7), lambda: ix.topic("b", parent=42), lambda: ix.free_slot(-1)):
        with pytest.raises((IndexError, ValueError)):
            call()
