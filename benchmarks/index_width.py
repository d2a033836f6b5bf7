"""The subscription index alone at a market's width: memory per slot, one
disconnect, one walk over a topic.

    python benchmarks/index_width.py [--topics 20000] [--slots 100000] [--per-slot 10]

Every slot subscribes to ``per-slot`` topics drawn at random; reports the
index's own C memory per slot (``nbytes``), the time of ``members`` on 2,000
topics (the walk a publish makes, with a Python list built) and of
``free_slot`` on 1,000 slots (a disconnect).
"""
from __future__ import annotations

import argparse
import random
import time

from tickcast._bitsets import SubscriptionIndex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=20000)
    ap.add_argument("--slots", type=int, default=100_000)
    ap.add_argument("--per-slot", type=int, default=10)
    args = ap.parse_args()
    rng = random.Random(7)
    ix = SubscriptionIndex()
    slots = [ix.alloc_slot() for _ in range(args.slots)]
    tids = [ix.topic(("t", i)) for i in range(args.topics)]
    for s in slots:
        for t in rng.sample(tids, args.per_slot):
            ix.add(t, s)
    print(f"index bytes a slot: {ix.nbytes / args.slots:,.0f}")
    walked = tids[:2000]
    t0 = time.perf_counter()
    n = sum(len(ix.members(t)) for t in walked)
    print(f"members: {(time.perf_counter() - t0) / len(walked) * 1e6:.2f} us a topic "
          f"({n / len(walked):.1f} subscribers on average)")
    t0 = time.perf_counter()
    for s in slots[-1000:]:
        ix.free_slot(s)
    print(f"free_slot: {(time.perf_counter() - t0) / 1000 * 1e6:.2f} us")


if __name__ == "__main__":
    main()
