"""The compiled load generator (loadgen/loadgen.c), driven from Python.

Built with the machine's C compiler into build/ on first use. Several
processes share one plan (a line per client: path, tab, subscribe message)
when one process may not hold every descriptor; their counters are summed
and their latency samples merged before taking percentiles.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "loadgen" / "loadgen.c"
PER_PROCESS = 15_000              # below this machine's 20,000 descriptors a process

# Loopback source addresses (127.0.x.1, 5,000 clients each), in turn from a
# random one: an earlier run's connections linger in TIME_WAIT for 60 s, and
# connecting from their addresses costs the kernel a search past them.
_blocks = random.randrange(240)


def binary() -> Path:
    """build/loadgen-<hash of the source>, compiled when missing."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    out = HERE.parent / "build" / f"loadgen-{digest}"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cc", "-O2", "-o", str(out), str(SOURCE)], check=True)
    return out


def percentiles(samples_us: list[float]) -> dict:
    if not samples_us:
        return {}
    s = sorted(samples_us)
    return {f"p{q:g}": round(s[min(len(s) - 1, int(q / 100 * len(s)))], 1) for q in (50, 90, 99, 99.9)}


class LoadGen:
    """``plan``: (path, subscribe message or b"") per client."""

    def __init__(self, port: int, plan: list[tuple[str, bytes]], *, concurrency: int = 200,
                 subscribe_on_open: bool = False, cores: str = "1", processes: int | None = None,
                 sample_every: int = 97, pause_us: int = 0) -> None:
        global _blocks
        self.tmp = Path(tempfile.mkdtemp(prefix="loadgen-"))
        plan_file = self.tmp / "plan"
        plan_file.write_bytes(b"".join(path.encode() + b"\t" + sub + b"\n" for path, sub in plan))
        n = len(plan)
        k = processes or max(1, math.ceil(n / PER_PROCESS))
        per = math.ceil(n / k)
        self.samples = [self.tmp / f"samples-{i}" for i in range(k)]
        self.procs = []
        for i in range(k):
            count = min(per, n - i * per)
            flags = ["--first", str(i * per), "--count", str(count),
                     "--concurrency", str(max(1, concurrency // k)), "--source-block", str(_blocks),
                     "--sample-every", str(sample_every), "--samples-out", str(self.samples[i])]
            _blocks = (_blocks + count // 5000 + 1) % 240     # TIME_WAIT keeps earlier runs' ports
            if subscribe_on_open:
                flags.append("--subscribe-on-open")
            if pause_us:
                flags += ["--pause-us", str(pause_us)]
            self.procs.append(subprocess.Popen(["taskset", "-c", cores, str(binary()), str(port), str(plan_file),
                                                *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               text=True, preexec_fn=_child))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _lines(self) -> list[str]:
        out = []
        for p in self.procs:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"the load generator ended ({p.wait()})")
            out.append(line)
        return out

    def connected(self) -> dict:
        """Waits until every client is connected (or failed): clients, failed,
        seconds (the slowest process), the load generators' CPU seconds."""
        rows = [json.loads(line) for line in self._lines()]
        return {"connected": sum(r["connected"] for r in rows), "failed": sum(r["failed"] for r in rows),
                "seconds": max(r["seconds"] for r in rows), "cpu": sum(r["cpu"] for r in rows)}

    def command(self, what: str) -> None:
        for p in self.procs:
            p.stdin.write(what + "\n")
            p.stdin.flush()
        self._lines()

    def report(self) -> dict:
        for p in self.procs:
            p.stdin.write("report\n")
            p.stdin.flush()
        rows = [json.loads(line) for line in self._lines()]
        total = {k: sum(r[k] for r in rows) for k in ("frames", "bytes", "others", "lost", "reordered",
                                                        "disconnected", "cpu")}
        total["wall"] = max(r["wall"] for r in rows)
        samples = [float(x) for f in self.samples if f.exists() for x in f.read_text().split()]
        total["latency_us"] = percentiles(samples)
        total["samples_us"] = samples
        return total

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write("close\n")
                    p.stdin.flush()
                except BrokenPipeError:
                    pass
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()


def raise_nofile() -> None:
    """One descriptor per connection on each side: 50,000 idle connections need
    more than the usual hard limit, which root may raise."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 131072), max(hard, 131072)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _child() -> None:
    raise_nofile()
    os.setpgrp()               # a Ctrl-C of the harness is the harness's to handle
