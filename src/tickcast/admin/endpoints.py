"""A small HTTP server on the node's loop: /metrics, /healthz, /readyz.

Three GET endpoints for a scraper and a load balancer's probe: a protocol
of a few lines serves them without a web framework or a thread. Requests
are bounded (8 KiB head, 10 s) and answered with Connection: close.
"""
from __future__ import annotations

import asyncio
import logging
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tickcast.admin.metrics import NodeView, ServerCollector
from tickcast.http import response

log = logging.getLogger("tickcast.admin")

MAX_HEAD = 8 * 1024
TIMEOUT = 10.0
TEXT = "text/plain; charset=utf-8"


class AdminServer:
    def __init__(self, server: NodeView) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(server))
        self._listener: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Request(self), host, port)
        self.port = self._listener.sockets[0].getsockname()[1]
        log.info("admin on http://%s:%d/ (metrics, healthz, readyz)", host, self.port)

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def answer(self, method: str, path: str) -> bytes:
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return response(405, b"GET only\n", TEXT)
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return response(200, generate_latest(self.registry), CONTENT_TYPE_LATEST, head_only=head_only)
        if path == "/healthz":
            return response(200, b"ok\n", TEXT, head_only=head_only)
        if path == "/readyz":
            why = self.server.not_ready()
            if why is None:
                return response(200, b"ready\n", TEXT, head_only=head_only)
            return response(503, f"not ready: {why}\n".encode(), TEXT, head_only=head_only)
        return response(404, b"metrics, healthz or readyz\n", TEXT, head_only=head_only)


class _Request(asyncio.Protocol):
    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin
        self.head = b""
        self.transport = None
        self.timer = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(TIMEOUT, transport.abort)

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return                               # answered: the rest is ignored
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > MAX_HEAD:
                self._send(response(431, b"request head too large\n", TEXT))
            return
        line = self.head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            self._send(response(400, b"bad request\n", TEXT))
            return
        try:
            self._send(self.admin.answer(line[0], line[1]))
        except Exception:                         # a scrape must never take the node down
            log.exception("admin request %s %s failed", line[0], line[1][:100])
            self._send(response(503, b"error\n", TEXT))

    def _send(self, data: bytes) -> None:
        self.head = None
        self.transport.write(data)
        self.transport.close()
