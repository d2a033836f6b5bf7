"""tickcast watch against real servers: the snapshot, the live view's terminal, reconnection."""
import asyncio
import os
import pty
import re
import select
import signal
import subprocess
import time

import orjson
import pytest
import websockets
from conftest import send, subscribe
from processes import TICKCAST, Node, free_port

from tickcast.keys import KeyStore


@pytest.fixture
def market(serve_process):
    return serve_process("--feed", "market", "--tick-interval", "0.05", "--drain-seconds", "0")


def base_url(node) -> str:
    return f"ws://127.0.0.1:{node.port}/"


async def watch_once(node, *args: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``watch --once`` while a client of the test's own hears every quote the server sends."""
    async with websockets.connect(node.url()) as ws:
        await send(ws, subscribe({"type": "quotes"}))
        proc = await asyncio.create_subprocess_exec(*TICKCAST, "watch", base_url(node), "--key", node.key, "--once",
                                                    *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        heard = []
        reading = asyncio.ensure_future(_quotes(ws, heard))
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        if reading.done():
            reading.result()
        reading.cancel()
    return subprocess.CompletedProcess([], proc.returncode, out.decode(), err.decode()), heard


async def _quotes(ws, heard: list) -> None:
    async for frame in ws:
        msg = orjson.loads(frame)
        if msg.get("type") == "update" and msg["channel"] == "quotes":
            heard.append(msg["data"])


async def test_once_prints_what_the_server_sent(market):
    done, heard = await watch_once(market, "--symbols", "btc/usdt,ETH/USDT")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    out = done.stdout
    assert f"ws://127.0.0.1:{market.port}/  connected  2 symbols" in out
    for symbol in ("BTC/USDT", "ETH/USDT"):
        head = re.search(rf"^{re.escape(symbol)}  mid (\S+)  vwap (\S+)  arb \S+ bps", out, re.M)
        assert head, out
        # The mid shown is one the server sent for that symbol, and so is each exchange's bid and ask.
        sent = [q for q in heard if q["symbol"] == symbol]
        assert head.group(1) in {q["global_mid"] for q in sent}
        # Two quotes may share a mid and differ in a book, so the one shown is any of them whose books all match.
        assert any(all(re.search(rf"^{e['exchange']} +{re.escape(e['bid'])} +{re.escape(e['ask'])} +[\d.]+ +[+-][\d.]+$",
                                 out, re.M) for e in q["exchanges"])
                   for q in sent if q["global_mid"] == head.group(1)), out
    assert "SOL/USDT" not in out.split("latest signals")[0]
    assert re.search(r"^  \d\d:\d\d:\d\d\.\d{3}  (buy|sell) \S+ @ \S+ on \w+$", out, re.M)   # trades
    assert re.search(r"^  polymarket  15m: up 0\.\d+ / down 0\.\d+ \(\d+ s left\)", out, re.M)
    assert "latest signals" in out and "Traceback" not in out


async def test_once_without_symbols_shows_every_symbol(market):
    done, heard = await watch_once(market)
    assert done.returncode == 0, done.stderr
    shown = set(re.findall(r"^([A-Z0-9]+/[A-Z0-9]+)  mid ", done.stdout, re.M))
    assert shown == {q["symbol"] for q in heard} and len(shown) >= 4


@pytest.mark.parametrize("case", ["bad key", "no server", "bad symbol"])
def test_a_failure_is_one_line(market, case):
    url, key, extra = base_url(market), market.key, []
    if case == "bad key":
        key = "mk_live_" + "0" * 32
    elif case == "no server":
        url = f"ws://127.0.0.1:{free_port()}/"
        extra = ["--timeout", "2"]
    else:
        extra = ["--symbols", "BTC-USDT"]
    started = time.monotonic()
    done = subprocess.run([*TICKCAST, "watch", url, "--key", key, "--once", *extra],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    expected = {"bad key": "UNAUTHORIZED: Invalid API key.", "no server": "no connection to",
                "bad symbol": "INVALID_MESSAGE"}[case]
    assert done.stderr.startswith("tickcast watch: ") and expected in done.stderr
    if case == "no server":
        assert 1.9 < time.monotonic() - started < 10


def test_plain_shows_the_connection_going_and_coming_back(tmp_path):
    keys = tmp_path / "keys.sqlite3"
    store = KeyStore(keys)
    key = store.add("free")
    store.close()
    port = free_port()
    args = ("--port", str(port), "--feed", "market", "--tick-interval", "0.05", "--drain-seconds", "0")
    node = Node(tmp_path, None, *args, keys=keys)
    watcher = subprocess.Popen([*TICKCAST, "watch", f"ws://127.0.0.1:{port}/", "--key", key, "--plain",
                                "--interval", "0.2", "--symbols", "BTC/USDT"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        statuses = _Statuses(watcher, port)
        first = statuses.until(lambda s: "  connected  " in s and _updates(s) > 20)
        node.proc.kill()                                       # -9: no close frame
        node.stop()
        gone = statuses.until(lambda s: "  reconnecting in " in s)
        assert "ConnectionRefusedError" in gone or "closed" in gone
        node = Node(tmp_path, None, *args, keys=keys)          # the same port and keys
        back = statuses.until(lambda s: "  connected  " in s and _updates(s) > _updates(gone) + 20)
        assert _updates(first) < _updates(back)                # subscribed again: updates flow
    finally:
        node.stop()
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(10) == 0
        assert "Traceback" not in watcher.stderr.read()
        watcher.stdout.close()
        watcher.stderr.close()


class _Statuses:
    """The status lines a --plain watch prints."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.prefix = proc, f"ws://127.0.0.1:{port}/  "

    def until(self, condition, seconds: float = 15.0) -> str:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            assert line, "watch ended"
            if line.startswith(self.prefix) and condition(line):
                return line
        raise AssertionError("no such status line")


def _updates(status: str) -> int:
    return int(re.search(r"(\d+) updates", status).group(1))


def test_the_live_view_quits_on_ctrl_c_and_leaves_the_terminal_clean(market):
    """On a terminal (a pty): the alternate screen, the cursor hidden; Ctrl-C
    gives both back and exits 0."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.execvp(TICKCAST[0], [*TICKCAST, "watch", base_url(market), "--key", market.key, "--symbols", "BTC/USDT"])
    seen = b""
    try:
        seen += _read_until(fd, b"BTC/USDT  mid ")
        assert b"\x1b[?1049h" in seen and b"\x1b[?25l" in seen     # alternate screen, cursor hidden
        os.kill(pid, signal.SIGINT)
        seen += _read_until(fd, None)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    tail = seen[seen.rindex(b"BTC/USDT  mid "):]
    assert b"\x1b[?1049l" in tail and b"\x1b[?25h" in tail and b"Traceback" not in seen


def _read_until(fd: int, marker: bytes | None, seconds: float = 15.0) -> bytes:
    """What the pty shows until ``marker`` (None: until the program ends)."""
    got = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:                    # the program ended
                return got
            if not chunk:
                return got
            got += chunk
            if marker is not None and marker in got:
                return got
    raise AssertionError(f"not seen in {seconds} s: {marker!r}\n{got[-2000:]!r}")
