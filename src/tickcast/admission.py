"""The bounds on connections that no client may pass.

- Connections held, in all (``capacity``: --max-connections, else the
  descriptor limit less a reserve, so that the kernel never drops one
  without an answer): checked at accept, HTTP 503.
- Connections in their handshake, in all: checked at accept, HTTP 503;
  kept with their deadlines (--handshake-timeout) for the server's sweep.
- Connections without ?key= awaiting their auth message, per client address
  (HTTP 429) and in all (HTTP 503): checked when the request is routed, and
  kept with their deadlines for the server's sweep.

The two "in all" bounds are --max-pending-auth each (a quarter of the
capacity by default), so that keyless connections can never keep out a
client with a key. A refusal is counted once, by the server, with its HTTP
status and code (``tickcast_connections_refused``).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from tickcast.http import Refusal
from tickcast.logs import Throttle

if TYPE_CHECKING:
    from tickcast._handshake import Handshake
    from tickcast.config import Settings
    from tickcast.connection import Connection, Connections

# Retry-After: a full server frees places as clients leave (seconds to
# minutes); handshakes and pending auths end within their timeouts.
_FULL = Refusal(503, "SERVER_FULL", "The server is at its connection capacity; try again later.",
                retry_after=10)
_BUSY = Refusal(503, "SERVER_BUSY", "Too many connections are in their handshake; try again later.",
                retry_after=2)
# Descriptors kept for what is not a connection (the key store, logs, a
# connection being refused) when the capacity comes from the limit.
FD_RESERVE = 64


class Admission:
    def __init__(self, settings: Settings, connections: Connections, throttle: Throttle) -> None:
        self.settings = settings
        self.connections = connections          # the server's upgraded connections, by slot
        self.throttle = throttle
        fds = descriptor_capacity()
        self.capacity = settings.max_connections or fds
        if self.capacity > fds:
            throttle.logger.warning("--max-connections %d is more than the descriptor limit allows (%d): "
                                    "past that, the kernel drops new connections without an answer",
                                    self.capacity, fds)
        self.max_pending = settings.max_pending_auth or max(1, self.capacity // 4)
        self.handshakes: dict[Handshake, float] = {}   # accepted, upgrade not done: deadline, in order
        self.refusing = 0                       # refused at accept, being answered
        self.pending: dict[Connection, float] = {}   # awaiting auth: deadline, in order
        self._by_peer: dict[str, int] = {}

    @property
    def handshaking(self) -> int:
        return len(self.handshakes)

    def admit(self, handshake: Handshake, peer: str, now: float) -> Refusal | None:
        """None if a connection from ``peer`` may go on to its handshake
        (then its deadline is set), else the HTTP refusal to send it."""
        handshaking = len(self.handshakes)
        held = self.connections.count + handshaking + self.refusing      # (count: len() is a call more)
        if held >= self.capacity:
            self.throttle.warning("refused a connection from %s: %d connections held, the capacity "
                                  "is %d (--max-connections, or the descriptor limit)", peer, held, self.capacity)
            return _FULL
        if handshaking >= self.max_pending:
            self.throttle.warning("refused a connection from %s: %d connections in their handshake "
                                  "(--max-pending-auth)", peer, handshaking)
            return _BUSY
        self.handshakes[handshake] = now + self.settings.handshake_timeout
        return None

    def keyless(self, peer: str) -> Refusal | None:
        """For a request without ?key=: None if ``peer`` may have one more
        connection awaiting its auth message, else the refusal."""
        # Counted and logged by the server's route, with the refusal's code, like every refusal of a request.
        limit = self.settings.max_pending_auth_per_ip
        if self._by_peer.get(peer, 0) >= limit:
            return Refusal(429, "TOO_MANY_PENDING",
                           f"At most {limit} connections from one address may await authentication.",
                           retry_after=2)
        if len(self.pending) >= self.max_pending:
            return Refusal(503, "SERVER_BUSY", "Too many connections await authentication; try again "
                                               "later, or connect with ?key=.", retry_after=2)
        return None

    def expect_auth(self, conn: Connection, now: float) -> None:
        self.pending[conn] = now + self.settings.auth_timeout
        self._by_peer[conn.peer] = self._by_peer.get(conn.peer, 0) + 1

    def auth_done(self, conn: Connection) -> None:
        if self.pending.pop(conn, None) is not None:
            n = self._by_peer.pop(conn.peer) - 1
            if n:
                self._by_peer[conn.peer] = n

    def overdue(self, now: float) -> list[Connection]:
        """The connections whose time to authenticate is over, no longer pending."""
        late = _due(self.pending, now)
        for conn in late:
            self.auth_done(conn)
        return late

    def handshakes_overdue(self, now: float) -> list[Handshake]:
        """The handshakes whose time is over (still counted until they go)."""
        return _due(self.handshakes, now)


def _due(deadlines: dict, now: float) -> list:
    """The keys of ``deadlines`` due by ``now``: deadlines are in insertion order."""
    due = []
    for item, deadline in deadlines.items():
        if deadline > now:
            break
        due.append(item)
    return due


def descriptor_capacity() -> int:
    """Connections this process can hold: its descriptor limit, less the
    descriptors open now and a reserve."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except ImportError:
        return 1 << 20
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    for fds in ("/proc/self/fd", "/dev/fd"):
        try:
            in_use = len(os.listdir(fds))
            break
        except OSError:
            continue
    else:
        in_use = FD_RESERVE
    return max(1, soft - in_use - FD_RESERVE)
