"""Fixtures: a real tickcast server on a free port, keys, and client helpers.

Servers run in the test's event loop (uvloop) and are reached over loopback
sockets with real client libraries (websockets, picows).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
import uvloop

from tickcast.auth import KeyStore
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
        settings = Settings(port=0, keys=keystore.path, **overrides)
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


def upgrade_request(key: str) -> bytes:
    """A client's WebSocket upgrade request for /?key=..., as raw bytes."""
    k = base64.b64encode(os.urandom(16)).decode()
    return (f"GET /?key={key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {k}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


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
