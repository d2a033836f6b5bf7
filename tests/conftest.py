"""Fixtures: a real tickcast server on a free port, keys, and client helpers.

Servers run in the test's event loop (uvloop) and are reached over loopback
sockets with real client libraries (websockets, picows).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import struct

import pytest
import uvloop

from tickcast.keys import KeyStore
from tickcast.config import Settings
from tickcast.server import Server


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def keystore(tmp_path):
    store = KeyStore(tmp_path / "keys.sqlite3")
    yield store
    store.close()


@pytest.fixture
async def make_server(keystore):
    servers: list[Server] = []

    async def make(feed=None, **overrides) -> Server:
        settings = Settings(**{"port": 0, "keys": keystore.path, **overrides})
        server = Server(settings, keystore, feed)
        await server.start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.stop()


@pytest.fixture
async def server(make_server):
    return await make_server()


@pytest.fixture
def key(keystore):
    return keystore.add("max")


def upgrade_request(key: str | None = None, path: str = "/", extra: str = "", version: str = "13") -> bytes:
    """A client's WebSocket upgrade request for ``path`` (with ?key= if given), as raw bytes."""
    k = base64.b64encode(os.urandom(16)).decode()
    target = path + (f"?key={key}" if key is not None else "")
    return (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {k}\r\nSec-WebSocket-Version: {version}\r\n"
            f"{extra}\r\n").encode()


def masked(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """One client frame, masked as RFC 6455 requires."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


class Raw:
    """A blocking client socket, driven from a worker thread (see ``run``),
    for what no client library will send."""

    def __init__(self, port: int, source: str | None = None):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5,
                                          source_address=(source, 0) if source else None)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, data: bytes) -> bytes:
        """Send ``data`` (an HTTP request, maybe more) and return the response head."""
        self.s.sendall(data)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head

    def rest(self) -> bytes:
        """Everything the server sends until it hangs up."""
        while True:
            chunk = self.s.recv(65536)
            if not chunk:
                out, self.buf = self.buf, b""
                return out
            self.buf += chunk

    def handshake(self, key: str | None, then: bytes = b"", path: str = "/") -> None:
        head = self.request(upgrade_request(key, path) + then)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._need(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._need(8))[0]
        return b0 & 0x0F, self._need(n)

    def close_code(self) -> int | None:
        """Read frames up to the server's close frame; its code (None: no close frame)."""
        while True:
            try:
                op, payload = self.frame()
            except (ConnectionError, OSError):
                return None
            if op == 0x8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005

    def closes(self) -> bool:
        """True once the server ends the connection in order (EOF), False on a reset."""
        try:
            while self.s.recv(65536):
                pass
        except ConnectionResetError:
            return False
        return True


async def run(fn, *args):
    """A blocking call in a worker thread, so that the server in this loop runs meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def url(server: Server, key: str | None = None, path: str = "/") -> str:
    q = f"?key={key}" if key is not None else ""
    return f"ws://127.0.0.1:{server.port}{path}{q}"


async def recv(ws, timeout: float = 3.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def silent(ws, seconds: float = 0.3) -> bool:
    """True if nothing arrives within ``seconds``."""
    try:
        msg = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"expected silence, got {msg!r}")


async def until(condition, seconds: float = 1.0) -> bool:
    """Poll ``condition()`` until it holds (True) or ``seconds`` pass (False)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def send(ws, obj) -> None:
    await ws.send(obj if isinstance(obj, str) else json.dumps(obj))


def subscribe(*channels) -> dict:
    return {"action": "subscribe", "channels": list(channels)}


async def closed_with(ws, timeout: float = 5.0):
    """Read until the server closes; return (code, reason) of its close frame."""
    import websockets

    async def drain():
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)

    return await asyncio.wait_for(drain(), timeout)


@pytest.fixture(scope="session")
def private_redis():
    """A redis-server of the session's own on a free port (skipped, with
    what to install, where there is none)."""
    from processes import PrivateRedis
    server = PrivateRedis()
    yield server
    server.kill()


# Its databases 1-15 in turn, a test each (flushed before and after).
_REDIS_DBS = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url(private_redis):
    import redis
    db = next(_REDIS_DBS)
    r = redis.Redis(host="127.0.0.1", port=private_redis.port, db=db)
    r.flushdb()
    yield f"redis://127.0.0.1:{private_redis.port}/{db}"
    r.flushdb()
    r.close()


@pytest.fixture(scope="session")
def private_postgres():
    """A PostgreSQL cluster of the session's own (initdb in a temporary
    folder, a free port), skipped with what to install where there is none."""
    from processes import PrivatePostgres
    server = PrivatePostgres()
    yield server
    server.destroy()


@pytest.fixture
def serve_process(tmp_path):
    """`tickcast serve` as processes of the test's own (processes.Node), each
    stopped (SIGTERM) after the test."""
    from processes import Node
    started = []

    def start(*args: str, keys=None, marker: str = "serving ws://", nofile: int | None = None):
        node = Node(tmp_path, None, *args, keys=keys, marker=marker, nofile=nofile)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
