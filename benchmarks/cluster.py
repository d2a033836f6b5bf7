"""What running as a cluster costs a connection, and how soon a revoke bites.

    python benchmarks/cluster.py            # about 1 minute; Redis at 127.0.0.1:6379 (database 14,
                                            # flushed), PostgreSQL at 127.0.0.1:5432 (a database of its own)
    python benchmarks/cluster.py --quick

1. Connection rate on one node (server on core 0, a compiled client on
   core 1, 200 handshakes in flight): TCP connect, upgrade, key check, and
   with --limits the lease in Redis; keys in SQLite or in PostgreSQL
   (answered from memory). Rounds interleaved.
2. Revocation to close: 100 connections of one key over two nodes; the
   time from the revoking statement's commit to each connection's close
   frame, with keys in PostgreSQL (LISTEN/NOTIFY) and in SQLite (one node,
   the store polled twice a second).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

from tickcast.server import KEY_WATCH  # noqa: E402

LIMITS = "redis://127.0.0.1:6379/14"
ADMIN = "postgresql://root@127.0.0.1:5432/test"


def flush() -> None:
    import redis
    redis.Redis.from_url(LIMITS).flushdb()


async def pg_keys(admin, n: int) -> tuple[str, list[str]]:
    """A fresh database with ``n`` keys of tier max."""
    from tickcast.keys import postgres
    name = f"tickcast_bench_{os.urandom(4).hex()}"
    await admin.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://root@127.0.0.1:5432/{name}"
    return url, [await postgres.add(url, "max") for _ in range(n)]


async def rates(rounds: int, clients: int) -> list[dict]:
    import asyncpg
    admin = await asyncpg.connect(ADMIN)
    url, keys = await pg_keys(admin, clients // 50 + 5)
    rows = []
    try:
        configs = [("SQLite", (), None), ("SQLite, --limits", ("--limits", LIMITS), None),
                   ("PostgreSQL, --limits", ("--limits", LIMITS), (url, keys))]
        for r in range(rounds):
            for name, extra, store in configs:
                flush()
                res = await harness.storm("tickcast", clients, extra=extra, keys=store, subscribe=False)
                res["config"] = name
                rows.append(res)
                print(f"  round {r + 1}  {name:<22} {res['connections_per_s']:>6,} connections/s  server cpu "
                      f"{res['server_cpu']:.2f} ({res['server_cpu_us_per_connection']} µs each)  client cpu "
                      f"{res['client_cpu']:.2f}", flush=True)
    finally:
        await admin.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        await admin.close()
    return rows


async def closes(key: str, nodes, n: int) -> list:
    """n connections of ``key`` over ``nodes``, each waiting for its close frame."""
    import websockets
    conns = [await websockets.connect(f"ws://127.0.0.1:{nodes[i % len(nodes)].port}/?key={key}")
             for i in range(n)]

    async def closed(ws):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            return time.monotonic()
    return [asyncio.create_task(closed(ws)) for ws in conns]


async def revocation(repeats: int) -> list[dict]:
    import asyncpg

    from tickcast.keys import KeyStore
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from processes import Node
    admin = await asyncpg.connect(ADMIN)
    url, keys = await pg_keys(admin, repeats)
    tmp = Path(harness.tempfile.mkdtemp(prefix="bench-cluster-"))
    store = KeyStore(tmp / "keys.sqlite3")
    local_keys = [store.add("max") for _ in range(repeats)]
    store.close()
    started = [Node(tmp, None, "--feed", "none", keys=url), Node(tmp, None, "--feed", "none", keys=url),
               Node(tmp, None, "--feed", "none", keys=str(tmp / "keys.sqlite3"))]
    rows = []
    try:
        conn = await asyncpg.connect(url)
        for i in range(repeats):
            for name, nodes, key in (("PostgreSQL, 2 nodes", started[:2], keys[i]),
                                     ("SQLite, 1 node", started[2:], local_keys[i])):
                waits = await closes(key, nodes, 50)          # a max key's limit
                await asyncio.sleep(0.2 + random.random() * KEY_WATCH)    # any phase of the SQLite poll
                if name.startswith("PostgreSQL"):
                    await conn.execute("UPDATE tickcast_keys SET state = 'revoked' WHERE prefix = $1", key[:12])
                else:
                    s = KeyStore(tmp / "keys.sqlite3")
                    s.revoke(key)
                    s.close()
                t0 = time.monotonic()
                done = [t - t0 for t in await asyncio.wait_for(asyncio.gather(*waits), 5)]
                done.sort()
                row = {"store": name, "connections": len(done), "p50_ms": round(done[len(done) // 2] * 1e3, 1),
                       "max_ms": round(done[-1] * 1e3, 1)}
                rows.append(row)
                print(f"  {name:<20} {len(done)} connections closed: p50 {row['p50_ms']} ms, "
                      f"last {row['max_ms']} ms after the commit", flush=True)
        await conn.close()
    finally:
        for node in started:
            node.stop()
        await admin.execute(f"DROP DATABASE {url.rsplit('/', 1)[1]} WITH (FORCE)")
        await admin.close()
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    harness.raise_nofile()
    os.sched_setaffinity(0, {harness.CLIENT_CORE})
    print("1. connection rate on one node", flush=True)
    rows = await rates(1 if args.quick else 3, 1000 if args.quick else 3000)
    print("2. revocation to close", flush=True)
    rows += await revocation(1 if args.quick else 3)
    flush()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
