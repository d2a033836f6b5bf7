"""The server: one listener, one fan-out hub, two dialects, the feeds.

Fan-out lives in ext/tickcast/_fanout.pyx (Hub.publish and Hub.flush); this
file wires it to sockets and owns the timers: one heartbeat timer for all
connections and one sweep for unauthenticated ones. The bounds on
connections that no client may pass are in admission.py.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import ssl
from collections import Counter
from functools import partial


from tickcast.extensions import require_extensions

require_extensions()          # missing, they fail with how to get them, not a bare ImportError
from tickcast._fanout import Hub
from tickcast._socket import Acceptor, Poller
from tickcast.admission import Admission
from tickcast.config import Settings
from tickcast.connection import CloseCode, Connection, Connections
from tickcast.dialects.marketai import MarketAi
from tickcast.dialects.monday import Monday, MondayConnection
from tickcast.dialects.history import History
from tickcast.dialects.state import LatestState
from tickcast.feeds.sink import Feed
from tickcast._handshake import Handshake
from tickcast.http import Refusal
from tickcast.keys import KeyStore, LimitsError
from tickcast.keys.places import Places
from tickcast.listeners import listening_sockets, tls_context
from tickcast.logs import Throttle, where
from tickcast.wire.monday import PATH as MONDAY_PATH

log = logging.getLogger("tickcast")
BUS_WAIT = 5.0            # seconds a starting node waits for the bus before serving without it
DRAIN_STEP = 0.02         # seconds: the drain's granularity
KEY_WATCH = 0.5           # seconds between looks at the key store for revocations


class Server:
    def __init__(self, settings: Settings, keystore: KeyStore, feed: Feed | None = None) -> None:
        settings.validate()
        self.settings = settings
        self.keystore = keystore
        self.feed = feed
        self.places = Places()                  # a key's connections, counted (in the cluster: start())
        self.connections = Connections()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub: Hub | None = None
        self.marketai: MarketAi | None = None
        self.monday: Monday | None = None
        self.port: int | None = None
        self._ws_server: asyncio.Server | None = None     # the loop's listener (TLS, or no epoll)
        self._acceptors: list[Acceptor] = []              # else ours, one per address
        self.admission: Admission | None = None
        self.stats: Counter[str] = Counter()    # refusals and errors, by kind
        self.throttle = Throttle(log)          # for what clients can provoke
        self.heap_dirty = False                 # a connection that queued megabytes has gone
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._feed_task: asyncio.Task | None = None
        self.bus = None                         # with settings.bus: where updates come from
        self.intake = None
        self.bus_ready = False
        self._bus_task: asyncio.Task | None = None
        self.leases = None                      # with settings.limits: connections counted in the cluster
        # Control-plane counts, read by the metrics (the hub counts the data plane).
        self.accepted: Counter = Counter()      # dialect -> connections upgraded
        self.refusals: Counter = Counter()      # (HTTP status, reason) -> connections refused
        self.errors_sent: Counter = Counter()   # (dialect, code) -> errors sent
        self.admin = None
        self.cids = 0                           # connections numbered, for the logs
        self.tls: ssl.SSLContext | None = None
        self.draining = False
        self.history: History | None = None     # set by start(): --history-bytes
        self.restarts = 0                       # serve --workers: times this worker's place was restarted
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        s = self.settings
        self.loop = asyncio.get_running_loop()
        self.hub = Hub(self.loop, s.max_queue, self._slow_consumer, s.coalesce_us / 1e6)
        # Plain connections run on transports of our own (_socket.pyx); TLS on the loop's.
        self.poller = Poller(self.loop) if not s.certfile else None
        # Both dialects' latest state, kept for snapshots, within one budget.
        self.latest = LatestState(s.state_bytes)
        # Each Market.ai topic's sequence and recent updates (README, "Sequence numbers and resume").
        self.history = History(s.history_bytes) if s.history_bytes else None
        self.marketai = MarketAi(self)
        self.monday = Monday(self)
        self.admission = Admission(s, self.connections, self.throttle)
        await self.keystore.start()
        self.keystore.on_change = self._revoke_sweep        # a store that hears changes says so
        if s.limits:
            try:
                from tickcast.keys.leases import RedisLeases
            except ImportError as exc:
                raise LimitsError(f"--limits needs redis-py: pip install 'tickcast[cluster]' ({exc})") from None
            self.leases = RedisLeases(s.limits, s.lease_ttl)
            await self.leases.start()
            self.places = Places(self.leases)
        if s.bus:
            await self._start_bus()
        # Plain connections are accepted onto transports of our own
        # (_socket.pyx), each with a Handshake for its upgrade; under TLS, or
        # without epoll, onto the loop's.
        self.tls = tls_context(s.certfile, s.keyfile) if s.certfile else None
        if self.poller is not None and self.poller.ready:
            for sock in listening_sockets(s.host, s.port, s.backlog, s.reuse_port, s.sndbuf):
                self._acceptors.append(Acceptor(self.poller, sock, partial(Handshake, self)))
                self.port = sock.getsockname()[1]
        else:
            self._ws_server = await self.loop.create_server(
                lambda: Handshake(self), s.host, s.port,
                backlog=s.backlog,            # asyncio's default of 100 drops SYNs in a connection storm
                reuse_port=s.reuse_port or None,
                ssl=self.tls,
            )
            self.port = self._ws_server.sockets[0].getsockname()[1]
        self._timers["ping"] = self.loop.call_later(s.ping_interval, self._ping_round)
        self._timers["second"] = self.loop.call_later(1.0, self._every_second)
        self.keystore.changed()                 # from now on
        self._timers["keys"] = self.loop.call_later(KEY_WATCH, self._key_watch)
        if s.admin_port is not None:
            from tickcast.admin import AdminServer
            self.admin = AdminServer(self)
            await self.admin.start(s.admin_host, s.admin_port)
        if self.feed is not None:
            self._feed_task = self.loop.create_task(self.feed.run(self))
            self._feed_task.add_done_callback(self._feed_done)

    async def drain(self, seconds: float) -> None:
        """Stop accepting, then close every connection with 1001, spread
        evenly over ``seconds`` (thousands of clients do not all reconnect
        to the next node in the same millisecond), each after what is queued
        for it; wait for their closing handshakes (up to --close-timeout)."""
        self.draining = True                     # /readyz says so from now on
        self._stop_listening()
        conns = list(self.connections.values())
        log.info("draining: no new connections; closing %d over %g s", len(conns), seconds)
        start = self.loop.time()
        for i, conn in enumerate(conns):
            delay = start + seconds * i / len(conns) - self.loop.time()
            if delay > DRAIN_STEP:
                await asyncio.sleep(delay)
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        for conn in list(self.connections.values()):      # handshakes that finished meanwhile
            conn.close(CloseCode.GOING_AWAY, "server shutting down")
        deadline = self.loop.time() + self.settings.close_timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(DRAIN_STEP)

    async def stop(self, at_once: bool = False) -> None:
        """Close everything; ``at_once``: cut the connections (a second signal)."""
        for task in (self._feed_task, self._bus_task):
            # Cancelled again if a library swallowed the first (asyncio.wait_for
            # before 3.12 does, when what it waits for ends at that moment).
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait((task,), timeout=1)
        if self.bus is not None:
            await self.bus.close()
        for t in self._timers.values():
            t.cancel()
        self._stop_listening()
        if self.admin is not None:
            await self.admin.stop()
        if self.leases is not None:
            await self.leases.close()          # every place in the cluster's count, at once
        await self.keystore.stop()
        for conn in list(self.connections.values()):
            if at_once and conn.transport is not None:
                conn.transport.abort()
            else:
                conn.close(CloseCode.GOING_AWAY, "server shutting down")
        if self._ws_server is not None and not at_once:
            await self._ws_server.wait_closed()
        self.hub.close_timer()
        if self.poller is not None:
            self.poller.close()

    @property
    def pauses_accepting(self) -> bool:
        """Whether accepting(False) holds new connections back (our
        listeners); the loop's, under TLS, cannot be paused."""
        return bool(self._acceptors)

    def accepting(self, on: bool) -> None:
        """Pause or resume accepting on our listeners (not the loop's, under
        TLS): while paused, connections wait in the kernel's listen backlog."""
        for acceptor in self._acceptors:
            if on:
                acceptor.resume()
            else:
                acceptor.pause()

    def _stop_listening(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors = []

    def reload_tls(self) -> None:
        """Load the certificate again (renewed on disk): new handshakes use
        it, open connections keep theirs. A bad file keeps the old one."""
        s = self.settings
        try:
            self.tls.load_cert_chain(s.certfile, s.keyfile)
        except (OSError, ssl.SSLError) as exc:
            log.error("TLS certificate not reloaded, keeping the old one: %s", exc)
            return
        log.info("TLS certificate reloaded from %s", s.certfile)

    def not_ready(self) -> str | None:
        """Why the node should get no new clients now (None: it should)."""
        if self.draining:
            return "draining"
        if not self._acceptors and (self._ws_server is None or not self._ws_server.is_serving()):
            return "not listening"
        if self.bus is not None and not self.bus_ready:
            return "the bus is unreachable"
        if self._feed_task is not None and self._feed_task.done():
            return "the feed stopped"
        return None

    def refused(self, status: int, reason: str, peer: str | None = None) -> None:
        """Count a refusal; with ``peer``, also log it (throttled: an attacker
        who is refused a million times writes a few lines a second)."""
        self.refusals[(status, reason)] += 1
        if peer is not None:
            self.throttle.warning("refused a connection from %s: %d %s", peer, status, reason)

    def spawn(self, coro) -> None:
        """Run ``coro`` (a step of one connection) as a task; an exception of
        ours is logged (throttled), never lost or left to the loop."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.stats["internal_errors"] += 1
            self.throttle.warning("error in a connection's task: %s: %s (%s)", type(exc).__name__,
                                   str(exc)[:200], where(exc))

    def _feed_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("feed stopped", exc_info=task.exception())

    async def _start_bus(self) -> None:
        """Read the bus's latest state before serving, so that the first
        subscribers get snapshots; a bus not there yet (BUS_WAIT) is waited
        for in the background, the node serving meanwhile."""
        from tickcast.bus import open_bus
        from tickcast.bus.intake import Intake
        self.bus = open_bus(self.settings.bus)
        hub = self.hub
        conns = self.connections
        # Full for now: the hub has framed, since its last flush, as much as one connection may
        # queue before it is behind, or most connections' transports are over their high-water
        # mark (the node cannot deliver more; one slow reader among many is its own matter).
        self.intake = Intake(self.marketai.deliver, self.monday.deliver, self.throttle, self.marketai.remember,
                             full=lambda: hub.log_len > hub.conflate_at or hub.paused * 2 > conns.count,
                             loop=self.loop)
        self._bus_first = asyncio.Event()
        self._bus_task = self.loop.create_task(
            self.bus.consume(self.intake.latest, self.intake.message, self._bus_state,
                             self.intake.past if self.history is not None else None))
        self._bus_task.add_done_callback(self._feed_done)
        try:
            await asyncio.wait_for(self._bus_first.wait(), BUS_WAIT)
        except asyncio.TimeoutError:
            pass

    def _bus_state(self, ready: bool, why: str) -> None:
        """The bus came (back) or went: clients stay connected either way."""
        self.bus_ready = ready
        if ready:
            self._bus_first.set()
        (log.info if ready else log.warning)("bus %s: %s", "ready" if ready else "unreachable", why)

    # -- admission and routing ---------------------------------------------------

    def internal_error(self, peer: str, exc: Exception) -> None:
        """A bug of ours met handling what ``peer`` sent: counted, logged (throttled)."""
        self.stats["internal_errors"] += 1
        self.throttle.warning("error handling a message from %s: %s: %s (%s)", peer,
                               type(exc).__name__, str(exc)[:200], where(exc))

    def principal(self, target: bytes):
        """Whose key a request for ``target`` (path and query) names, if a
        valid one and for the Market.ai endpoint: the handshake asks the
        cluster for its place before the upgrade is routed."""
        path, _, query = target.decode("latin-1").partition("?")
        return self.marketai.principal(query) if path not in (MONDAY_PATH, self.settings.echo_path) else None

    def route(self, target: bytes, peer: str, placed: tuple | None = None) -> Connection | Refusal:
        """A connection for an upgrade to ``target`` (path and query), or a
        refusal. ``placed``: (principal, place) when the handshake took the
        key's place in the cluster already (--limits): its key is not looked up again."""
        path, _, query = target.decode("latin-1").partition("?")
        if path == MONDAY_PATH:
            return MondayConnection(self, peer)
        if path == self.settings.echo_path:
            from tickcast.dialects.echo import EchoConnection
            return EchoConnection(self, peer)
        # Any other path: a reverse proxy may mount the service under a prefix.
        result = self.marketai.accept(query, peer, placed)
        if type(result) is Refusal:
            self.refused(result.status, result.code, peer)
        return result

    # -- timers ------------------------------------------------------------------

    def _every_second(self) -> None:
        """The throttled log's summary, the heap given back after a heavy
        connection went, and the connections whose time to authenticate or
        to finish their handshake is over."""
        self._timers["second"] = self.loop.call_later(1.0, self._every_second)
        self.throttle.flush()                   # what it held back this second, a line per kind
        if self.heap_dirty:
            self.heap_dirty = False
            trim_heap()
        now = self.loop.time()
        for conn in self.admission.overdue(now):
            conn.auth_timed_out()
        for handshake in self.admission.handshakes_overdue(now):
            handshake.transport.abort()

    def _key_watch(self) -> None:
        """A key revoked while its connections are open: they are closed
        (the UNAUTHORIZED error, then 1008) within KEY_WATCH seconds."""
        self._timers["keys"] = self.loop.call_later(KEY_WATCH, self._key_watch)
        if self.keystore.changed():
            self._revoke_sweep()

    def _revoke_sweep(self) -> None:
        live: dict[str, list] = {}
        for conn in self.connections.values():
            principal = getattr(conn, "principal", None)
            if principal is not None and not conn.closing:
                live.setdefault(principal.key_hash, []).append(conn)
        for digest in self.keystore.revoked(live):
            for conn in live[digest]:
                conn.revoked()

    def _ping_round(self) -> None:
        s = self.settings
        self._timers["ping"] = self.loop.call_later(s.ping_interval, self._ping_round)
        # The previous round's check first, if not yet run (--ping-timeout
        # equal to --ping-interval puts both on one instant): this round's
        # pings forget who answered the last.
        check = self._timers.pop("pong", None)
        if check is not None:
            check.cancel()
            self._ping_check()
        if self.hub.trim() > 1 << 20:
            trim_heap()
        self.hub.ping_all()
        self._timers["pong"] = self.loop.call_later(s.ping_timeout, self._ping_check)

    def _ping_check(self) -> None:
        self._timers.pop("pong", None)
        for slot in self.hub.unanswered():
            conn = self.connections.get(slot)
            if conn is not None:
                self.stats["pong_timeouts"] += 1
                conn.close(CloseCode.POLICY_VIOLATION, "pong timeout", flush=False)

    def _slow_consumer(self, slot: int) -> None:
        conn = self.connections.get(slot)
        if conn is not None:
            self.stats["slow_consumer_closes"] += 1
            self.throttle.warning("closed connection %d from %s as a slow consumer (over --max-queue %d bytes)",
                                  conn.cid, conn.peer, self.settings.max_queue)
            conn.close(CloseCode.POLICY_VIOLATION, "slow consumer", flush=False)
            if conn.closing is not None:
                conn.closing.heavy = True


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None          # not glibc: its allocator gives memory back by itself


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Give the C heap's free pages back to the system. A slow consumer's
    queue (up to --max-queue, in many small blocks) is freed when it goes,
    but glibc keeps the pages, so without this the process's RSS stays at
    its peak; about a millisecond, and called only after such a loss."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


async def serve(settings: Settings, keystore: KeyStore, feed: Feed | None,
                ready=None, stopping: asyncio.Event | None = None) -> None:
    """Run until ``stopping`` is set (a first SIGTERM or Ctrl-C: drain, then
    stop) or until cancelled (a second: stop at once)."""
    server = Server(settings, keystore, feed)
    await server.start()
    if ready is not None:
        ready(server)
    try:
        await (stopping or asyncio.Event()).wait()
        await server.drain(settings.drain_seconds)
    except asyncio.CancelledError:
        await server.stop(at_once=True)
        raise
    await server.stop()
