"""tickcast record and --feed replay:FILE, with real processes and real sockets."""
import asyncio
import gzip
import subprocess

import pytest
import websockets
from conftest import send, subscribe
from processes import TICKCAST

from tickcast.keys import KeyStore
from tickcast.tools.recording import read

@pytest.fixture
def node(serve_process):
    return lambda *extra: serve_process("--drain-seconds", "0", *extra)

@pytest.fixture
def recording(tmp_path, node):
    source = node("--feed", "market", "--tick-interval", "0.05")
    out = tmp_path / "rec.jsonl.gz"
    done = subprocess.run([*TICKCAST, "record", source.url("/").split("?")[0], "--key", source.key,
                           "--subscribe", "quotes:BTC/USDT,ETH/USDT", "--subscribe", "trades",
                           "--out", str(out), "--duration", "2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "updates into" in done.stderr
    return out


def test_a_recording_holds_every_update_with_its_time(recording):
    records = list(read(str(recording)))
    assert len(records) > 20
    times = [t for t, _ in records]
    assert times == sorted(times) and times[-1] - times[0] > 1.0
    assert all(frame.startswith(b'{"type":"update","channel":') for _, frame in records)
    assert {b'"channel":"quotes"' in f or b'"channel":"trades"' in f for _, f in records} == {True}


async def updates(url: str, n: int, timeout: float) -> list[bytes]:
    """The first ``n`` update frames of the recording's subscriptions, as sent."""
    async with websockets.connect(url) as ws:
        await send(ws, subscribe({"type": "quotes", "symbols": ["BTC/USDT", "ETH/USDT"]}, {"type": "trades"}))
        frames = []
        while len(frames) < n:
            frame = await asyncio.wait_for(ws.recv(decode=False), timeout)
            if frame.startswith(b'{"type":"update"'):
                frames.append(frame)
    return frames


async def test_a_replay_sends_the_recorded_frames_byte_for_byte(recording, node):
    recorded = {frame for _, frame in read(str(recording))}
    replay = node("--feed", f"replay:{recording}", "--replay-speed", "2", "--replay-loop")
    frames = await updates(replay.url(), 30, 5)
    assert all(f in recorded for f in frames)


async def test_a_replay_into_the_bus_reaches_a_node_byte_for_byte(recording, node, redis_url):
    """tickcast feed --feed replay:FILE publishes the recording into the bus; a node serves the same frames."""
    recorded = {frame for _, frame in read(str(recording))}
    bus_node = node("--bus", redis_url)
    feed = subprocess.Popen([*TICKCAST, "feed", "--bus", redis_url, "--feed", f"replay:{recording}",
                             "--replay-speed", "2", "--replay-loop"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        frames = await updates(bus_node.url(), 30, 10)
    finally:
        feed.terminate()
        out = feed.communicate(timeout=10)[0]
    assert "Traceback" not in out
    assert all(f in recorded for f in frames) and len(set(frames)) > 20


def test_a_cut_off_recording_reads_back_to_its_last_whole_record(recording, tmp_path):
    whole = list(read(str(recording)))
    data = recording.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    part = list(read(str(cut)))
    assert 0 < len(part) < len(whole) and part == whole[: len(part)]


@pytest.mark.parametrize("case", ["missing", "foreign text", "foreign gzip"])
def test_a_bad_replay_file_gets_one_line(tmp_path, case):
    path = tmp_path / "bad"
    if case == "foreign text":
        path.write_text("hello\n")
    elif case == "foreign gzip":
        with gzip.open(path, "wb") as f:
            f.write(b'{"some": "json"}\n')
    keys = tmp_path / "k.sqlite3"
    KeyStore(keys).close()
    out = subprocess.run([*TICKCAST, "serve", "--port", "0", "--keys", str(keys), "--feed", f"replay:{path}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"replay file {path}" in out.stderr
