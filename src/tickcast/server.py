"""The server: one picows listener, one fan-out hub, two dialects, the feeds.

Fan-out lives in ext/tickcast/_fanout.pyx (Hub.publish and Hub.flush); this
file wires it to sockets and owns the timers: one heartbeat timer for all
connections and one sweep for unauthenticated ones.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from picows import WSCloseCode, WSUpgradeRequest, ws_create_server

from tickcast._fanout import Hub
from tickcast.auth import KeyStore
from tickcast.config import Settings
from tickcast.connection import Connection
from tickcast.limits import ConnectionLimiter, LocalConnectionLimiter
from tickcast.marketai import MarketAi, http_error
from tickcast.monday import PATH as MONDAY_PATH
from tickcast.monday import Monday, MondayConnection

log = logging.getLogger("tickcast")


class Feed(Protocol):
    """A source of updates: it publishes through the server's dialects until cancelled."""

    async def run(self, server: Server) -> None: ...


class Server:
    def __init__(self, settings: Settings, keystore: KeyStore, feed: Feed | None = None,
                 limiter: ConnectionLimiter | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.keystore = keystore
        self.feed = feed
        self.limiter = limiter or LocalConnectionLimiter()
        self.connections: dict[int, Connection] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub: Hub | None = None
        self.marketai: MarketAi | None = None
        self.monday: Monday | None = None
        self.port: int | None = None
        self._ws_server: asyncio.Server | None = None
        self._pending_auth: dict[Connection, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._feed_task: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.hub = Hub(self.loop, s.max_queue, self._slow_consumer, s.coalesce_us / 1e6)
        self.marketai = MarketAi(self)
        self.monday = Monday(self)
        logging.getLogger("picows").setLevel(logging.WARNING)
        self._ws_server = await ws_create_server(
            self._route, s.host, s.port,
            max_frame_size=s.max_frame_size,
            read_buffer_init_size=s.read_buffer_size,
            enable_auto_ping=False,       # one heartbeat timer below, not a task each
            enable_auto_pong=False,       # pongs go through the hub, in order with the rest
            websocket_handshake_timeout=5,
            # A logger-like object that is not a logging.Logger: picows then
            # skips the child Logger it would create for every connection.
            logger_name=logging.LoggerAdapter(logging.getLogger("picows.server"), {}),
            # uvloop's transports: half the memory per connection of aiofastnet's
            # (which inline a 4 KiB iovec array), and the hub sends past them anyway.
            use_aiofastnet=False,
            backlog=s.backlog,            # asyncio's default of 100 drops SYNs in a connection storm
        )
        self.port = self._ws_server.sockets[0].getsockname()[1]
        self._timers["ping"] = self.loop.call_later(s.ping_interval, self._ping_round)
        self._timers["auth"] = self.loop.call_later(1.0, self._auth_sweep)
        if self.feed is not None:
            self._feed_task = self.loop.create_task(self.feed.run(self))
            self._feed_task.add_done_callback(self._feed_done)

    async def stop(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            await asyncio.gather(self._feed_task, return_exceptions=True)
        for t in self._timers.values():
            t.cancel()
        if self._ws_server is not None:
            self._ws_server.close()
        for conn in list(self.connections.values()):
            conn.close(WSCloseCode.GOING_AWAY, "server shutting down")
        if self._ws_server is not None:
            await self._ws_server.wait_closed()
        self.hub.close_timer()

    def _feed_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("feed stopped", exc_info=task.exception())

    # -- routing ---------------------------------------------------------------

    def _route(self, request: WSUpgradeRequest):
        path, _, query = request.path.decode("latin-1").partition("?")
        if path in ("", "/"):
            return self.marketai.accept(request, query)
        if path == MONDAY_PATH:
            return MondayConnection(self)
        return http_error(404, "NOT_FOUND", f"No endpoint at {path[:100]}.")

    # -- timers ------------------------------------------------------------------

    def expect_auth(self, conn: Connection) -> None:
        self._pending_auth[conn] = self.loop.time() + self.settings.auth_timeout

    def auth_done(self, conn: Connection) -> None:
        self._pending_auth.pop(conn, None)

    def _auth_sweep(self) -> None:
        self._timers["auth"] = self.loop.call_later(1.0, self._auth_sweep)
        now = self.loop.time()
        while self._pending_auth:
            conn, deadline = next(iter(self._pending_auth.items()))
            if deadline > now:
                break          # deadlines are in insertion order
            del self._pending_auth[conn]
            conn.auth_timed_out()

    def _ping_round(self) -> None:
        s = self.settings
        self._timers["ping"] = self.loop.call_later(s.ping_interval, self._ping_round)
        self.hub.trim()
        self.hub.ping_all()
        self._timers["pong"] = self.loop.call_later(s.ping_timeout, self._ping_check)

    def _ping_check(self) -> None:
        for slot in self.hub.unanswered():
            conn = self.connections.get(slot)
            if conn is not None:
                conn.close(WSCloseCode.POLICY_VIOLATION, "pong timeout", flush=False)

    def _slow_consumer(self, slot: int) -> None:
        conn = self.connections.get(slot)
        if conn is not None:
            conn.close(WSCloseCode.POLICY_VIOLATION, "slow consumer", flush=False)


async def serve(settings: Settings, keystore: KeyStore, feed: Feed | None,
                ready=None) -> None:
    """Run until cancelled (Ctrl-C or SIGTERM in the command line)."""
    server = Server(settings, keystore, feed)
    await server.start()
    if ready is not None:
        ready(server)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
