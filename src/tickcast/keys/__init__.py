"""API keys: tiers, the stores that hold keys, and connection counting per key."""
from __future__ import annotations

from tickcast.keys.errors import KeyStoreError, LimitsError
from tickcast.keys.sqlite import KeyStore
from tickcast.keys.tiers import KEY_RE, TIERS, Principal, Tier, hash_key, new_key

__all__ = ["KEY_RE", "TIERS", "KeyStore", "KeyStoreError", "LimitsError", "Principal", "Tier",
           "hash_key", "new_key"]
