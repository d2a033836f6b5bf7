"""The recording format: gzip, one line per update, streamed.

A first line ``#tickcast-recording 1`` says what the file is; then each
line is the receive time (seconds since the epoch), a tab, and the update's
frame exactly as the server sent it. The stream is flushed (a gzip sync
point) every half second, so a file cut off by Ctrl-C or a kill reads back
up to its last whole line.
"""
from __future__ import annotations

import gzip
import zlib

MAGIC = b"#tickcast-recording 1\n"


class RecordingError(ValueError):
    """Not a recording (one line saying why)."""


class Writer:
    def __init__(self, path: str) -> None:
        self.file = gzip.open(path, "wb")
        self.file.write(MAGIC)
        self.count = 0

    def write(self, received: float, frame: bytes) -> None:
        self.file.write(b"%.6f\t%s\n" % (received, frame))
        self.count += 1

    def flush(self) -> None:
        self.file.flush(zlib.Z_SYNC_FLUSH)

    def close(self) -> None:
        self.file.close()


def read(path: str):
    """(receive time, frame) of every whole record; RecordingError if the
    file is missing or not a recording. A cut-off tail is not an error."""
    try:
        f = gzip.open(path, "rb")
        first = f.readline()
    except OSError as exc:                  # missing, unreadable, or not gzip
        raise RecordingError(f"replay file {path}: {exc.strerror or exc}") from None
    except EOFError:
        first = b""
    if first != MAGIC:
        f.close()
        raise RecordingError(f"replay file {path}: not a tickcast recording (made by tickcast record)")
    return _records(f)


def _records(f):
    with f:
        while True:
            try:
                line = f.readline()
            except (EOFError, OSError, zlib.error):
                return                      # cut off: everything whole was read
            if not line.endswith(b"\n"):
                return
            t, sep, frame = line[:-1].partition(b"\t")
            if not sep:
                return
            try:
                yield float(t), frame
            except ValueError:
                return
