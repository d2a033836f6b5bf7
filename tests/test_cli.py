"""The command line, as an operator uses it: real processes, real sockets."""
import argparse
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tickcast.keys import KEY_RE
from tickcast.cli import build_parser

TICKCAST = [sys.executable, "-m", "tickcast"]


def run(*args, **kw):
    return subprocess.run([*TICKCAST, *args], capture_output=True, text=True, timeout=60, **kw)


def test_version():
    from tickcast._version import __version__
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tickcast {__version__}"


def test_keys_add_list_revoke(tmp_path):
    keys = str(tmp_path / "k.sqlite3")
    out = run("keys", "add", "--tier", "pro", "--keys", keys)
    assert out.returncode == 0
    key = out.stdout.strip()
    assert out.stdout == key + "\n" and KEY_RE.match(key) and key.startswith("mk_live_")
    test_key = run("keys", "add", "--tier", "free", "--test", "--keys", keys).stdout.strip()
    assert test_key.startswith("mk_test_")
    listing = run("keys", "list", "--keys", keys).stdout
    assert key[:12] in listing and "pro" in listing and key not in listing   # never the key itself
    assert run("keys", "revoke", key, "--keys", keys).returncode == 0
    assert "revoked" in run("keys", "list", "--keys", keys).stdout
    assert run("keys", "revoke", key, "--keys", keys).returncode == 1
    bad = run("keys", "add", "--tier", "gold", "--keys", keys)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_keys_are_stored_hashed(tmp_path):
    import sqlite3
    keys = tmp_path / "k.sqlite3"
    key = run("keys", "add", "--tier", "basic", "--keys", str(keys)).stdout.strip()
    dump = "\n".join(sqlite3.connect(keys).iterdump())
    assert key not in dump and key[8:] not in dump


def test_serve_help_documents_every_flag():
    help_text = run("serve", "--help").stdout
    serve = next(a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "serve")[1]
    for action in serve._actions:
        if action.help == argparse.SUPPRESS:
            continue                      # set by serve --workers on its workers, not by an operator
        for flag in action.option_strings:
            assert flag in help_text
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    for flag in ("--host", "--port", "--keys", "--ping-interval", "--ping-timeout", "--max-queue",
                 "--feed", "--bench-symbols", "--bench-rate", "--bench-batch", "--bench-size"):
        assert flag in help_text


def test_bad_settings_are_refused():
    out = run("serve", "--ping-interval", "5", "--ping-timeout", "10", "--port", "0")
    assert out.returncode == 2 and "ping-timeout" in out.stderr
    for flag, value in (("--state-bytes", "1000"), ("--bench-zipf", "-1")):
        out = run("serve", flag, value, "--port", "0")
        assert out.returncode == 2 and flag in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def default_store_env(home) -> dict:
    """An environment in which the default key store is under ``home``."""
    env = {k: v for k, v in os.environ.items() if k != "TICKCAST_KEYS"}
    return {**env, "XDG_DATA_HOME": str(home)}


@pytest.fixture
def served(tmp_path):
    """`tickcast serve` on a free port with its default key store, new."""
    keys = tmp_path / "tickcast" / "keys.sqlite3"
    proc = subprocess.Popen([*TICKCAST, "serve", "--port", "0"], env=default_store_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    key = proc.stdout.readline().strip()
    port = None
    deadline = time.monotonic() + 20
    while port is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"serving ws://127\.0\.0\.1:(\d+)/", line)
        port = int(m.group(1)) if m else None
    assert port, "server did not start"
    yield proc, key, port, keys
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def test_serve_mints_a_test_key_and_stops_cleanly(served):
    proc, key, port, keys = served
    assert key.startswith("mk_test_") and KEY_RE.match(key)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # A second start finds the store populated and prints no key.
    again = subprocess.Popen([*TICKCAST, "serve", "--port", "0"], env=default_store_env(keys.parent.parent),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    again.send_signal(signal.SIGINT)
    out, err = again.communicate(timeout=10)
    assert again.returncode == 0 and out == "" and "serving" in err
    # It says where the keys are and how to make one (a newcomer who lost the line is not locked out).
    assert f"key store {keys}: 1 active key (make one: tickcast keys add --tier max)" in err


SPEC_EXAMPLE = '''
import asyncio
import json
import websockets

async def connect():
    uri = "URI"
    async with websockets.connect(uri) as ws:
        # Subscribe
        await ws.send(json.dumps({
            "action": "subscribe",
            "channels": [
                {"type": "quotes", "symbols": ["BTC/USDT"]},
                {"type": "signals"}
            ]
        }))

        # Listen for messages
        async for message in ws:
            msg = json.loads(message)
            if msg["type"] == "update":
                print(f"[{msg['channel']}] {json.dumps(msg['data'], indent=2)}")

asyncio.run(connect())
'''


def test_spec_python_example_prints_updates(served, tmp_path):
    _, key, port, _ = served
    script = tmp_path / "example.py"
    script.write_text(textwrap.dedent(SPEC_EXAMPLE).replace("URI", f"ws://127.0.0.1:{port}/?key={key}"))
    seen = set()
    with subprocess.Popen([sys.executable, "-u", str(script)], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        # A silent example would block readline: the timer ends it, and readline sees EOF.
        timer = threading.Timer(15, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                m = re.match(r"^\[(\w+)\] \{", line)
                if m:
                    seen.add(m.group(1))
                if seen == {"quotes", "signals"}:
                    break
        finally:
            timer.cancel()
            proc.kill()
    assert seen == {"quotes", "signals"}


def test_perp_traders_lists_the_served_addresses():
    from tickcast.feeds.perp import SimulatedPerpExchange
    out = run("perp-traders", "--seed", "5")
    assert out.returncode == 0
    rows = [line.split() for line in out.stdout.splitlines()]
    served = SimulatedPerpExchange(seed=5).traders
    assert {(int(c), a) for c, a in rows} == {(c, a) for c, addrs in served.items() for a in addrs}
    assert all(re.fullmatch(r"0x[0-9a-f]{40}", a) for _, a in rows)
    assert "perp-traders" in re.sub(r"\s+", "", run("serve", "--help").stdout)   # however it wraps


@pytest.mark.parametrize("how", ["--keys", "TICKCAST_KEYS"])
def test_a_named_key_store_must_exist(tmp_path, how):
    typo = tmp_path / "kyes.sqlite3"
    env = default_store_env(tmp_path)
    args = ["serve", "--port", "0"]
    if how == "--keys":
        args += ["--keys", str(typo)]
    else:
        env["TICKCAST_KEYS"] = str(typo)
    out = run(*args, env=env)
    assert out.returncode == 2 and out.stdout == ""          # no key minted
    assert len(out.stderr.strip().splitlines()) == 1 and str(typo) in out.stderr
    assert not typo.exists() and not (tmp_path / "tickcast").exists()


def test_key_stores_are_created_readable_by_their_owner_only(tmp_path, served):
    keys = tmp_path / "k.sqlite3"
    run("keys", "add", "--tier", "pro", "--keys", str(keys))
    _, _, _, default = served
    for store in (keys, default):
        files = [p for p in store.parent.iterdir() if p.name.startswith(store.name)]
        assert store in files
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o600" for p in files}
    assert default.parent.stat().st_mode & 0o077 == 0


def test_sighup_is_survived(served):
    import websockets.sync.client
    proc, key, port, _ = served
    with websockets.sync.client.connect(f"ws://127.0.0.1:{port}/?key={key}") as ws:
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None
        ws.send('{"action":"ping"}')
        assert ws.recv(timeout=5) == '{"type":"pong"}'
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert "SIGHUP: nothing to reload" in proc.stderr.read()


def test_a_reader_that_goes_away_gets_no_traceback():
    # `tickcast perp-traders | head -1`, the reader gone before it prints.
    read, write = os.pipe()
    os.close(read)
    out = subprocess.run([sys.executable, "-m", "tickcast", "perp-traders"], stdout=write, stderr=subprocess.PIPE,
                         text=True, timeout=30)
    os.close(write)
    assert out.returncode == 1 and out.stderr == ""
