"""User-space instructions a server spends per connection in a storm.

A connection storm's wall-clock rate on this machine moves by a third from
run to run; the instructions the server executes do not. Each server runs
under `valgrind --tool=callgrind`, once with no clients and once with N
(connect, upgrade, key, subscribe confirmed: the storm's load generator);
callgrind's counts are dumped once they are all in, and the difference over
N is the figure. The kernel's share (the TCP path, about half of the
connection's cost) is not counted.

    python benchmarks/storm_callgrind.py [--clients 2000] [--servers tickcast,socketify]
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
from clients import LoadGen  # noqa: E402


def instructions(kind: str, clients: int) -> int:
    """Instructions the server executed from its start until ``clients``
    were connected and subscribed (0: until it was serving)."""
    out = Path(tempfile.mkdtemp(prefix="storm-callgrind-")) / "callgrind.out"
    launcher = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
    server = harness.Server(kind, max(clients, 100), feed="none", launcher=launcher)
    gen = None
    try:
        if clients:
            topics = harness.topics_plan(clients, 100, "trades", 0)
            gen = LoadGen(server.port, [(server.path(i), harness.subscribe_message(t))
                                        for i, t in enumerate(topics)], concurrency=64, subscribe_on_open=True)
            opened = gen.connected()
            if opened["connected"] != clients:
                raise RuntimeError(f"{kind}: {opened}")
        time.sleep(1)
        subprocess.run(["callgrind_control", "--dump", str(server.proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not glob.glob(f"{out}.*") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)                                  # let the dump be written out
        dump = sorted(glob.glob(f"{out}.*"))[0]
        for line in open(dump):
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dump}")
    finally:
        if gen is not None:
            gen.close()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--servers", default="tickcast,socketify")
    args = ap.parse_args()
    harness.raise_nofile()
    rows = {}
    for kind in args.servers.split(","):
        base, loaded = instructions(kind, 0), instructions(kind, args.clients)
        rows[kind] = round((loaded - base) / args.clients)
        print(f"{kind}: {rows[kind]:,} instructions a connection", flush=True)
    print(json.dumps({"clients": args.clients, "instructions_per_connection": rows}))


if __name__ == "__main__":
    main()
