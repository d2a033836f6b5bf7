"""Instruction counts of the micro-benchmarks' workloads, under callgrind.

Wall time on a shared machine moves by 10-30% from run to run; the number of
instructions a workload executes does not. Each workload runs in a process of
its own under `valgrind --tool=callgrind`, once N times and once 2N times;
the difference divided by N is its count per call (start-up cancels out).

    python benchmarks/callgrind.py --out new.json
    python benchmarks/callgrind.py --out new.json --compare old.json [--threshold 0.02]

With --compare it prints both and the change, and exits 1 when a workload
got more than --threshold (2%) more expensive. CI measures the previous main
with the same script (its package installed in another environment).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
# name: calls per unit (the differences are taken over this many calls).
WORKLOADS = {"encode_frame": 2000, "subscribe_churn": 20, "topic_reuse": 20, "publish_1000": 20,
             "parse_control": 2000, "read_frames": 200, "client_decode": 5}


def build(name: str):
    import workloads
    if name == "encode_frame":
        return workloads.encode()
    if name == "subscribe_churn":
        return workloads.churn()
    if name == "topic_reuse":
        return workloads.topic_reuse()
    if name == "publish_1000":
        import uvloop
        return workloads.publish(uvloop.new_event_loop(), 1000)[1]
    if name == "parse_control":
        return workloads.parse_control()
    if name == "read_frames":
        return workloads.read_frames()[1]
    if name == "client_decode":
        return workloads.client_decode(False)
    raise SystemExit(f"unknown workload {name}")


def inner(name: str, times: int) -> None:
    sys.path.insert(0, str(HERE))
    run = build(name)
    run()                          # first call: lazy set-up, the same in both runs
    for _ in range(times):
        run()


def instructions(name: str, times: int, python: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, __file__,
                        "--inner", name, "--times", str(times)], check=True, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        return int(m.group(1))


def measure(python: str) -> dict[str, int]:
    out = {}
    for name, n in WORKLOADS.items():
        one, two = instructions(name, n, python), instructions(name, 2 * n, python)
        out[name] = round((two - one) / n)
        print(f"{name:<16} {out[name]:>12,} instructions a call", file=sys.stderr, flush=True)
    return out


def compare(old: dict, new: dict, threshold: float) -> tuple[str, bool]:
    rows = ["| workload | previous | this | change |", "|---|---|---|---|"]
    worse = False
    for name, n in new.items():
        before = old.get(name)
        if not before:
            rows.append(f"| {name} | | {n:,} | new |")
            continue
        change = n / before - 1
        flag = " **regression**" if change > threshold else ""
        worse |= change > threshold
        rows.append(f"| {name} | {before:,} | {n:,} | {change:+.1%}{flag} |")
    return "\n".join(rows), worse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the counts here (JSON)")
    ap.add_argument("--compare", help="counts of the previous main (JSON) to compare with")
    ap.add_argument("--threshold", type=float, default=0.02, help="allowed growth per workload (0.02: 2%%)")
    ap.add_argument("--inner", help=argparse.SUPPRESS)
    ap.add_argument("--times", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.inner, args.times)
        return 0
    counts = measure(sys.executable)
    if args.out:
        Path(args.out).write_text(json.dumps(counts, indent=1))
    if args.compare:
        table, worse = compare(json.loads(Path(args.compare).read_text()), counts, args.threshold)
        print(table)
        return 1 if worse else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
