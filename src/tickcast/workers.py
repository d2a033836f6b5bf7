"""N server processes on one port: `tickcast serve --workers N`.

Each worker is a whole node (its own event loop, hub and connections) and
they share the listening port with SO_REUSEPORT, so the kernel spreads new
connections over them. All are fed by the bus: a worker simulates nothing.
The supervisor reserves the port, starts the workers, forwards SIGINT,
SIGTERM (a second one too: they stop at once) and SIGHUP to them, and ends
when they have; if one dies on its own the others
are stopped too, so that a process manager sees the failure and restarts
the whole.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

READY_WAIT = 30.0         # seconds the workers have to start serving


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
              admin_port: int | None = None) -> int:
    """Run ``command + ["--port", PORT]`` ``workers`` times; returns the exit code.
    Worker i serves its metrics on ``admin_port`` + i (0: each on a free port)."""
    try:
        reserved, port = reserve_port(host, port)
    except OSError as exc:
        print(f"tickcast serve: cannot bind {host}:{port}: {exc}", file=sys.stderr)
        return 1
    def admin(i: int) -> list[str]:
        return [] if admin_port is None else ["--admin-port", str(admin_port + i if admin_port else 0)]
    procs = [subprocess.Popen([*command, "--port", str(port), *admin(i)], stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    serving = [threading.Event() for _ in procs]
    for proc, ready in zip(procs, serving):
        threading.Thread(target=_relay, args=(proc, ready), daemon=True).start()
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        forward(signal.SIGTERM)

    def forward(sig, *_):
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, forward)       # each worker reloads its certificate, or ignores it
    deadline = time.monotonic() + READY_WAIT
    while not all(e.is_set() for e in serving) and time.monotonic() < deadline and \
            all(p.poll() is None for p in procs):
        time.sleep(0.02)
    if all(e.is_set() for e in serving):
        # Said once every worker listens: a script that waits for it can connect.
        print(f"tickcast {version} serving {scheme}://{host}:{port}/ with {workers} workers "
              f"(pids {' '.join(str(p.pid) for p in procs)})", file=sys.stderr, flush=True)
    try:
        while any(p.poll() is None for p in procs):
            if not stopping and any(p.poll() is not None for p in procs):
                dead = next(p for p in procs if p.poll() is not None)
                print(f"tickcast serve: worker {dead.pid} exited ({dead.returncode}); stopping the others",
                      file=sys.stderr, flush=True)
                stop()
            time.sleep(0.1)
    finally:
        reserved.close()
    codes = [p.returncode for p in procs]
    return 0 if stopping and all(c == 0 for c in codes) else 1


def _relay(proc: subprocess.Popen, serving: threading.Event) -> None:
    """A worker's log lines to ours; ``serving`` once it says it serves."""
    for line in proc.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        if " serving ws://" in line or " serving wss://" in line:
            serving.set()
