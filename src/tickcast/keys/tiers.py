"""Tiers, and what a key is: its form, its hash, whom it names."""
from __future__ import annotations

import hashlib
import re
import secrets
import string
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Tier:
    name: str
    max_connections: int
    max_symbols: int | None   # None: unlimited


TIERS: dict[str, Tier] = {
    t.name: t
    for t in (
        Tier("free", 1, 5),
        Tier("basic", 5, 25),
        Tier("pro", 15, 100),
        Tier("max", 50, None),
    )
}

KEY_RE = re.compile(r"^mk_(live|test)_[A-Za-z0-9]{32}$")
KEY_LENGTH = 40                   # every key's: what is longer is never held in a memo
_ALPHABET = string.ascii_letters + string.digits


def new_key(kind: str = "live") -> str:
    return f"mk_{kind}_" + "".join(secrets.choice(_ALPHABET) for _ in range(32))


def hash_key(key: str) -> str:
    """The key's SHA-256, which is all a store keeps of it."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def digest_of(key: object) -> str | None:
    """The hash of a well-formed key, None for anything else (a client's
    value of any type). Only strings of a key's length reach the memo."""
    return key_digest(key) if isinstance(key, str) and len(key) == KEY_LENGTH else None


@lru_cache(maxsize=1 << 14)
def key_digest(key: str) -> str | None:
    """A well-formed key's hash, None for a malformed one. Memoised: in a
    reconnect storm the same few keys come back thousands of times, and
    checking and hashing them was a tenth of a connection's user time.
    digest_of passes only strings of KEY_LENGTH, so the memo is bounded in bytes too."""
    return hash_key(key) if KEY_RE.match(key) else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid key belongs to: the hash identifies it for limits and logs."""
    key_hash: str
    tier: Tier
    prefix: str = ""          # the key's first 12 characters: all a log line may show of it
