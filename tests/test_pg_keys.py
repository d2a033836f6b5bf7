"""Keys in PostgreSQL (--keys postgresql://): nodes answer from memory and
hear every change. Each test has a database of its own on the session's
private PostgreSQL (dropped after); the outage test runs a PostgreSQL of
its own that it stops and starts."""
import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest
import websockets
from conftest import recv, send, until
from processes import TICKCAST, Node, PrivatePostgres

from tickcast.keys import postgres

pytestmark = pytest.mark.postgres
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
async def pg_url(private_postgres):
    name = f"tickcast_{os.urandom(5).hex()}"
    admin = await asyncpg.connect(private_postgres.url())
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield private_postgres.url(name)
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


def keys(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TICKCAST, "keys", *args, "--keys", url], capture_output=True, text=True, timeout=30)


def add(url: str, tier: str) -> str:
    out = keys(url, "add", "--tier", tier)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def sql(url: str, statement: str, *args) -> str:
    conn = await asyncpg.connect(url)
    try:
        return await conn.execute(statement, *args)
    finally:
        await conn.close()


@pytest.fixture
def nodes(serve_process):
    return lambda url, *extra: serve_process("--feed", "none", *extra, keys=url)

async def connect(node: Node, key: str):
    return await websockets.connect(f"ws://127.0.0.1:{node.port}/?key={key}")


async def refused(node: Node, key: str) -> int | None:
    """The HTTP status refusing ``key``, or None if it was accepted."""
    try:
        ws = await connect(node, key)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return None


@pytest.mark.skipif(not README.exists(), reason="needs the README beside the tests")
async def test_the_readme_schema_is_the_one_the_store_makes_and_reads(pg_url, nodes):
    block = re.search(r"<!-- schema -->\n```sql\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README's schema block is gone"
    assert block.group(1) == postgres.SCHEMA
    await sql(pg_url, block.group(1))            # made as an operator would, from the README
    key = add(pg_url, "basic")
    listed = keys(pg_url, "list").stdout
    assert key[:12] in listed and "basic" in listed and key not in listed
    node = nodes(pg_url)
    assert await refused(node, key) is None


async def test_two_nodes_hear_adds_and_revokes_within_a_second(pg_url, nodes):
    add(pg_url, "free")                          # makes the table
    a, b = nodes(pg_url), nodes(pg_url)
    key = add(pg_url, "pro")
    added = time.monotonic()
    for node in (a, b):
        while await refused(node, key) is not None:
            assert time.monotonic() - added < 1, "a new key was not usable within 1 s"
            await asyncio.sleep(0.02)

    open_ = [await connect(a, key), await connect(b, key), await connect(b, key)]
    out = keys(pg_url, "revoke", key)
    revoked = time.monotonic()
    assert out.returncode == 0 and out.stdout.strip() == "revoked"
    for ws in open_:
        msg = await recv(ws, timeout=1)
        assert msg == {"type": "error", "code": "UNAUTHORIZED", "message": "API key revoked."}
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 1)
        assert closed.value.rcvd.code == 1008 and closed.value.rcvd.reason == "API key revoked"
    assert time.monotonic() - revoked < 1
    assert await refused(a, key) == 401 and await refused(b, key) == 401

    # A row the operator's own systems change (deleted here) counts the same.
    other = add(pg_url, "basic")
    while await refused(a, other) is not None:
        await asyncio.sleep(0.02)
    ws = await connect(a, other)
    await sql(pg_url, "DELETE FROM tickcast_keys WHERE prefix = $1", other[:12])
    assert (await recv(ws, timeout=1))["code"] == "UNAUTHORIZED"
    await ws.close()


async def test_an_upgrade_is_answered_from_memory(pg_url, nodes):
    # Every backend of the node is idle while connections come and go: no
    # query per connection (the node's single connection only LISTENs).
    key = add(pg_url, "max")
    node = nodes(pg_url)
    admin = await asyncpg.connect(pg_url)
    try:
        before = await admin.fetchval("SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database "
                                      "WHERE datname = current_database()")
        for _ in range(30):
            ws = await connect(node, key)
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
            await ws.close()
        await asyncio.sleep(0.6)             # statistics are flushed every 500 ms at most
        after = await admin.fetchval("SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database "
                                     "WHERE datname = current_database()")
    finally:
        await admin.close()
    # The admin's own two statements and the node's health checks (one per 2 s): far below 30.
    assert after - before < 10


@pytest.mark.skipif(not PrivatePostgres.available(), reason="needs PostgreSQL's binaries and root")
async def test_postgres_down_keeps_keys_and_applies_a_revoke_made_meanwhile(nodes):
    pg = PrivatePostgres()
    try:
        url = pg.url()
        kept, doomed = add(url, "basic"), add(url, "basic")
        node = nodes(url)
        held = await connect(node, doomed)
        pg.stop()
        assert await until(lambda: "key store unreachable" in "".join(node.log), 6)
        # Known keys still work, from memory.
        assert await refused(node, kept) is None
        await send(held, {"action": "ping"})
        assert await recv(held) == {"type": "pong"}
        # Back, and a revoke before the node has read the table again (its
        # backoff is at 2 s by now): applied once it reconnects.
        pg.start()
        await sql(url, "UPDATE tickcast_keys SET state = 'revoked' WHERE prefix = $1", doomed[:12])
        assert (await recv(held, timeout=5))["message"] == "API key revoked."
        assert await until(lambda: "".join(node.log).count("key store ready") >= 2, 5)
        assert await refused(node, doomed) == 401
        assert await refused(node, kept) is None
    finally:
        pg.destroy()


def test_bad_key_store_urls_get_one_line(pg_url, tmp_path):
    async def wrong_table():
        await sql(pg_url, "CREATE TABLE tickcast_keys (id int)")
    asyncio.run(wrong_table())
    cases = [
        (pg_url, "is not tickcast's"),
        ("postgresql://root@127.0.0.1:1/test", "cannot reach the key store"),
        (pg_url.rsplit("/", 1)[0] + "/no_such_database", "cannot reach the key store"),
        ("postgresql://root@127.0.0.1:port/test", "bad --keys URL"),
    ]
    for url, reason in cases:
        for cmd in (["serve", "--port", "0", "--feed", "none"], ["keys", "list"]):
            out = subprocess.run([*TICKCAST, *cmd, "--keys", url], capture_output=True, text=True, timeout=30)
            lines = out.stderr.strip().splitlines()
            assert out.returncode != 0, (cmd, url)
            assert len(lines) == 1 and reason in lines[-1] and "Traceback" not in out.stderr, (cmd, url, out.stderr)


async def test_a_store_without_its_table_is_refused_by_serve(pg_url):
    out = subprocess.run([*TICKCAST, "serve", "--port", "0", "--keys", pg_url], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip().endswith("lacks the table tickcast_keys (create it with: tickcast keys list "
                                       "--keys URL, or the README's schema)")


async def test_a_password_in_the_url_is_never_logged(pg_url, nodes):
    add(pg_url, "free")
    url = pg_url.replace("root@", "root:hunter2@")          # trust auth: accepted, and ignored
    node = nodes(url)
    assert await refused(node, "mk_live_" + "x" * 32) == 401
    log = node.stop()
    assert "key store ready" in log and "root:***@" in log and "hunter2" not in log
