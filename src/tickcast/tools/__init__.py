"""Tools on the client side: record a feed to a file (replayed by feeds/replay.py)."""
