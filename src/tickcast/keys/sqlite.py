"""The embedded key store: SQLite, keeping only key hashes."""
from __future__ import annotations

import hmac
import os
import sqlite3
import time
from pathlib import Path

from tickcast.keys.tiers import TIERS, Principal, digest_of, hash_key, new_key


class KeyStore:
    """Keys by SHA-256 hash in SQLite. Lookups are answered from a cache of
    principals once a server polls changed() (every 0.5 s): a key revoked
    from the command line stops working for new connections, and its open
    connections are closed, at the next poll."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Only the owner may read it (hashes, but of every key). SQLite gives
        # its -wal and -shm files the same mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # One Principal per key, shared by its connections (a bot fleet on one
        # key would otherwise hold a copy of the hash per connection). Once a
        # server polls changed(), it is also the lookups' cache: a statement
        # costs SQLite's file locks (about 15% of a connection's CPU), and
        # the poll empties the cache when the file changes, as soon as it
        # closes a revoked key's connections.
        self._principals: dict[str, Principal] = {}
        self._version = None         # of the file, as SQLite counts other writers' commits
        self._local = 0              # commits through this connection (data_version ignores them)
        self.on_change = None        # the server polls changed() instead
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS keys ("
            " hash TEXT PRIMARY KEY, prefix TEXT NOT NULL, tier TEXT NOT NULL,"
            " created REAL NOT NULL, revoked REAL)"
        )

    def close(self) -> None:
        self._db.close()

    async def start(self) -> None:
        """Nothing to load: a lookup reads the file the first time it meets a key."""

    async def stop(self) -> None:
        """The command line closes the file, after the server."""

    def add(self, tier: str, kind: str = "live") -> str:
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
        key = new_key(kind)
        self._db.execute(
            "INSERT INTO keys (hash, prefix, tier, created) VALUES (?, ?, ?, ?)",
            (hash_key(key), key[:12], tier, time.time()),
        )
        return key

    def revoke(self, key: str) -> bool:
        cur = self._db.execute(
            "UPDATE keys SET revoked = ? WHERE hash = ? AND revoked IS NULL",
            (time.time(), hash_key(key)),
        )
        self._local += 1
        self._principals.pop(hash_key(key), None)
        return cur.rowcount > 0

    def changed(self) -> bool:
        """Has the store changed since the last call (a key added or revoked,
        by this process or by another: `tickcast keys revoke`)? One read of
        a counter in the file's header: cheap enough to ask twice a second."""
        version = (self._db.execute("PRAGMA data_version").fetchone()[0], self._local)
        changed = self._version is not None and version != self._version
        self._version = version
        if changed:
            self._principals.clear()
        return changed

    def revoked(self, hashes) -> set[str]:
        """Those of ``hashes`` that are revoked (or gone) now."""
        hashes = list(hashes)
        alive: set[str] = set()
        for i in range(0, len(hashes), 500):
            part = hashes[i:i + 500]
            rows = self._db.execute(
                f"SELECT hash FROM keys WHERE revoked IS NULL AND hash IN ({','.join('?' * len(part))})", part)
            alive.update(r[0] for r in rows)
        gone = set(hashes) - alive
        for digest in gone:
            self._principals.pop(digest, None)
        return gone

    def list(self) -> list[dict]:
        rows = self._db.execute(
            "SELECT prefix, hash, tier, created, revoked FROM keys ORDER BY created"
        ).fetchall()
        return [dict(prefix=p, hash=h, tier=t, created=c, revoked=r) for p, h, t, c, r in rows]

    def active(self) -> int:
        """How many keys work (not revoked)."""
        return self._db.execute("SELECT count(*) FROM keys WHERE revoked IS NULL").fetchone()[0]

    def is_empty(self) -> bool:
        return self._db.execute("SELECT 1 FROM keys LIMIT 1").fetchone() is None

    def lookup(self, key: object) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else."""
        digest = digest_of(key)
        if digest is None:
            return None
        if self._version is not None:
            known = self._principals.get(digest)
            if known is not None:
                return known
        row = self._db.execute(
            "SELECT hash, tier, prefix FROM keys WHERE hash = ? AND revoked IS NULL", (digest,)
        ).fetchone()
        # The index lookup matched on the hash; compare again in constant time
        # so that the final decision does not depend on where strings differ.
        if row is None or not hmac.compare_digest(row[0], digest) or row[1] not in TIERS:
            self._principals.pop(digest, None)
            return None
        known = self._principals.get(digest)
        if known is None or known.tier is not TIERS[row[1]]:
            known = self._principals[digest] = Principal(row[0], TIERS[row[1]], row[2])
        return known
