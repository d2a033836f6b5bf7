"""Servers and Redis as processes of a test's own."""
import glob
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tempfile
import time
from pathlib import Path

import pytest
import redis

from tickcast.keys import KeyStore

TICKCAST = [sys.executable, "-m", "tickcast"]


class Node:
    """`tickcast serve --bus` as a process of its own, with a key of tier max."""

    def __init__(self, tmp_path, bus: str | None, *extra: str, keys=None, marker="serving ws://",
                 nofile: int | None = None):
        """``keys``: a store shared with other nodes (else one of its own,
        with a key of tier max); ``marker``: what its log says once it
        serves; ``nofile``: its descriptor limit."""
        self.key = None
        if keys is None:
            keys = tmp_path / f"keys-{os.urandom(4).hex()}.sqlite3"
            store = KeyStore(keys)
            self.key = store.add("max")
            store.close()
        self.proc = subprocess.Popen([*TICKCAST, "serve", "--port", "0", "--keys", str(keys),
                                      *(["--bus", bus] if bus else []), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=None if nofile is None else lambda: resource.setrlimit(
                                         resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.log: list[str] = []
        self.port = None
        while self.port is None:
            line = self.proc.stderr.readline()
            assert line, "the node did not start:\n" + "".join(self.log)
            self.log.append(line)
            m = re.search(r"wss?://127\.0\.0\.1:(\d+)/", line) if marker in line else None
            self.port = int(m.group(1)) if m else None
        # Read on, so that a node that logs much never blocks on a full pipe.
        self.reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}" + (f"?key={self.key}" if path == "/" else "")

    def stop(self) -> str:
        """Stop it (SIGTERM) and return everything it logged."""
        if not self.proc.stderr.closed:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(20)
            self.reader.join(10)
            self.proc.stderr.close()
            self.proc.stdout.close()
        return "".join(self.log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



MISSING_REDIS = "redis-server not found: install Redis (Debian: apt-get install redis-server) to run this test"
MISSING_POSTGRES = ("PostgreSQL's server binaries not found: install PostgreSQL (Debian: apt-get install "
                    "postgresql) to run this test")


class PrivateRedis:
    """A redis-server of this test's own, on a free port, which it may kill
    and start again: never the one a machine runs (a developer's data)."""

    def __init__(self, password: str | None = None):
        if shutil.which("redis-server") is None:
            pytest.skip(MISSING_REDIS)
        self.port = free_port()
        self.password = password
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no",
                                      *(["--requirepass", self.password] if self.password else [])],
                                     stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def _pg_bin() -> str | None:
    """The folder of initdb and pg_ctl: Debian keeps them out of PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return os.path.dirname(found[0])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


PG_BIN = _pg_bin()


class PrivatePostgres:
    """A PostgreSQL server of a test's own (initdb into a temporary folder,
    a superuser root with trust auth, on a free port), which it may stop and
    start again: never the one a machine runs. initdb refuses to run as
    root: as root it runs as the postgres user."""

    def __init__(self):
        if not self.available():
            pytest.skip(MISSING_POSTGRES)
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user cannot enter root's 0700 folders.
        self.dir = Path(tempfile.mkdtemp(prefix="tickcast-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._as_postgres(f"{PG_BIN}/initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "root",
                          "--no-sync", "-E", "UTF8")
        self.start()

    @staticmethod
    def available() -> bool:
        return PG_BIN is not None and (os.geteuid() != 0 or shutil.which("runuser") is not None)

    def _as_postgres(self, *cmd: str) -> None:
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*as_postgres, *cmd], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                          "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                          "start")

    def stop(self) -> None:
        self._as_postgres(f"{PG_BIN}/pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass                   # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)
