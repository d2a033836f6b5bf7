"""What goes wrong with a store of keys or of connection counts, in one line."""


class KeyStoreError(Exception):
    """The key store cannot be used: a bad URL, not reachable at start, a table not ours."""


class LimitsError(Exception):
    """The store that counts connections cannot be used: a bad URL, not reachable at start."""
