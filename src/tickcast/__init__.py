"""tickcast: a WebSocket push server for market data on a Cython fan-out core."""
from tickcast._version import __version__

# The compiled hot path (setup.py builds these from ext/tickcast/).
EXTENSIONS = ("_frames", "_bitsets", "_fanout", "_reader", "_socket", "_http", "_handshake")

try:
    from tickcast import _bitsets, _fanout, _frames, _handshake, _http, _reader, _socket  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a packaging test
    raise ImportError(
        f"tickcast's compiled extensions ({', '.join('tickcast.' + m for m in EXTENSIONS)}) are missing. "
        "Install a wheel (pip install tickcast), or build from a checkout with "
        "'pip install .' (needs a C compiler). There is no pure-Python fallback. "
        f"Cause: {exc}"
    ) from exc

from tickcast.publisher import Publisher  # noqa: E402  (redis-py is imported when one is opened)

__all__ = ["Publisher", "__version__"]
