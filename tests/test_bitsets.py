"""Property tests: the Cython subscription index and the hub's publish
against a plain set model."""
import asyncio
import random

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tickcast._bitsets import SubscriptionIndex
from tickcast._fanout import Hub


class Sink:
    """A byte transport that keeps what it is given."""
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data

    def get_write_buffer_size(self):
        return 0

    def frames(self):
        """The payloads of the (unmasked, server-to-client) frames written."""
        out, d, at = [], self.data, 0
        while at < len(d):
            n, at = d[at + 1] & 0x7F, at + 2
            if n == 126:
                n, at = int.from_bytes(d[at:at + 2], "big"), at + 2
            elif n == 127:
                n, at = int.from_bytes(d[at:at + 8], "big"), at + 8
            out.append(bytes(d[at:at + n]))
            at += n
        d.clear()
        return out


class IndexModel(RuleBasedStateMachine):
    """Topics live while subscribed or pinned; the model forgets them as the
    index must; a publish reaches the model's audience, each connection once."""

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.hub = Hub(self.loop, 1 << 30)
        self.index = self.hub.index
        self.sinks: dict[int, Sink] = {}
        self.published = 0
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

    def teardown(self):
        self.loop.close()

    def _attach(self):
        sink = Sink()
        slot = self.hub.attach(sink)
        self.sinks[slot] = sink
        return slot

    @rule()
    def alloc(self):
        slot = self._attach()
        assert slot not in self.slots
        assert slot == min(set(range(len(self.slots) + 1)) - self.slots)   # lowest free first
        self.slots.add(slot)

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def free(self, data):
        slot = data.draw(st.sampled_from(sorted(self.slots)))
        self.hub.detach(slot)
        del self.sinks[slot]
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
            self.slots.add(self._attach())

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def publish(self, data):
        tid = data.draw(st.sampled_from(sorted(self.subs)))
        p = self.parent[tid]
        audience = self.subs[tid] | (self.subs[p] if p >= 0 else set())
        self.published += 1
        payload = b"%d" % self.published
        assert self.hub.publish(tid, payload) == len(audience)
        self.hub.flush()
        for slot, sink in self.sinks.items():
            assert sink.frames() == ([payload] if slot in audience else [])

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
    for call in (lambda: ix.add(t, 5), lambda: ix.add(99, 0), lambda: ix.discard(-1, 0),
                 lambda: ix.members(7), lambda: ix.topic("b", parent=42), lambda: ix.free_slot(-1)):
        with pytest.raises((IndexError, ValueError)):
            call()


def test_chunks_arrays_and_bitsets_against_a_model():
    """Past what the state machine reaches: slots in three chunks of 65,536,
    topics whose arrays turn into bitsets (past 4,096 in a chunk) and back
    (below 2,048), and a disconnect that leaves every topic it held."""
    rng = random.Random(25)
    ix = SubscriptionIndex()
    slots = [ix.alloc_slot() for _ in range(140_000)]
    assert slots == list(range(140_000))
    wild = ix.topic("wild", pin=True)
    tids = [ix.topic(("t", i), wild) for i in range(6)]
    base = ix.nbytes                             # the tables, before any subscription
    model = {t: set() for t in [wild, *tids]}
    sizes = {wild: 300, tids[0]: 9000, tids[1]: 5000, tids[2]: 70_000, tids[3]: 20, tids[4]: 4097, tids[5]: 1}
    for t, n in sizes.items():
        for s in rng.sample(slots, n):
            assert ix.add(t, s) == (s not in model[t])
            model[t].add(s)

    def agrees():
        for t in tids:
            assert ix.count(t) == len(model[t])
            assert ix.members(t) == sorted(model[t] | model[wild])
        for s in rng.sample(slots, 200):
            assert sorted(ix.held_by(s)) == sorted(t for t in model if s in model[t])

    agrees()
    for t in (tids[0], tids[2]):                 # down through the bitset-to-array threshold
        for s in rng.sample(sorted(model[t]), len(model[t]) - 1500):
            assert ix.discard(t, s)
            model[t].discard(s)
        assert not ix.discard(t, next(s for s in slots if s not in model[t]))
    agrees()
    for s in rng.sample(slots, 3000):            # disconnects
        ix.free_slot(s)
        for t in model:
            model[t].discard(s)
        assert ix.alloc_slot() == s              # the lowest free slot comes back
    agrees()
    for s in slots:
        ix.free_slot(s)
    assert ix.topics == 1                        # only the pinned wildcard is left
    assert ix.nbytes == base    # and the memory of all the rest went back
