"""The measuring engine: start a server (tickcast or a peer) pinned to one
core, drive it from a load generator pinned to the other, and report.

Every server runs the same benchmark feed (tickcast's `--feed bench`, or the
peers' copy of it in peers/common.py): trades updates stamped with `seq` and
`pub_ns`. The load generator is a picows client with Cython callbacks
(_loadgen.pyx); it reports its own CPU use, so a run where the client, not
the server, was the limit says so (client_saturated).
"""
from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clients import LoadGen, percentiles, raise_nofile

HERE = Path(__file__).parent
SERVERS = ("tickcast", "socketify", "picows-naive", "websockets")
PEER_SCRIPTS = {"socketify": "socketify_pubsub.py", "picows-naive": "picows_naive.py",
                "websockets": "websockets_broadcast.py"}
SERVER_CORE, CLIENT_CORE = 0, 1


def load_sink():
    import pyximport
    pyximport.install(language_level=3, build_dir=str(HERE.parent / "build" / "pyxbld"))
    sys.path.insert(0, str(HERE))
    from _loadgen import Sink
    return Sink


def max_connections() -> int:
    """Connections one process may hold here: each side needs a descriptor each."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 500


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its live children (serve --workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                total += cpu_seconds(int(child))
            except FileNotFoundError:
                pass
    return total


def rss_bytes(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024


def spread(values) -> dict | None:
    """Interleaved runs' figures as their median and range (None: no figure)."""
    values = [v for v in values if v is not None]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)} if values else None


def ranged(v: dict | None, digits: int = 0) -> str:
    """A spread() as "median (min-max)"."""
    return "-" if v is None else f"{v['median']:,.{digits}f} ({v['min']:,.{digits}f}-{v['max']:,.{digits}f})"


def free_port() -> int:
    """A port below the ephemeral range: after a run of thousands of
    connections, ephemeral ports in TIME_WAIT can make a listen fail (uWebSockets
    does not set SO_REUSEADDR)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class PrivateRedis:
    """A redis-server of this run's own, on a free port, keeping nothing on disk."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="wide-redis-")
        self.proc = subprocess.Popen(["taskset", "-c", str(CLIENT_CORE), "redis-server", "--port", str(self.port),
                                      "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis
        redis.Redis.from_url(self.url).flushdb()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Server:
    """One server process on SERVER_CORE, serving the bench feed."""

    def __init__(self, kind: str, clients: int, *, rate: float = 0, batch: int = 10, size: int = 200,
                 symbols: int = 1, channels: str = "trades", feed: str = "bench", extra: tuple = (),
                 bus: str | None = None, cores: str = str(SERVER_CORE), keys: tuple | None = None,
                 tls: bool = False, launcher: tuple = (), zipf: float = 0.0):
        """With ``bus`` (tickcast only), the server takes its updates from that
        bus and the bench feed runs as a process of its own on CLIENT_CORE,
        publishing into it. ``keys``: (a key store's URL, its keys) instead
        of a SQLite store made here. ``tls``: wss:// with a certificate made
        here (tickcast only), and ``client_tls`` the clients' context."""
        self.kind = kind
        self.client_tls = None
        self.feed = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        self.port = free_port()
        flags = ["--port", str(self.port), "--feed", feed, "--bench-rate", str(rate), "--bench-batch",
                 str(batch), "--bench-size", str(size), "--bench-symbols", str(symbols),
                 "--bench-channels", channels, "--bench-zipf", str(zipf)]
        self.keys = ["none"]
        if bus is not None:
            self.feed = subprocess.Popen(["taskset", "-c", str(CLIENT_CORE), sys.executable, "-m", "tickcast",
                                          "feed", "--bus", bus, *flags[2:]],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            flags = [*flags[:2], "--feed", "none", "--bus", bus]
        if tls:
            import ssl

            import trustme
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1")
            cert.private_key_and_cert_chain_pem.write_to_path(str(self.tmp / "cert.pem"))
            cert.private_key_pem.write_to_path(str(self.tmp / "key.pem"))
            extra = (*extra, "--certfile", str(self.tmp / "cert.pem"), "--keyfile", str(self.tmp / "key.pem"))
            self.client_tls = ssl.create_default_context()
            ca.configure_trust(self.client_tls)
        if kind == "tickcast":
            if keys is None:
                from tickcast.keys import KeyStore
                store = KeyStore(self.tmp / "keys.sqlite3")
                self.keys = [store.add("max") for _ in range(max(1, math.ceil((clients + 200) / 50)))]
                store.close()
                keys = (str(self.tmp / "keys.sqlite3"), self.keys)
            self.keys = keys[1]
            cmd = [sys.executable, "-m", "tickcast", "serve", "--keys", keys[0],
                   "--no-test-key", "--ping-interval", "600", "--ping-timeout", "60", *flags, *extra]
        else:
            cmd = [sys.executable, str(HERE / "peers" / PEER_SCRIPTS[kind]), *flags]
        # serve --workers N says so once all N serve (their own lines come first).
        several = "--workers" in extra and extra[list(extra).index("--workers") + 1] != "1"
        marker = " workers (pids " if several else "serving ws"
        for attempt in range(3):       # a picked port may still be held (TIME_WAIT): try another
            self.log = open(self.tmp / "server.log", "w+")
            self.proc = subprocess.Popen(["taskset", "-c", cores, *launcher, *cmd], stdout=self.log,
                                         stderr=self.log, text=True, preexec_fn=raise_nofile,
                                         cwd=HERE / "peers" if kind != "tickcast" else None)
            deadline = time.monotonic() + 30
            while marker not in (self.tmp / "server.log").read_text():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            else:
                return
            self.proc.kill()
            self.proc.wait()
            old, self.port = self.port, free_port()
            cmd = [str(self.port) if c == str(old) else c for c in cmd]
        raise RuntimeError(f"{kind} did not start:\n" + (self.tmp / "server.log").read_text())

    def url(self, i: int) -> str:
        scheme = "wss" if self.client_tls else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{self.path(i)}"

    def path(self, i: int) -> str:
        """Client i's request path: 50 clients a key (a peer ignores it)."""
        return f"/?key={self.keys[i // 50 % len(self.keys)]}"

    def rss(self) -> int:
        """The server's resident memory, its workers' included."""
        pids = [self.proc.pid] + [int(c) for t in Path(f"/proc/{self.proc.pid}/task").iterdir()
                                  for c in (t / "children").read_text().split()]
        return sum(rss_bytes(p) for p in pids)

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.terminate()
            try:
                self.feed.wait(10)
            except subprocess.TimeoutExpired:
                print("the feed did not stop in 10 s; killed", file=sys.stderr)
                self.feed.kill()
                self.feed.wait()
        if self.proc.poll() is not None:
            print(f"{self.kind} exited early ({self.proc.returncode}):\n"
                  + (self.tmp / "server.log").read_text()[-2000:], file=sys.stderr)
        self.proc.terminate()
        try:
            self.proc.wait(30)          # tickcast drains each connection for up to --close-timeout
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_source_block = 0


async def connect(server: Server, n: int, factory, concurrency: int = 200, read_buffer: int = 256 * 1024):
    """n connections, ``concurrency`` handshakes in flight; 5,000 per loopback
    source address (127.0.x.1), so that many runs do not run out of ports."""
    from picows import ws_connect
    global _source_block
    base = _source_block
    _source_block = (_source_block + n // 5000 + 1) % 240   # TIME_WAIT keeps earlier runs' ports
    sinks, transports = [], []
    for start in range(0, n, concurrency):
        batch = []
        for i in range(start, min(n, start + concurrency)):
            sink = factory()
            sinks.append(sink)
            batch.append(ws_connect(lambda s=sink: s, server.url(i), read_buffer_init_size=read_buffer,
                                    ssl_context=server.client_tls,
                                    local_addr=(f"127.0.{1 + (base + i // 5000) % 240}.1", 0)))
        for tr, _ in await asyncio.gather(*batch):
            transports.append(tr)
    return sinks, transports


def subscribe_message(topics: list[tuple[str, str]]) -> bytes:
    channels: dict[str, list] = {}
    for c, s in topics:
        channels.setdefault(c, []).append(s)
    return json.dumps({"action": "subscribe", "channels": [{"type": c, "symbols": s}
                                                            for c, s in channels.items()]}).encode()


def topics_plan(clients: int, symbols: int, channels: str, topics_per_client: int) -> list[list[tuple[str, str]]]:
    """Each client's topics. ``topics_per_client`` 0: client i takes symbol i
    (a topic each); 1 with one symbol: all on one topic; else market-shaped:
    5 random symbols on 2 random channels."""
    rng = random.Random(clients)
    chans = channels.split(",")
    out = []
    for i in range(clients):
        if topics_per_client == 0:
            out.append([(chans[0], f"BENCH{i % symbols}/USDT")])
        elif topics_per_client == 1 and symbols == 1:
            out.append([(chans[0], "BENCH0/USDT")])
        else:
            picked = rng.sample(range(symbols), min(symbols, 5))
            out.append([(c, f"BENCH{s}/USDT") for s in picked for c in rng.sample(chans, min(2, len(chans)))])
    return out


async def fanout(kind: str, clients: int, *, rate: float = 0, batch: int = 10, size: int = 200,
                 seconds: float = 5, warmup: float = 2, symbols: int = 1, channels: str = "trades",
                 topics_per_client: int = 1, extra: tuple = (), keep_samples: bool = False,
                 bus: str | None = None, cores: str = str(SERVER_CORE), tls: bool = False,
                 pause_us: int = 0) -> dict:
    """Throughput, latency, loss and order for one server and one workload,
    measured by the compiled load generator (the Python one for TLS).
    ``pause_us``: the load generator pauses that long between its rounds of
    reads, so that at a flood to thousands of clients it takes many frames a
    read instead of saturating its core on one frame a read."""
    if tls:
        return await fanout_python(kind, clients, rate=rate, batch=batch, size=size, seconds=seconds,
                                   warmup=warmup, symbols=symbols, channels=channels,
                                   topics_per_client=topics_per_client, extra=extra, keep_samples=keep_samples,
                                   bus=bus, cores=cores, tls=tls)
    server = Server(kind, clients, rate=rate, batch=batch, size=size, symbols=symbols, channels=channels,
                    extra=extra, bus=bus, cores=cores)
    plan = [(server.path(i), subscribe_message(t))
            for i, t in enumerate(topics_plan(clients, symbols, channels, topics_per_client))]
    gen = LoadGen(server.port, plan, cores=str(CLIENT_CORE), pause_us=pause_us)
    try:
        opened = gen.connected()
        if opened["failed"]:
            raise RuntimeError(f"{opened['failed']} of {clients} connections failed")
        gen.command("start")
        await asyncio.sleep(warmup + 0.5)
        gen.command("reset")
        s0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        await asyncio.sleep(seconds)
        r = gen.report()
        s1, wall = cpu_seconds(server.proc.pid), time.monotonic() - t0
        delivered = r["frames"]
        result = _result(kind, clients, rate, batch, size, delivered, r["wall"], s1 - s0, wall,
                         r["cpu"] / r["wall"] / len(gen.pids()), r["samples_us"], keep_samples,
                         lost=r["lost"], reordered=r["reordered"], disconnected=r["disconnected"],
                         frame_bytes=round(r["bytes"] / delivered) if delivered else None)
        return result
    finally:
        gen.close()
        server.stop()


def _result(kind, clients, rate, batch, size, delivered, measured, server_cpu, wall, client_cpu, samples_us,
            keep_samples, **counts) -> dict:
    """One fanout row: ``delivered`` frames over ``measured`` seconds, the
    server's CPU seconds over ``wall``, the client's share of its core."""
    result = {
        "server": kind, "clients": clients, "rate": rate, "batch": batch, "size": size,
        "delivered_per_s": round(delivered / measured),
        "server_cpu": round(server_cpu / wall, 3),
        "server_cpu_s_per_million": round(server_cpu / delivered * 1e6, 3) if delivered else None,
        "client_cpu": round(client_cpu, 3), "client_saturated": client_cpu > 0.9,
        "latency_us": percentiles(samples_us), **counts,
    }
    if keep_samples:
        result["latency_samples_us"] = samples_us[:20000]
    return result


async def fanout_python(kind: str, clients: int, *, rate: float = 0, batch: int = 10, size: int = 200,
                        seconds: float = 5, warmup: float = 2, symbols: int = 1, channels: str = "trades",
                        topics_per_client: int = 1, extra: tuple = (), keep_samples: bool = False,
                        bus: str | None = None, cores: str = str(SERVER_CORE), tls: bool = False) -> dict:
    """fanout with the picows load generator (_loadgen.pyx), which speaks TLS."""
    Sink = load_sink()
    server = Server(kind, clients, rate=rate, batch=batch, size=size, symbols=symbols, channels=channels,
                    extra=extra, bus=bus, cores=cores, tls=tls)
    topics = iter(topics_plan(clients, symbols, channels, topics_per_client))
    try:
        sinks, transports = await connect(server, clients, lambda: Sink(subscribe_message(next(topics))))
        for s in sinks:
            s.start()
        await asyncio.sleep(warmup)
        # A full collection of this process's heap stalls the load generator
        # for 30-50 ms (every frame meanwhile counts as late): one now, none
        # while measuring.
        gc.collect()
        gc.disable()
        await asyncio.sleep(0.5)
        for s in sinks:
            s.reset()
        gaps0 = sum(s.gaps for s in sinks)
        s0, c0, t0 = cpu_seconds(server.proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(seconds)
        s1, c1, t1 = cpu_seconds(server.proc.pid), resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        gc.enable()
        wall = t1 - t0
        client_cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / wall
        result = _result(kind, clients, rate, batch, size, sum(s.frames for s in sinks), wall, s1 - s0, wall,
                         client_cpu, [round(x / 1000, 1) for s in sinks for x in s.latencies], keep_samples,
                         lost=sum(s.gaps for s in sinks) - gaps0, reordered=sum(s.reorders for s in sinks),
                         disconnected=sum(1 for s in sinks if s.close_code))
        await close_all(transports)
        return result
    finally:
        server.stop()


async def idle(kind: str, clients: int, subscribed: bool = False, workers: int = 1) -> dict:
    """Server RSS per connection (connected, authenticated; ``subscribed``:
    each to one topic of 100), nothing flowing. With ``workers``, tickcast's
    processes together."""
    extra = ("--workers", str(workers)) if workers > 1 else ()
    server = Server(kind, clients, feed="none", extra=extra, cores="0" if workers == 1 else "0,1")
    topics = topics_plan(clients, 100, "trades", 0) if subscribed else [[] for _ in range(clients)]
    try:
        # Warm the interpreter's and allocator's steady state first.
        warm = LoadGen(server.port, [(server.path(i), b"") for i in range(200)])
        warm.connected()
        warm.close()
        await asyncio.sleep(1)
        before = server.rss()
        gen = LoadGen(server.port, [(server.path(i), subscribe_message(t) if t else b"")
                                    for i, t in enumerate(topics)], subscribe_on_open=subscribed)
        try:
            opened = gen.connected()
            await asyncio.sleep(2)
            after = server.rss()
        finally:
            gen.close()
        return {"server": kind, "clients": clients, "connected": opened["connected"],
                "rss_before_mib": round(before / 2 ** 20, 1), "rss_after_mib": round(after / 2 ** 20, 1),
                "rss_per_connection_bytes": round((after - before) / max(1, opened["connected"]))}
    finally:
        server.stop()


async def storm(kind: str, clients: int, concurrency: int = 256, extra: tuple = (), keys=None,
                subscribe: bool = True) -> dict:
    """Connections per second: TCP connect, WebSocket handshake, key check
    and (``subscribe``) a subscription confirmed (``extra``: more serve
    flags; ``keys``: a key store's URL and its keys)."""
    server = Server(kind, clients, feed="none", extra=extra, keys=keys)
    topics = topics_plan(clients, 100, "trades", 0)
    gen = None
    try:
        s0 = cpu_seconds(server.proc.pid)
        gen = LoadGen(server.port, [(server.path(i), subscribe_message(t) if subscribe else b"")
                                    for i, t in enumerate(topics)], concurrency=concurrency, subscribe_on_open=True)
        opened = gen.connected()
        s1 = cpu_seconds(server.proc.pid)
        wall = opened["seconds"]
        return {"server": kind, "clients": clients, "concurrency": concurrency, "failed": opened["failed"],
                "connections_per_s": round(opened["connected"] / wall), "server_cpu": round((s1 - s0) / wall, 3),
                # What sets the rate when the server's core is the limit, and steadier than the rate.
                "server_cpu_us_per_connection": round((s1 - s0) / max(1, opened["connected"]) * 1e6, 1),
                "client_cpu": round(opened["cpu"] / wall, 3), "client_saturated": opened["cpu"] / wall > 0.9}
    finally:
        if gen is not None:
            gen.close()
        server.stop()


async def close_all(transports) -> None:
    """Disconnect and wait until every socket is closed: the next run must not
    inherit this one's descriptors."""
    for tr in transports:
        tr.disconnect()
    await asyncio.wait_for(asyncio.gather(*(tr.wait_disconnected() for tr in transports),
                                          return_exceptions=True), 60)


def pin_client() -> None:
    os.sched_setaffinity(0, {CLIENT_CORE})
    raise_nofile()
