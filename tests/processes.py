"""Servers and Redis as processes of a test's own."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import redis

from tickcast.keys import KeyStore

TICKCAST = [sys.executable, "-m", "tickcast"]


class Node:
    """`tickcast serve --bus` as a process of its own, with a key of tier max."""

    def __init__(self, tmp_path, bus: str | None, *extra: str, keys=None, marker="serving ws://"):
        """``keys``: a store shared with other nodes (else one of its own,
        with a key of tier max); ``marker``: what its log says once it serves."""
        self.key = None
        if keys is None:
            keys = tmp_path / f"keys-{os.urandom(4).hex()}.sqlite3"
            store = KeyStore(keys)
            self.key = store.add("max")
            store.close()
        self.proc = subprocess.Popen([*TICKCAST, "serve", "--port", "0", "--keys", str(keys),
                                      *(["--bus", bus] if bus else []), *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.port = None
        while self.port is None:
            line = self.proc.stderr.readline()
            assert line, "the node did not start:\n" + "".join(self.log)
            self.log.append(line)
            m = re.search(r"ws://127\.0\.0\.1:(\d+)/", line) if marker in line else None
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



class PrivateRedis:
    """A redis-server of this test's own, which it may kill and start again."""

    def __init__(self, password: str | None = None):
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
