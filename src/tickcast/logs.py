"""Logging that a client cannot turn into a disk-filling attack.

Whatever a client can provoke (a refused connection, an error in a dialect)
is logged through a Throttle: at most a few lines a second in total, and the
lines it held back are counted per kind and summed up once a second.
"""
from __future__ import annotations

import json
import logging
import sys
import time

from tickcast.budget import TokenBucket

log = logging.getLogger("tickcast")


class Throttle:
    """At most ``per_second`` lines a second (a token bucket), one line each.

    What it holds back is counted per kind (the line's format string): once
    a second (``flush``, from the server's timer) each kind held back says
    so in one summary line, with the last line it held and how many more
    like it, so that no count lands on an unrelated line or is lost."""

    __slots__ = ("logger", "bucket", "held")

    def __init__(self, logger: logging.Logger = log, per_second: float = 5.0) -> None:
        self.logger = logger
        self.bucket = TokenBucket(per_second, per_second)
        self.held: dict[str, list] = {}       # format -> [count, the last args]

    def warning(self, msg: str, *args: object) -> bool:
        """Log ``msg % args`` if the budget allows; True if it was logged."""
        if not self.bucket.take():
            held = self.held.get(msg)
            if held is None:
                self.held[msg] = [1, args]
            else:
                held[0] += 1
                held[1] = args
            return False
        self.logger.warning(msg, *args)
        return True

    def flush(self) -> None:
        """A summary line for each kind held back since the last flush."""
        held, self.held = self.held, {}
        for msg, (count, args) in held.items():
            if count > 1:
                self.logger.warning(msg + " (and %d more like it held back)", *args, count - 1)
            else:
                self.logger.warning(msg, *args)


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the
    record's fields given with ``extra`` (a connection's id, address...)."""

    _PLAIN = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        out.update((k, v) for k, v in vars(record).items() if k not in self._PLAIN)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class Text(logging.Formatter):
    """The classic line, with the record's ``extra`` fields as key=value."""

    _PLAIN = JsonLines._PLAIN

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={v}" for k, v in vars(record).items() if k not in self._PLAIN]
        return f"{line} {' '.join(extra)}" if extra else line


def setup(form: str = "text", level: str = "info") -> None:
    """Log to stderr, as text or JSON lines, from ``level`` up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if form == "json" else Text())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.Formatter.converter = time.gmtime


def say(text: str, form: str = "text", level: str = "info") -> None:
    """One line on stderr that is not a log record but must be read like one
    (the command line's own: the port served, the key store, a refusal to
    start): as it is in text, one JSON object like JsonLines' in json, at
    whatever --log-level (a script waits for the serving line)."""
    if form == "json":
        text = json.dumps({"ts": round(time.time(), 6), "level": level, "logger": "tickcast", "msg": text})
    print(text, file=sys.stderr, flush=True)


def where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame of ``exc``'s traceback: enough to
    find a bug from one log line, without a traceback per client message."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
