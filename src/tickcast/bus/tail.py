"""Reading the stream as it grows, on a connection of its own.

Why not redis-py here: its XREAD costs a node about 65 µs of CPU per call
(command packing, a future, reply callbacks turning entries into dicts),
which at one message per call is most of what the bus costs. A Tail keeps
exactly one XREAD in flight on a plain asyncio Protocol: the command is
bytes built once, hiredis parses the reply, and the next read is sent
before the entries are handed on, so Redis fills it while the node works.
"""
from __future__ import annotations

import asyncio
import ssl
import time

import hiredis

BLOCK_MS = 1000                   # Redis answers an idle read after this long
SILENCE = BLOCK_MS / 1000 + 4     # no answer for this long: the connection is dead


def command(*args: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


class TailError(Exception):
    """The bus refused a read, or stopped answering."""


class Tail(asyncio.Protocol):
    """Entries of ``stream`` after ``last``, each message to
    ``on_message(message, positions or None)``; ``last`` is the id of the
    last entry handed on."""

    def __init__(self, stream: str, last: bytes, batch: int, on_message) -> None:
        # XREAD COUNT batch BLOCK ms STREAMS stream <last>: all but the last id, once.
        self.head = command(b"XREAD", b"COUNT", b"%d" % batch, b"BLOCK", b"%d" % BLOCK_MS,
                            b"STREAMS", stream.encode(), b"")[:-len(b"$0\r\n\r\n")]
        self.last = last
        self.on_message = on_message
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.owed = 0                 # replies to AUTH, SELECT and PING still to come
        self.heard = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lost: asyncio.Future | None = None
        self.on_ready = None
        self.lag = 0.0                # seconds, of the last batch read

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self._end(exc or TailError("the bus closed the connection"))

    def _end(self, exc: BaseException) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(exc)

    def _read(self) -> None:
        self.transport.write(self.head + b"$%d\r\n%s\r\n" % (len(self.last), self.last))

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.heard = self.loop.time()
            if isinstance(reply, hiredis.ReplyError):
                self._end(TailError(str(reply)))
                self.transport.abort()
                return
            if self.owed:
                self.owed -= 1
                if not self.owed:             # the PING: AUTH and SELECT went through
                    self.on_ready()
                continue
            if reply is None:                 # BLOCK ran out with nothing new
                self._read()
                continue
            entries = reply[0][1]
            self.last = entries[-1][0]
            # How old the newest entry was when read: ids are Redis's clock in ms.
            self.lag = time.time() - int(self.last.split(b"-", 1)[0]) / 1000
            self._read()
            on_message = self.on_message
            for _, fields in entries:
                # b"u": the message, and b"p": its records' positions; anything else is not ours.
                if fields[0] == b"u":
                    if len(fields) == 2:
                        on_message(fields[1], None)
                    elif len(fields) == 4 and fields[2] == b"p":
                        on_message(fields[1], fields[3])

    async def follow(self, where: dict, tls: bool, on_ready) -> None:
        """Connect (``where``: redis-py's connection keywords), call
        ``on_ready()`` once the bus answers, and read until the connection
        fails; raises what ended it."""
        self.loop = loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        if where.get("path"):
            connecting = loop.create_unix_connection(lambda: self, where["path"])
        else:
            context = None
            if tls:
                context = ssl.create_default_context(cafile=where.get("ssl_ca_certs"))
                if where.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            connecting = loop.create_connection(lambda: self, where.get("host", "localhost"),
                                                where.get("port", 6379), ssl=context)
        await asyncio.wait_for(connecting, 2)
        try:
            self.on_ready = on_ready
            prelude = [command(b"PING")]
            if where.get("password"):
                user = where.get("username")
                prelude.insert(0, command(b"AUTH", *([user.encode()] if user else []),
                                          str(where["password"]).encode()))
            if where.get("db"):
                prelude.insert(-1, command(b"SELECT", b"%d" % int(where["db"])))
            self.owed = len(prelude)
            self.heard = loop.time()
            self.transport.write(b"".join(prelude))
            self._read()
            # asyncio.wait, not wait_for: before Python 3.12, wait_for returns
            # the result of a future done at the moment it is cancelled, and the
            # cancellation (the server stopping as the bus goes) is lost.
            while not (await asyncio.wait((self.lost,), timeout=1))[0]:
                if loop.time() - self.heard > SILENCE:
                    raise TailError(f"no answer from the bus for {SILENCE:.0f} s")
            raise self.lost.result()
        finally:
            self.transport.abort()
