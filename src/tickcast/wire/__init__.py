"""What travels: the two public APIs' formats (marketai.py, monday.py),
shared by the server's dialects, the bus record and the publisher. Nothing
here needs the server (no compiled module, no connection)."""
from __future__ import annotations

import orjson


def show(value: object, width: int = 40) -> str:
    """A client's value, short, for an error message (a nested one by its kind only)."""
    if isinstance(value, str):
        text = repr(value[:width])
    elif value is None or isinstance(value, bool):
        text = orjson.dumps(value).decode()
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        text = "an object" if isinstance(value, dict) else "a list"
    return text if len(text) <= width else text[:width - 3] + "..."
