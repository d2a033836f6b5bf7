"""A WebSocket connection that comes back, for both clients.

The loop: connect (websockets), let the dialect open the connection (auth,
subscriptions sent again: the server remembers nothing), read until the
connection ends or goes silent, then wait as the Backoff says and start
again. An error that retrying cannot mend (a bad key) ends the client and is
raised to whoever waits on it.
"""
from __future__ import annotations

import asyncio
import logging

import websockets

from tickcast.client.backoff import Backoff, State
from tickcast.client.errors import ClientError, Closed

log = logging.getLogger("tickcast.client")

_END = object()


class Retry(Exception):
    """This connection failed in a way the next one may not (the reason)."""


class Session:
    def __init__(self, url: str, *, backoff: Backoff | None = None, on_state=None, keepalive: float = 25.0,
                 dead_after: float = 70.0, open_timeout: float = 10.0) -> None:
        self.url = url
        self.backoff = backoff or Backoff()
        self.on_state = on_state
        self.keepalive = keepalive               # seconds between the keep-alive pings we send
        self.dead_after = dead_after             # seconds of silence after which the connection is dead
        self.open_timeout = open_timeout
        self.state = State("connecting")
        self.ws = None
        self.connections = 0                     # connections made so far
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._first: asyncio.Future | None = None
        self._failed: BaseException | None = None
        self._closing = False
        self._heard = 0.0                        # when the server was last heard from

    # -- what a dialect provides -------------------------------------------------

    def connect_url(self) -> str:
        return self.url

    def refused(self, status: int, body: bytes) -> BaseException | None:
        """The upgrade was answered ``status``: the error that ends the
        client, or None to try again."""
        return None

    async def opened(self, ws) -> None:
        """A new connection: authenticate, subscribe again (raise Retry or a ClientError)."""

    def received(self, raw: bytes) -> None:
        """One message from the server."""

    def ping(self) -> bytes:
        """The keep-alive message."""
        raise NotImplementedError

    def lost(self) -> None:
        """The connection went: requests waiting on it are answered."""

    # -- the loop ------------------------------------------------------------------

    async def start(self) -> None:
        """Run, and return once the first connection is open (or raise why it cannot be)."""
        self._first = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.shield(self._first)

    async def close(self) -> None:
        """Close the connection (code 1000) and stop reconnecting."""
        self._closing = True
        if self.ws is not None:
            await self.ws.close()             # its read ends, and the loop with it
        if self._task is not None:
            self._task.cancel()               # or its wait between attempts
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._set_state(State("closed"))
        self._queue.put_nowait(_END)

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            if self._failed is not None:
                raise self._failed
            raise StopAsyncIteration
        return item

    def _deliver(self, item) -> None:
        self._queue.put_nowait(item)

    def _set_state(self, state: State) -> None:
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:                     # the program's callback must not stop the client
                log.exception("on_state callback failed")

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        self._set_state(State("closed", reason=str(exc)))
        if self._first is not None and not self._first.done():
            self._first.set_exception(exc)
        self._queue.put_nowait(_END)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            self._set_state(State("connecting"))
            connected_at = None
            at_least = 0.0                       # the server's Retry-After, if it refused
            try:
                ws = await websockets.connect(self.connect_url(), open_timeout=self.open_timeout,
                                              ping_interval=None, max_size=None, compression=None)
            except websockets.InvalidStatus as exc:
                fatal = self.refused(exc.response.status_code, exc.response.body or b"")
                if fatal is not None:
                    self._fail(fatal)
                    return
                reason = f"HTTP {exc.response.status_code}"
                at_least = retry_after(exc.response.headers.get("Retry-After"))
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                connected_at = loop.time()
                self.ws = ws
                try:
                    reason = await self._serve(ws)
                except ClientError as exc:
                    await ws.close()
                    self._fail(exc)
                    return
                finally:
                    self.ws = None
                    self.lost()
                if self._failed is not None or self._closing:   # nothing retrying can mend, or asked to stop
                    return
            if connected_at is not None and loop.time() - connected_at >= self.backoff.reset_after:
                attempt = 0
            delay = max(self.backoff.delay(attempt), at_least)
            attempt += 1
            self._set_state(State("backing_off", delay, reason))
            await asyncio.sleep(delay)

    async def _serve(self, ws) -> str:
        """One connection, from open to end; returns why it ended."""
        try:
            await self.opened(ws)
        except Retry as exc:
            await ws.close()
            return str(exc)
        except websockets.ConnectionClosed as exc:
            return f"closed while opening ({exc})"
        self.connections += 1
        self._set_state(State("connected"))
        if not self._first.done():
            self._first.set_result(None)
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        silent = []
        watch = loop.create_task(self._watch(ws, silent))
        try:
            while True:
                raw = await ws.recv(decode=False)
                self._heard = loop.time()
                self.received(raw)
        except websockets.ConnectionClosed as exc:
            if silent:
                return f"nothing heard for {self.dead_after:g} s"
            return f"closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        finally:
            watch.cancel()

    async def _watch(self, ws, silent: list) -> None:
        """Send the keep-alive every ``keepalive`` seconds; cut a connection
        silent for ``dead_after`` (the read then ends)."""
        loop = asyncio.get_running_loop()
        step = min(self.keepalive, self.dead_after / 4)
        ping_at = loop.time() + self.keepalive
        while True:
            await asyncio.sleep(step)
            now = loop.time()
            if now - self._heard > self.dead_after:
                silent.append(True)
                ws.transport.abort()
                return
            if now >= ping_at:
                ping_at = now + self.keepalive
                try:
                    await ws.send(self.ping(), text=True)
                except websockets.ConnectionClosed:
                    return

    async def _send(self, data: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        if self.ws is None:
            raise ConnectionError("not connected (reconnecting)")
        await self.ws.send(data, text=True)


def retry_after(value: str | None) -> float:
    """Seconds a refusal's Retry-After asks a client to wait (0 for none, or
    for a form this client does not read, such as an HTTP date); at most
    an hour, whatever a server says."""
    try:
        return min(max(float(value), 0.0), 3600.0) if value is not None else 0.0
    except ValueError:
        return 0.0


__all__ = ["Session", "Retry", "Closed"]
