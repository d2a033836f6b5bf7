"""The two public APIs a server speaks: marketai.py (the Market.ai push API
at /) and monday.py (the Monday-style public API v4 at /v4/public/ws).

A dialect owns no fan-out: it turns control messages into bitset changes on
the hub's index, and updates into payload bytes for Hub.publish.
"""
