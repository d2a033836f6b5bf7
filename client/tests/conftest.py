"""The SDK's tests run against `tickcast serve` as processes of their own.

The server need not be importable here (the SDK installs where the server
cannot run): its command comes from $TICKCAST_SERVER (the path of a
`tickcast` executable, as the server's own suite passes it), else `tickcast`
on the PATH. Faults are real: a server killed with SIGKILL, or a relay on a
loopback port whose connections are cut.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import threading

import pytest


def server_command() -> str:
    command = os.environ.get("TICKCAST_SERVER") or shutil.which("tickcast")
    if not command:
        pytest.fail("no tickcast server to test against: set TICKCAST_SERVER to a `tickcast` executable "
                    "(pip install tickcast) or put one on the PATH", pytrace=False)
    return command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(condition, seconds: float = 1.0) -> bool:
    """Wait until ``condition()`` holds (polling), at most ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


class Served:
    """One `tickcast serve` process on a loopback port, with a key store of its own."""

    def __init__(self, keys: str, *args: str, port: int = 0):
        self.keys, self.args = keys, args
        env = {k: v for k, v in os.environ.items() if k != "TICKCAST_SERVER"}     # not a server setting
        self.proc = subprocess.Popen([server_command(), "serve", "--port", str(port), "--keys", keys, *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.log: list[str] = []
        self.port = None
        while self.port is None:
            line = self.proc.stderr.readline()
            assert line, "the server did not start:\n" + "".join(self.log)
            self.log.append(line)
            m = re.search(r"serving ws://127\.0\.0\.1:(\d+)/", line)
            self.port = int(m.group(1)) if m else None
        # Read on, so that a server that logs much never blocks on a full pipe.
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Keys:
    """A key store file; ``add(tier)`` makes a key in it with `tickcast keys
    add` (a running server reads new keys from the file)."""

    def __init__(self, path: str):
        self.path = path
        self.max = self.add("max")           # the store exists before a server opens it

    def add(self, tier: str) -> str:
        out = subprocess.run([server_command(), "keys", "add", "--tier", tier, "--test", "--keys", self.path],
                             capture_output=True, text=True, check=True)
        return re.search(r"mk_test_\w+", out.stdout).group(0)


@pytest.fixture
def keystore(tmp_path):
    return Keys(str(tmp_path / "keys.sqlite3"))


@pytest.fixture
def key(keystore):
    return keystore.max


@pytest.fixture
def serve(keystore):
    """``serve(*args, port=0)``: a server process, stopped after the test."""
    started = []

    def start(*args: str, port: int = 0) -> Served:
        started.append(Served(keystore.path, *args, port=port))
        return started[-1]

    yield start
    for s in started:
        s.stop()


class Relay:
    """A TCP relay on a loopback port in front of a server: ``cut()`` drops
    every connection through it at once, as a network would."""

    def __init__(self, target: int):
        self.target = target
        self.open: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader, writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self.open += [writer, up_writer]

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for w in self.open:
            w.transport.abort()
        self.open.clear()

    def close(self) -> None:
        self.cut()
        self.server.close()


@pytest.fixture
async def relay():
    made = []

    async def start(target: int) -> tuple[Relay, int]:
        made.append(Relay(target))
        return made[-1], await made[-1].start()

    yield start
    for r in made:
        r.close()
