"""N server processes on one port: `tickcast serve --workers N`.

Each worker is a whole node (its own event loop, hub and connections) and
they share the listening port with SO_REUSEPORT, so the kernel spreads new
connections over them. All are fed by the bus: a worker simulates nothing.
The supervisor reserves the port, starts the workers, forwards SIGINT,
SIGTERM (a second one too: they stop at once) and SIGHUP to them, and ends
when they have. A worker that dies on its own costs only its own
connections: the others serve on, and the supervisor starts another in its
place (after a delay that grows while it keeps dying), says so in its log,
and the new worker's /metrics counts its place's restarts
(tickcast_worker_restarts).
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

from tickcast import logs

READY_WAIT = 30.0         # seconds the workers have to start serving
RESTART_FIRST = 0.25      # seconds before a crashed worker's replacement starts (then doubling)
RESTART_MAX = 30.0        # the longest wait; a worker that served this long starts afresh


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A socket bound to (host, port) with SO_REUSEPORT and not listening:
    it fixes the port (0: a free one) for the workers to bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


def supervise(command: list[str], workers: int, host: str, port: int, version: str, scheme: str = "ws",
              admin_port: int | None = None, log_format: str = "text") -> int:
    """Run ``command + ["--port", PORT]`` ``workers`` times; returns the exit code.
    Worker i serves its metrics on ``admin_port`` + i (0: each on a free port);
    the supervisor's own lines are in ``log_format``, as the workers' are."""
    def say(text: str, level: str = "info") -> None:
        logs.say(text, log_format, level)

    try:
        reserved, port = reserve_port(host, port)
    except OSError as exc:
        say(f"tickcast serve: cannot bind {host}:{port}: {exc}", "error")
        return 1
    slots = [Worker(i, [*command, "--port", str(port)], admin_port, say) for i in range(workers)]
    stopping = failed = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        for w in slots:
            w.due = None                          # no new process from now on
        forward(signal.SIGTERM)

    def forward(sig, *_):
        for w in slots:
            w.signal(sig)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, forward)       # each worker reloads its certificate, or ignores it
    for w in slots:
        w.start()
    deadline = time.monotonic() + READY_WAIT
    while not all(w.serving.is_set() for w in slots) and time.monotonic() < deadline and \
            all(w.running() for w in slots):
        time.sleep(0.02)
    if not all(w.serving.is_set() for w in slots):
        # A worker that cannot start at all (a bad flag, a port it cannot
        # bind) would fail the same way again: that is the operator's to see.
        say("tickcast serve: the workers did not all start; stopping", "error")
        failed = True
        stop()
    else:
        # Said once every worker listens: a script that waits for it can connect.
        say(f"tickcast {version} serving {scheme}://{host}:{port}/ with {workers} workers "
            f"(pids {' '.join(str(w.proc.pid) for w in slots)})")
    try:
        while any(w.running() for w in slots) or (not stopping and slots):
            if not stopping:
                for w in slots:
                    w.tend()
            time.sleep(0.05)
    finally:
        reserved.close()
    codes = [w.proc.returncode for w in slots]
    return 0 if stopping and not failed and all(c == 0 for c in codes) else 1


class Worker:
    """One worker's place: its process, and a new one after a crash. One
    that dies soon after it started waits longer each time before the next
    (RESTART_FIRST, doubling up to RESTART_MAX), so that a worker which
    cannot run does not spin; one that served for RESTART_MAX starts afresh."""

    def __init__(self, index: int, command: list[str], admin_port: int | None, say) -> None:
        self.index = index
        self.say = say
        self.command = command
        if admin_port is not None:
            self.command += ["--admin-port", str(admin_port + index if admin_port else 0)]
        self.proc: subprocess.Popen | None = None
        self.serving = threading.Event()
        self.restarts = 0
        self.started_at = 0.0
        self.delay = RESTART_FIRST
        self.due: float | None = None             # when the next process starts, after a crash

    def start(self) -> None:
        self.serving = threading.Event()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([*self.command, "--worker-restarts", str(self.restarts)],
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=_relay, args=(self.proc, self.serving), daemon=True).start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def tend(self) -> None:
        """Start a new process if this one died on its own, once its delay is over."""
        now = time.monotonic()
        if self.due is not None:
            if now >= self.due:
                self.due = None
                self.restarts += 1
                self.start()
                self.say(f"tickcast serve: worker {self.index} started again as pid {self.proc.pid} "
                         f"(restart {self.restarts})")
            return
        if self.running():
            return
        self.delay = RESTART_FIRST if now - self.started_at >= RESTART_MAX else min(self.delay * 2, RESTART_MAX)
        self.due = now + self.delay
        self.say(f"tickcast serve: worker {self.index} (pid {self.proc.pid}) exited ({self.proc.returncode}); "
                 f"its clients are cut, the others serve on; starting another in {self.delay:g} s", "warning")


def _relay(proc: subprocess.Popen, serving: threading.Event) -> None:
    """A worker's log lines to ours; ``serving`` once it says it serves."""
    for line in proc.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        if " serving ws://" in line or " serving wss://" in line:
            serving.set()
