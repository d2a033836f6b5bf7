"""tickcast's benchmark suite: one entry point, tickcast and its peers in one run.

    pip install ./client ".[bench]"
    python benchmarks/run.py --quick          # under 2 minutes
    python benchmarks/run.py --full           # every workload at every size
    python benchmarks/run.py --quick --servers tickcast,socketify
    python benchmarks/run.py --full --only "fixed rate" --repeat 5   # medians of 5
    python benchmarks/run.py --versus --servers tickcast,socketify --repeat 5   # the README's table

--versus ends with capacity.py's run once (tickcast alone, both cores, Redis
as its bus): 100,000 connections held, in the same table.

Writes results/<UTC time>/ with results.json, results.md (every figure as an
absolute and as tickcast's ratio to each peer) and PNG plots (delivered
messages/s against clients; latency CDF). Server and load generator are each
pinned to their own core (2-core machine: core 0 and core 1).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import capacity
import harness
from harness import SERVERS


def plan(mode: str, servers: list[str]) -> list[tuple[str, str, object, dict]]:
    """(workload, server, function, kwargs) in running order."""
    steps = []

    def add(workload, fn, kwargs, who=servers):
        steps.extend((workload, s, fn, kwargs) for s in who)

    if mode == "versus":
        # The head-to-head figures of the README's table (with --repeat, interleaved).
        # At 10,000 the load generator pauses 1 ms between rounds of reads, or
        # it saturates its core reading one frame a read.
        for n, pause in ((1000, 0), (10000, 1000)):
            add("flood, one topic", harness.fanout, dict(clients=n, seconds=5, pause_us=pause))
        add("fixed rate: 100,000 deliveries/s", harness.fanout,
            dict(clients=1000, rate=100, batch=1, seconds=5, keep_samples=True))
        add("idle connections", harness.idle, dict(clients=10000))
        add("subscribed connections (one topic each)", harness.idle, dict(clients=10000, subscribed=True))
        # As many as one process may hold: a storm of 10,000 lasts under half a
        # second here, and its rate moved by a third from one run to the next.
        add("connection storm (upgrade, key, subscribe)", harness.storm,
            dict(clients=min(19000, harness.max_connections())))
    elif mode == "full":
        for n in (100, 1000, 10000):
            add("flood, one topic", harness.fanout, dict(clients=n, seconds=6, pause_us=1000 if n >= 10000 else 0))
        add("fixed rate: 1,000/s to each of 100 clients", harness.fanout,
            dict(clients=100, rate=1000, batch=1, seconds=6, keep_samples=True))
        for n, rate in ((1000, 100), (10000, 10)):
            add("fixed rate: 100,000 deliveries/s", harness.fanout,
                dict(clients=n, rate=rate, batch=1, seconds=6, keep_samples=True))
        # 100 clients ask ~330k deliveries/s (within one core); 300 ask ~1M (beyond it).
        for n in (100, 300):
            add("market-shaped: 50 symbols x 3 channels, 50,000 updates/s in", harness.fanout,
                dict(clients=n, rate=50000, batch=10, symbols=50, channels="trades,quotes,book",
                     topics_per_client=10, seconds=6, keep_samples=True))
        for n in (10000, 50000):
            # 50,000 needs a descriptor limit above it on both sides; capped where it is not.
            add("idle connections", harness.idle, dict(clients=min(n, harness.max_connections())))
        add("connection storm (upgrade, key, subscribe)", harness.storm, dict(clients=10000))
    else:
        add("flood, one topic", harness.fanout, dict(clients=1000, seconds=3, warmup=1))
        add("fixed rate: 100,000 deliveries/s", harness.fanout,
            dict(clients=1000, rate=100, batch=1, seconds=3, warmup=1, keep_samples=True))
        add("market-shaped: 50 symbols x 3 channels, 50,000 updates/s in", harness.fanout,
            dict(clients=100, rate=50000, batch=10, symbols=50, channels="trades,quotes,book",
                 topics_per_client=10, seconds=3, warmup=1, keep_samples=True), ["tickcast"])
        add("idle connections", harness.idle, dict(clients=2000))
        add("connection storm (upgrade, key, subscribe)", harness.storm, dict(clients=2000))
    return steps


HEADLINE = {"fanout": "delivered_per_s", "idle": "rss_per_connection_bytes", "storm": "connections_per_s",
            "hold": "server_rss_mib"}
CAPACITY = "100,000 connections held (serve --workers 6 on the bus, both cores; capacity.py)"


async def hold(server: str, clients: int) -> dict:
    """capacity.py's run: tickcast only (its workers share the bus)."""
    result = await capacity.capacity(clients, workers=6, seconds=10, rate=150, bus="redis://127.0.0.1:6379/14")
    return {"server": server, **result}


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def markdown(results: list[dict], meta: dict) -> str:
    out = [f"# tickcast benchmarks ({meta['mode']})", "",
           f"{meta['date']} on {meta['machine']}; server on core {harness.SERVER_CORE}, "
           f"load generator on core {harness.CLIENT_CORE}; at most {meta['max_connections']:,} connections "
           "a process (the descriptor limit)."
           + (f" Each figure is the median of {meta['repeat']} runs." if meta["repeat"] > 1 else ""), ""]
    by_workload: dict[str, list[dict]] = {}
    for r in results:
        by_workload.setdefault(r["workload"], []).append(r)
    for workload, rows in by_workload.items():
        out += [f"## {workload}", ""]
        cols = [c for c in ("clients", "connected", "connect_seconds", "server_rss_mib", "delivered_per_s", "server_cpu_s_per_million", "server_cpu",
                            "server_cpu_us_per_connection", "client_cpu", "lost", "reordered", "disconnected", "rss_per_connection_bytes",
                            "connections_per_s", "error") if any(c in r for r in rows)]
        lat = any(r.get("latency_us") for r in rows)
        head = ["server", *cols] + (["p50 µs", "p90 µs", "p99 µs", "p99.9 µs"] if lat else []) + ["tickcast ×"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            ratio = r.get("ratio")
            cells = [r["server"] + (" (client saturated)" if r.get("client_saturated") else ""),
                     *(fmt(r.get(c)) for c in cols)]
            if lat:
                cells += [fmt(r.get("latency_us", {}).get(p)) for p in ("p50", "p90", "p99", "p99.9")]
            spread = r.get("ratio_range")
            cells.append((f"{ratio:.2f}" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""))
                         if isinstance(ratio, float) else "")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += ["`tickcast ×` is tickcast's figure divided by that server's at the same workload and size "
            "(for memory, the server's figure divided by tickcast's: above 1 means tickcast uses less); "
            "with repeats, the median over the interleaved pairs of runs, and their range. "
            "`client saturated`: the load generator used over 90% of its core, so the figure is a floor.", ""]
    return "\n".join(out)


def combine(runs: list[dict]) -> list[dict]:
    """One row per (workload, server, clients): with repeats, the median of
    every figure (latency percentile by percentile) over the runs without error."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["workload"], r["server"], r.get("clients")), []).append(r)
    rows = []
    for rs in groups.values():
        ok = [r for r in rs if "error" not in r] or rs
        row = dict(ok[0], runs=len(ok))
        for k, v in ok[0].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and all(k in r for r in ok):
                vals = [r[k] for r in ok]
                m = statistics.median(vals)
                row[k] = round(m) if all(isinstance(x, int) for x in vals) else m
        measured = [r["latency_us"] for r in ok if r.get("latency_us")]
        if measured:
            row["latency_us"] = {p: statistics.median(m[p] for m in measured) for p in measured[0]}
        row["client_saturated"] = any(r.get("client_saturated") for r in ok)
        rows.append(row)
    return rows


def add_ratios(results: list[dict], runs: list[dict]) -> None:
    """tickcast's headline figure over each peer's. With repeats, the median
    of the ratios of the interleaved pairs (the i-th run of each server: they
    ran a moment apart, so a drift in the machine's speed cancels), with
    their range; otherwise the ratio of the two figures."""
    def ratio(kind, mine, theirs):
        return theirs / mine if kind == "idle" else mine / theirs

    for r in results:
        key = HEADLINE.get(r["kind"])
        mine = next((x for x in results if x["server"] == "tickcast" and x["workload"] == r["workload"]
                     and x.get("clients") == r.get("clients") and key in x), None)
        if mine is None or r["server"] == "tickcast" or not r.get(key):
            continue
        r["ratio"] = ratio(r["kind"], mine[key], r[key])

        def same(x, server):
            return x["server"] == server and x["workload"] == r["workload"] and x.get("clients") == r.get("clients")
        pairs = [(a[key], b[key]) for a, b in zip([x for x in runs if same(x, "tickcast")],
                                                  [x for x in runs if same(x, r["server"])])
                 if a.get(key) and b.get(key)]
        if len(pairs) > 1:
            ratios = [ratio(r["kind"], a, b) for a, b in pairs]
            r["ratio"] = statistics.median(ratios)
            r["ratio_range"] = [min(ratios), max(ratios)]


def plots(results: list[dict], folder: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    flood = [r for r in results if r["workload"] == "flood, one topic" and "delivered_per_s" in r]
    if flood:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for server in SERVERS:
            pts = sorted((r["clients"], r["delivered_per_s"]) for r in flood if r["server"] == server)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], marker="o", label=server)
        ax.set_xscale("log")
        ax.set_xlabel("clients (one topic, all subscribed)")
        ax.set_ylabel("delivered messages/s (millions)")
        ax.set_title("Fan-out throughput, one server core")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "throughput.png", dpi=110)
        made.append("throughput.png")
    fixed = [r for r in results if r.get("latency_samples_us") and r["workload"].startswith("fixed rate")]
    if fixed:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in fixed:
            s = sorted(r["latency_samples_us"])
            ax.plot(s, [i / len(s) for i in range(len(s))], label=f"{r['server']}, {r['clients']} clients")
        ax.set_xscale("log")
        ax.set_xlabel("publish-to-receive latency (µs)")
        ax.set_ylabel("fraction of updates")
        ax.set_title("Latency CDF at a fixed rate")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "latency_cdf.png", dpi=110)
        made.append("latency_cdf.png")
    return made


def available(server: str) -> bool:
    return server != "socketify" or importlib.util.find_spec("socketify") is not None


async def main_async(args) -> Path:
    harness.pin_client()
    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            raise SystemExit(f"unknown server {s}; expected some of {','.join(SERVERS)}")
    skipped = [s for s in servers if not available(s)]
    servers = [s for s in servers if s not in skipped]
    mode = "full" if args.full else "versus" if args.versus else "quick"
    steps = [st for st in plan(mode, servers) if args.only in st[0]] * args.repeat
    if mode == "versus" and "tickcast" in servers and args.only in CAPACITY:
        steps.append((CAPACITY, "tickcast", hold, dict(clients=100_000)))
    folder = Path(args.out) / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    started = time.monotonic()
    for i, (workload, server, fn, kwargs) in enumerate(steps, 1):
        size = kwargs.get("clients")
        label = f"[{i}/{len(steps)}] {time.monotonic() - started:5.0f}s  {server:<13} {workload}, {size:,} clients"
        print(label + " ...", end="", file=sys.stderr, flush=True)
        kind = fn.__name__
        try:
            r = await fn(server, **kwargs)
        except Exception as exc:          # a peer that cannot take the load is a result too
            r = {"server": server, "clients": size, "error": f"{type(exc).__name__}: {exc}"[:200]}
        r.update(workload=workload, kind=kind)
        results.append(r)
        (folder / "results.json").write_text(json.dumps({"results": results}, indent=1))   # so far
        key = HEADLINE[kind]
        print(f" {fmt(r.get(key, r.get('error')))} {key}", file=sys.stderr, flush=True)
    runs, results = results, combine(results)
    add_ratios(results, runs)
    meta = {"mode": mode, "repeat": args.repeat,
            "max_connections": harness.max_connections(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"Python {platform.python_version()}", "skipped": skipped,
            "seconds": round(time.monotonic() - started)}
    (folder / "results.json").write_text(json.dumps(
        {"meta": meta, "results": results, **({"runs": runs} if args.repeat > 1 else {})}, indent=1))
    (folder / "results.md").write_text(markdown(results, meta))
    made = plots(results, folder)
    print(f"\n{folder}: results.json, results.md{''.join(', ' + m for m in made)} "
          f"({meta['seconds']} s)", file=sys.stderr)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the small plan (default), under 2 minutes")
    mode.add_argument("--full", action="store_true", help="every workload at every size")
    mode.add_argument("--versus", action="store_true",
                      help="the head-to-head figures (flood, fixed rate, memory, connection rate) at 1,000-10,000")
    ap.add_argument("--servers", default=",".join(SERVERS), help="comma-separated subset of " + ",".join(SERVERS))
    ap.add_argument("--only", default="", help="run only the workloads whose name contains this text")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the plan this many times; report each figure's median")
    ap.add_argument("--out", default="results", help="folder for the results (a dated subfolder is made)")
    args = ap.parse_args()
    import uvloop
    folder = uvloop.run(main_async(args))
    print((folder / "results.md").read_text())


if __name__ == "__main__":
    main()
