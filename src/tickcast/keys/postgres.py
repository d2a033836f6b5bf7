"""Keys in a PostgreSQL table that the operator's own systems may write too.

A node loads the whole table at start and answers every upgrade from
memory: no lookup touches the network. A trigger on the table NOTIFYs each
changed key hash; the node LISTENs, reads those rows again and closes the
live connections of a key that is revoked or gone, within a few
milliseconds. Cut off from PostgreSQL, the node keeps serving the keys it
knows, reconnects with backoff, and reads the whole table again: a key
revoked meanwhile is applied then.
"""
from __future__ import annotations

import asyncio
import hmac
import logging

import asyncpg

from tickcast.keys.errors import KeyStoreError
from tickcast.keys.tiers import TIERS, Principal, digest_of, hash_key, new_key

log = logging.getLogger("tickcast.keys")

CHANNEL = "tickcast_keys"
# The schema, as the README documents it (a test checks the two agree).
SCHEMA = """\
CREATE TABLE IF NOT EXISTS tickcast_keys (
    key_hash text PRIMARY KEY CHECK (key_hash ~ '^[0-9a-f]{64}$'),  -- SHA-256 of the key, hex
    prefix   text NOT NULL,                    -- its first 12 characters, to tell keys apart
    tier     text NOT NULL CHECK (tier IN ('free', 'basic', 'pro', 'max')),
    state    text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked')),
    created  timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION tickcast_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('tickcast_keys', '*');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        PERFORM pg_notify('tickcast_keys', OLD.key_hash);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        PERFORM pg_notify('tickcast_keys', NEW.key_hash);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER tickcast_keys_changed AFTER INSERT OR UPDATE OR DELETE ON tickcast_keys
    FOR EACH ROW EXECUTE FUNCTION tickcast_keys_changed();
CREATE OR REPLACE TRIGGER tickcast_keys_truncated AFTER TRUNCATE ON tickcast_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tickcast_keys_changed();
"""
COLUMNS = "key_hash, prefix, tier, state, created"
CONNECT_TIMEOUT = 5.0
HEALTH = 2.0                  # seconds between checks that the connection still answers
BACKOFF = (0.1, 2.0)
_LOCK = 0x7469636B            # advisory lock held while the schema is made


def is_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


async def _connect(url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, server_settings={
            "application_name": "tickcast"})
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise KeyStoreError(f"cannot reach the key store at {safe_url(url)}: {exc or type(exc).__name__}") from None
    except ValueError as exc:             # asyncpg's URL parser
        raise KeyStoreError(f"bad --keys URL {safe_url(url)}: {exc}") from None


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


async def _check(conn: asyncpg.Connection, url: str, create: bool) -> None:
    """The table is there with its columns and its trigger (made if ``create``)."""
    table = await conn.fetchval("SELECT to_regclass('tickcast_keys') IS NOT NULL")
    if table:
        try:
            await conn.fetch(f"SELECT {COLUMNS} FROM tickcast_keys LIMIT 0")
        except asyncpg.PostgresError as exc:
            raise KeyStoreError(f"the table tickcast_keys at {safe_url(url)} is not tickcast's "
                                f"(expected columns {COLUMNS}): {exc}") from None
    triggers = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('tickcast_keys') "
        "AND tgname IN ('tickcast_keys_changed', 'tickcast_keys_truncated')")
    if table and triggers == 2:
        return
    if not create:
        what = "its change trigger" if table else "the table tickcast_keys"
        raise KeyStoreError(f"the key store at {safe_url(url)} lacks {what} (create it with: tickcast keys "
                            f"list --keys URL, or the README's schema)")
    try:
        async with conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({_LOCK})")
            await conn.execute(SCHEMA)
    except asyncpg.PostgresError as exc:
        raise KeyStoreError(f"cannot make the key store's table at {safe_url(url)}: {exc}") from None


# -- the command line: tickcast keys add|list|revoke ---------------------------

async def add(url: str, tier: str, kind: str = "live") -> str:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; expected one of {', '.join(TIERS)}")
    conn = await _connect(url)
    try:
        await _check(conn, url, create=True)
        key = new_key(kind)
        await conn.execute("INSERT INTO tickcast_keys (key_hash, prefix, tier) VALUES ($1, $2, $3)",
                           hash_key(key), key[:12], tier)
        return key
    finally:
        await conn.close()


async def revoke(url: str, key: str) -> bool:
    conn = await _connect(url)
    try:
        await _check(conn, url, create=True)
        done = await conn.execute("UPDATE tickcast_keys SET state = 'revoked' "
                                  "WHERE key_hash = $1 AND state = 'active'", hash_key(key))
        return done != "UPDATE 0"
    finally:
        await conn.close()


async def listing(url: str) -> list[dict]:
    conn = await _connect(url)
    try:
        await _check(conn, url, create=True)
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM tickcast_keys ORDER BY created")
        return [dict(prefix=r["prefix"], hash=r["key_hash"], tier=r["tier"],
                     created=r["created"].timestamp(),
                     revoked=r["state"] == "revoked" or None) for r in rows]
    finally:
        await conn.close()


# -- a node ----------------------------------------------------------------------

class PostgresKeyStore:
    """The key table in memory, kept current by LISTEN/NOTIFY."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.keys: dict[str, Principal] = {}      # hash -> principal, active keys only
        self.on_change = None                    # called when keys were revoked or removed
        self.ready = False
        self._conn: asyncpg.Connection | None = None
        self._lost: asyncio.Event | None = None
        self._pending: set[str] = set()          # hashes notified, to read again
        self._reading: asyncio.Task | None = None
        self._watch: asyncio.Task | None = None
        self._changed = False

    async def start(self) -> None:
        """Load the table and listen, or raise KeyStoreError (a node does not
        start without its keys)."""
        self._lost = asyncio.Event()
        await self._open(create=False)
        self._watch = asyncio.get_running_loop().create_task(self._keep())

    async def _open(self, create: bool) -> None:
        conn = await _connect(self.url)
        try:
            await _check(conn, self.url, create)
            # Listen first, then read: a change in between is read twice at worst.
            await conn.add_listener(CHANNEL, self._notified)
            rows = await conn.fetch("SELECT key_hash, tier, prefix FROM tickcast_keys WHERE state = 'active'")
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(lambda _: self._lost.set())
        self._conn = conn
        self._lost.clear()
        self._replace({r["key_hash"]: (r["tier"], r["prefix"]) for r in rows})
        self.ready = True
        log.info("key store ready: %s, %d active keys", safe_url(self.url), len(self.keys))

    async def _keep(self) -> None:
        """Notice a lost or silent connection; reconnect with backoff and read all again."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), HEALTH)
            except asyncio.TimeoutError:
                try:
                    await asyncio.wait_for(self._conn.fetchval("SELECT 1"), HEALTH)
                    continue
                except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    pass
            self.ready = False
            self._conn.terminate()
            log.warning("key store unreachable: %s; serving the %d keys known, reconnecting",
                        safe_url(self.url), len(self.keys))
            wait = BACKOFF[0]
            while True:
                await asyncio.sleep(wait)
                try:
                    await self._open(create=False)
                    break
                except KeyStoreError:
                    wait = min(wait * 2, BACKOFF[1])

    def _notified(self, conn, pid, channel, payload: str) -> None:
        self._pending.add(payload)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.get_running_loop().create_task(self._read_pending())

    async def _read_pending(self) -> None:
        while self._pending:
            hashes, self._pending = self._pending, set()
            try:
                if "*" in hashes:
                    rows = await self._conn.fetch("SELECT key_hash, tier, prefix FROM tickcast_keys WHERE state = 'active'")
                    self._replace({r["key_hash"]: (r["tier"], r["prefix"]) for r in rows})
                    continue
                rows = await self._conn.fetch("SELECT key_hash, tier, prefix FROM tickcast_keys "
                                              "WHERE state = 'active' AND key_hash = ANY($1::text[])", list(hashes))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return            # the connection went: everything is read again on reconnecting
            active = {r["key_hash"]: (r["tier"], r["prefix"]) for r in rows}
            gone = False
            for digest in hashes:
                if digest in active:
                    self._set(digest, *active[digest])
                elif self.keys.pop(digest, None) is not None:
                    gone = True
            if gone:
                self._gone()

    def _set(self, digest: str, tier: str, prefix: str) -> None:
        known = self.keys.get(digest)
        if tier not in TIERS:
            log.warning("key %s… has an unknown tier %r; refused", prefix, tier)
            self.keys.pop(digest, None)
        elif known is None or known.tier is not TIERS[tier]:
            self.keys[digest] = Principal(digest, TIERS[tier], prefix)

    def _replace(self, active: dict[str, tuple[str, str]]) -> None:
        gone = [d for d in self.keys if d not in active]
        for digest in gone:
            del self.keys[digest]
        for digest, (tier, prefix) in active.items():
            self._set(digest, tier, prefix)
        if gone:
            self._gone()

    def _gone(self) -> None:
        self._changed = True
        if self.on_change is not None:
            self.on_change()

    # -- what the server asks ----------------------------------------------------

    def lookup(self, key: object) -> Principal | None:
        digest = digest_of(key)
        if digest is None:
            return None
        known = self.keys.get(digest)
        # Compared again in constant time, as the SQLite store does.
        if known is None or not hmac.compare_digest(known.key_hash, digest):
            return None
        return known

    def changed(self) -> bool:
        changed, self._changed = self._changed, False
        return changed

    def revoked(self, hashes) -> set[str]:
        return {d for d in hashes if d not in self.keys}

    def active(self) -> int:
        return len(self.keys)

    def is_empty(self) -> bool:
        return not self.keys

    def close(self) -> None:
        """The connection goes in stop(), with the server."""

    async def stop(self) -> None:
        for task in (self._watch, self._reading):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), 2)
            except (OSError, asyncio.TimeoutError, asyncpg.InterfaceError):
                self._conn.terminate()
