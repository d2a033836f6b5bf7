"""One service across nodes: connections per key counted in Redis (--limits).

Nodes are real processes on loopback ports sharing one key store, counting
in a Redis database of the test's own (flushed before and after); faults
run a redis-server of their own.
"""
import asyncio
import json
import shutil
import signal
import socket
import subprocess

import pytest
import redis
import websockets
from conftest import recv, send, until
from processes import TICKCAST, PrivateRedis

from tickcast.keys import KeyStore

pytestmark = pytest.mark.bus


@pytest.fixture
def keys(tmp_path):
    """A shared key store and one key per tier."""
    path = tmp_path / "keys.sqlite3"
    store = KeyStore(path)
    made = {tier: store.add(tier) for tier in ("free", "basic", "pro", "max")}
    store.close()
    return path, made


@pytest.fixture
def cluster(serve_process, keys):
    def start(limits: str, *extra: str, workers: int = 1, bus: str | None = None):
        several = ("--workers", str(workers), "--bus", bus or limits) if workers > 1 else ()
        return serve_process("--feed", "none", "--limits", limits, *several, *extra, keys=keys[0],
                             marker=" workers (pids " if workers > 1 else "serving ws://")
    return start

def leases(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return sum(r.zcard(k) for k in r.keys("tickcast:leases:*"))
    finally:
        r.close()


async def attempt(port: int, key: str):
    """A connection, or the refusal's HTTP status and JSON body."""
    try:
        return await websockets.connect(f"ws://127.0.0.1:{port}/?key={key}", open_timeout=20)
    except websockets.InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body)


async def test_exact_limits_across_two_nodes_of_two_workers(redis_url, cluster, keys):
    nodes = [cluster(redis_url, workers=2), cluster(redis_url, workers=2)]
    for tier, limit in (("free", 1), ("basic", 5), ("pro", 15)):
        results = await asyncio.gather(*(attempt(nodes[i % 2].port, keys[1][tier]) for i in range(200)))
        accepted = [r for r in results if not isinstance(r, tuple)]
        refused = [r for r in results if isinstance(r, tuple)]
        assert len(accepted) == limit, tier
        assert len(refused) == 200 - limit
        assert all(r == (429, {"ok": False, "error": {
            "code": "CONNECTION_LIMIT",
            "message": f"Connection limit ({limit}) reached for your tier."}}) for r in refused)
        assert leases(redis_url) == limit
        for ws in accepted:
            await ws.close()
        assert await until(lambda: leases(redis_url) == 0, 3)


async def test_the_auth_message_path_is_counted_in_the_cluster_too(redis_url, cluster, keys):
    a, b = cluster(redis_url), cluster(redis_url)
    free = keys[1]["free"]
    async with websockets.connect(f"ws://127.0.0.1:{a.port}/") as first:
        await send(first, {"action": "auth", "key": free})
        await send(first, {"action": "ping"})           # waits for the answer, then is answered
        assert await recv(first) == {"type": "authenticated", "tier": "free"}
        assert await recv(first) == {"type": "pong"}
        async with websockets.connect(f"ws://127.0.0.1:{b.port}/") as second:
            await send(second, {"action": "auth", "key": free})
            assert (await recv(second))["error"]["code"] == "CONNECTION_LIMIT"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await second.recv()
            assert closed.value.rcvd.code == 1008
        assert isinstance(await attempt(b.port, free), tuple)
    assert await until(lambda: leases(redis_url) == 0, 3)
    ws = await attempt(b.port, free)
    assert not isinstance(ws, tuple)
    await ws.close()


async def test_a_place_is_given_back_on_close_reset_and_failed_handshake(redis_url, cluster, keys):
    node = cluster(redis_url)
    free = keys[1]["free"]
    ws = await attempt(node.port, free)
    await ws.close()
    assert await until(lambda: leases(redis_url) == 0, 3)

    # A TCP reset: the client's socket closed with SO_LINGER 0.
    ws = await attempt(node.port, free)
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    ws.transport.abort()
    assert await until(lambda: leases(redis_url) == 0, 3)

    # A handshake that fails after the key's place was taken (no upgrade headers).
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    writer.write(f"GET /?key={free} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.split()[1] in (b"400", b"426")
    assert await until(lambda: leases(redis_url) == 0, 3)

    ws = await attempt(node.port, free)
    assert not isinstance(ws, tuple)
    await ws.close()


async def test_a_node_killed_frees_its_places_within_the_lease_ttl(redis_url, cluster, keys):
    doomed, other = cluster(redis_url, "--lease-ttl", "2"), cluster(redis_url, "--lease-ttl", "2")
    basic = keys[1]["basic"]
    held = [await attempt(doomed.port, basic) for _ in range(5)]
    assert not any(isinstance(ws, tuple) for ws in held)
    assert (await attempt(other.port, basic))[0] == 429
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(5)
    loop = asyncio.get_running_loop()
    killed = loop.time()
    while isinstance(ws := await attempt(other.port, basic), tuple):
        assert loop.time() - killed < 4, "the dead node's places did not lapse"
        await asyncio.sleep(0.1)
    assert loop.time() - killed > 1          # not before the ttl's last renewal could lapse
    await ws.close()


async def test_a_graceful_stop_frees_its_places_at_once(redis_url, cluster, keys):
    leaving, staying = cluster(redis_url), cluster(redis_url)
    free = keys[1]["free"]
    ws = await attempt(leaving.port, free)
    assert not isinstance(ws, tuple)
    assert (await attempt(staying.port, free))[0] == 429
    leaving.proc.send_signal(signal.SIGTERM)
    leaving.proc.wait(20)
    assert "could not give back" not in leaving.stop()
    assert leases(redis_url) == 0
    ws = await attempt(staying.port, free)
    assert not isinstance(ws, tuple)
    await ws.close()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server of its own")
async def test_limits_store_down_counts_per_node_then_writes_back(cluster, keys):
    # The README's policy: while Redis is away each node counts on its own
    # and says so; when it answers, every held place is written back.
    bus = PrivateRedis()
    url = f"redis://127.0.0.1:{bus.port}"
    try:
        node = cluster(url, "--lease-ttl", "3")
        basic = keys[1]["basic"]
        first = await attempt(node.port, basic)
        assert leases(url) == 1
        bus.kill()
        held = [await attempt(node.port, basic) for _ in range(5)]
        assert [isinstance(r, tuple) for r in held] == [False] * 4 + [True]   # five here, in all
        assert held[-1][0] == 429
        assert await until(lambda: "limits degraded" in "".join(node.log), 2)
        async with websockets.connect(f"ws://127.0.0.1:{node.port}/?key={keys[1]['max']}") as ws:
            await send(ws, {"action": "ping"})           # the node serves on
            assert await recv(ws) == {"type": "pong"}
        bus.start()
        assert await until(lambda: "limits ready" in "".join(node.log), 5)
        assert leases(url) == 5
        await first.close()
        assert await until(lambda: leases(url) == 4, 3)
        for ws in held[:4]:
            await ws.close()
    finally:
        bus.kill()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server of its own")
async def test_a_hung_limits_store_is_waited_for_once_and_set_right_after(cluster, keys):
    # Redis stopped (SIGSTOP: its sockets open, its data kept). The first
    # connection waits out the timeout (2 s); those behind it do not wait
    # again. A lease let go meanwhile is removed once Redis answers.
    bus = PrivateRedis()
    url = f"redis://127.0.0.1:{bus.port}"
    try:
        node = cluster(url, "--lease-ttl", "3")
        basic = keys[1]["basic"]
        first = await attempt(node.port, basic)
        assert leases(url) == 1
        bus.proc.send_signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            during = await asyncio.gather(*(attempt(node.port, basic) for _ in range(3)))
            assert not any(isinstance(r, tuple) for r in during)
            assert loop.time() - started < 4          # one timeout of 2 s, not three
            assert await until(lambda: "limits degraded" in "".join(node.log), 2)
            await first.close()                       # let go while Redis cannot hear it
            await asyncio.sleep(0.2)
        finally:
            bus.proc.send_signal(signal.SIGCONT)
        assert await until(lambda: "limits ready" in "".join(node.log), 5)
        assert leases(url) == 3
        for ws in during:
            await ws.close()
        assert await until(lambda: leases(url) == 0, 3)
    finally:
        bus.kill()


@pytest.mark.parametrize("limits, reason", [
    ("http://127.0.0.1:1", "bad --limits URL"),
    ("redis://127.0.0.1:notaport", "bad --limits URL"),
    ("redis://127.0.0.1:1", "cannot reach the limits store"),
])
def test_a_bad_limits_url_gets_one_line(tmp_path, keys, limits, reason):
    out = subprocess.run([*TICKCAST, "serve", "--port", "0", "--keys", str(keys[0]), "--feed", "none",
                          "--limits", limits], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0] and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("flag", ["--limits", "--bus"])
def test_a_malformed_redis_url_is_refused_before_the_key_store_is_asked(flag):
    # The key store named here does not answer: a malformed URL must be
    # said first, not after a wait for the store.
    out = subprocess.run([*TICKCAST, "serve", "--port", "0", "--keys", "postgresql://root@127.0.0.1:1/x",
                          flag, "redis://127.0.0.1:notaport"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == f"tickcast serve: bad {flag} URL 'redis://127.0.0.1:notaport': " \
                                 "expected redis://HOST:PORT[/DB]", out.stderr


def test_lease_ttl_is_checked(tmp_path, keys):
    out = subprocess.run([*TICKCAST, "serve", "--keys", str(keys[0]), "--limits", "redis://127.0.0.1:1",
                          "--lease-ttl", "0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.strip() == "tickcast serve: --lease-ttl must be between 1 and 3600 seconds"


