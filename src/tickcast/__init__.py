"""tickcast: a WebSocket push server for market data on a Cython fan-out core.

``import tickcast`` loads nothing of the server: the SDK (``tickcast.client``)
imports without the compiled extensions, simdjson or uvloop. The server's
modules call ``require_extensions()`` first, and ``tickcast.Publisher`` is
imported when first named.
"""
from tickcast._version import __version__

# The compiled hot path (setup.py builds these from ext/tickcast/).
EXTENSIONS = ("_frames", "_bitsets", "_fanout", "_reader", "_socket", "_http", "_handshake")


def require_extensions() -> None:
    """Import the compiled modules, or fail saying how to get them."""
    import importlib
    try:
        for name in EXTENSIONS:
            importlib.import_module(f"tickcast.{name}")
    except ImportError as exc:
        raise ImportError(
            f"tickcast's compiled extensions ({', '.join('tickcast.' + m for m in EXTENSIONS)}) are missing. "
            "Install a wheel (pip install tickcast), or build from a checkout with "
            "'pip install .' (needs a C compiler). There is no pure-Python fallback. "
            f"Cause: {exc}"
        ) from exc


def __getattr__(name: str):
    if name == "Publisher":
        from tickcast.publisher import Publisher   # redis-py is imported when one is opened
        return Publisher
    raise AttributeError(f"module 'tickcast' has no attribute {name!r}")


__all__ = ["Publisher", "__version__", "require_extensions"]
