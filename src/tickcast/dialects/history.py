"""Each topic's position and recent updates: what sequence numbers and an
exact resume are made of.

Every update of a topic (a channel and symbol) gets the next number of that
topic's sequence, and the sequence an epoch: a string that changes only when
the sequence starts again (a new process, or a topic whose log was let go).
The updates themselves are kept, in the form a client that asked for
sequence numbers gets (ready to send), for at least KEEP_SECONDS and at
least the last KEEP_UPDATES of every topic, within a byte budget: past it,
the topics updated least recently go first, whole (their sequence starts
again, in a new epoch, with their next update). A client that names a
position (seq, epoch) gets every update after it, or is told that the
position cannot be recovered: never a part of what it missed.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict

KEEP_SECONDS = 60.0
KEEP_UPDATES = 300
# What a topic's log and each kept update cost besides their payloads (the
# ordered dict's entry, the log object and its list, an entry's tuple, float
# and bytes header), measured with tracemalloc and rounded up.
LOG_OVERHEAD = 400
ENTRY_OVERHEAD = 120


class TopicLog:
    __slots__ = ("epoch", "seq", "entries", "nbytes")

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.seq = 0                              # the number of its latest update
        self.entries: list[tuple[float, bytes]] = []   # (when, payload) of seq - len + 1 ... seq
        self.nbytes = LOG_OVERHEAD


class History:
    def __init__(self, budget: int, keep_seconds: float = KEEP_SECONDS, keep_updates: int = KEEP_UPDATES,
                 clock=time.monotonic) -> None:
        self.budget = budget
        self.keep_seconds = keep_seconds
        self.keep_updates = keep_updates
        self.clock = clock
        self.bytes = 0
        self.evicted = 0                          # topics whose log was let go for the budget
        self._logs: OrderedDict[tuple, TopicLog] = OrderedDict()   # least recently updated first
        # An epoch is this process's id and the count of logs it began: it
        # changes whenever a topic's sequence starts again.
        self._boot = os.urandom(4).hex()
        self._began = 0

    def __len__(self) -> int:
        return len(self._logs)

    def next(self, topic: tuple) -> tuple[int, str]:
        """The position the next update of ``topic`` takes: (seq, epoch)."""
        log = self._logs.get(topic)
        if log is None:
            self._began += 1
            log = self._logs[topic] = TopicLog(f"{self._boot}-{self._began:x}")
            self.bytes += LOG_OVERHEAD
        return log.seq + 1, log.epoch

    def take(self, topic: tuple, seq: int, epoch: str) -> bool:
        """Make ready for the update numbered (seq, epoch) where it entered
        the bus; False if it was had already (a node reads an entry twice
        at worst). Another epoch starts the log again; a hole in the
        sequence drops what was kept before it (a resume from there could
        not be whole)."""
        log = self._logs.get(topic)
        if log is not None and log.epoch == epoch:
            if seq <= log.seq:
                return False
            if seq == log.seq + 1:
                return True
            freed = log.nbytes - LOG_OVERHEAD
            log.entries.clear()
        else:
            freed = log.nbytes if log is not None else -LOG_OVERHEAD
            log = self._logs[topic] = TopicLog(epoch)
        log.nbytes = LOG_OVERHEAD
        self.bytes -= freed
        log.seq = seq - 1
        return True

    def append(self, topic: tuple, seq: int, payload: bytes) -> None:
        """Keep ``payload``, the update at ``seq`` (the one next() gave, or take() made ready)."""
        log = self._logs[topic]
        payload = bytes(memoryview(payload))     # exact size (orjson's buffers are 4 KiB or more)
        now = self.clock()
        log.seq = seq
        entries = log.entries
        entries.append((now, payload))
        cost = ENTRY_OVERHEAD + len(payload)
        log.nbytes += cost
        self.bytes += cost
        if seq % self.keep_updates == 0 and len(entries) >= 2 * self.keep_updates:
            self._trim(log, now)          # every so many updates: one del for many entries
        self._logs.move_to_end(topic)
        while self.bytes > self.budget and len(self._logs) > 1:
            self._evict()

    def _trim(self, log: TopicLog, now: float) -> None:
        """Let go of the entries past both bounds (older than keep_seconds and
        not among the last keep_updates), in one step."""
        entries = log.entries
        old = now - self.keep_seconds
        n = 0
        limit = len(entries) - self.keep_updates
        while n < limit and entries[n][0] < old:
            n += 1
        if n:
            freed = sum(ENTRY_OVERHEAD + len(p) for _, p in entries[:n])
            del entries[:n]
            log.nbytes -= freed
            self.bytes -= freed

    def _evict(self) -> None:
        _, log = self._logs.popitem(last=False)
        self.bytes -= log.nbytes
        self.evicted += 1

    def position(self, topic: tuple) -> tuple[int, str] | None:
        """The topic's latest (seq, epoch), None if it has none."""
        log = self._logs.get(topic)
        return None if log is None or not log.seq else (log.seq, log.epoch)

    def since(self, topic: tuple, seq: int, epoch: str) -> list[bytes] | None:
        """Every update of ``topic`` after ``seq`` in ``epoch``, in order, or
        None when that is not all here (another epoch, a position older than
        what is kept, or one not reached yet)."""
        log = self._logs.get(topic)
        if log is None or log.epoch != epoch or seq > log.seq:
            return None
        first = log.seq - len(log.entries) + 1
        if seq + 1 < first:
            return None
        return [p for _, p in log.entries[seq + 1 - first:]]
