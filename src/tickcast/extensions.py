"""The compiled hot path (setup.py builds it from ext/tickcast/), and the one
check that it is there: the server's modules call ``require_extensions()``
first, so that a missing build fails saying how to get one."""
import importlib

EXTENSIONS = ("_frames", "_bitsets", "_fanout", "_reader", "_socket", "_http", "_handshake")


def require_extensions() -> None:
    """Import the compiled modules, or fail saying how to get them."""
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
