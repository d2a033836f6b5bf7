"""Settings from a TOML file, TICKCAST_* variables and flags, in that rising
order of precedence; --print-config; bad values named by their key."""
import argparse
import os
import re
import socket
import subprocess

import pytest
import websockets
from conftest import recv, send
from processes import TICKCAST

from tickcast.cli import build_parser
from tickcast.config import Settings
from tickcast.keys import KeyStore

def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKCAST_")}
    return {**env, **extra}


def serve(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*TICKCAST, "serve", *args], capture_output=True, text=True, timeout=30,
                          env=env or clean_env())


def printed(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^(\w+) = (.*)$", out.stdout, re.M))


def test_flags_win_over_the_environment_which_wins_over_the_file(tmp_path):
    conf = tmp_path / "tickcast.toml"
    conf.write_text('port = 9100\nping_interval = 20\nrate = 3.5\nbus = "redis://10.0.0.1:6379/2"\n'
                    'reuse-port = true\n')
    out = serve("--config", str(conf), "--rate", "7", "--print-config",
                env=clean_env(TICKCAST_PING_INTERVAL="25", TICKCAST_RATE="5", TICKCAST_BURST="9"))
    got = printed(out)
    assert got["port"] == "9100"                 # the file
    assert got["ping_interval"] == "25.0"        # the environment over the file
    assert got["burst"] == "9"                   # the environment
    assert got["rate"] == "7.0"                  # the flag over both
    assert got["reuse_port"] == "true" and got["bus"] == '"redis://10.0.0.1:6379/2"'
    assert got["feed"] == '"none"'               # with a bus, no feed unless asked
    assert got["host"] == '"127.0.0.1"'          # the default


def test_the_printed_config_reads_back_the_same(tmp_path):
    first = serve("--port", "9200", "--max-queue", "65536", "--print-config")
    conf = tmp_path / "printed.toml"
    conf.write_text(first.stdout)
    again = serve("--print-config", env=clean_env(TICKCAST_CONFIG=str(conf)))     # found by $TICKCAST_CONFIG
    assert printed(again) == printed(first)


def test_every_flag_has_its_config_key():
    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]
    names = {f.name for f in Settings.__dataclass_fields__.values()}
    flags = [a for a in serve_parser._actions if a.option_strings and a.dest not in ("help", "config", "print_config")
             and a.help != argparse.SUPPRESS]      # serve --workers' own, not an operator's
    assert len(flags) > 35
    for action in flags:
        assert action.dest in names, action.option_strings


@pytest.mark.parametrize("content, env, reason", [
    ("prot = 9000\n", {}, "unknown key 'prot'"),
    ('port = "9000"\n', {}, "port: expected an integer"),
    ("ping_interval = true\n", {}, "ping_interval: expected a number"),
    ("port = [\n", {}, "not TOML"),
    ("", {"TICKCAST_PORT": "nine"}, "$TICKCAST_PORT: expected an integer, got 'nine'"),
    ("", {"TICKCAST_REUSE_PORT": "maybe"}, "$TICKCAST_REUSE_PORT: expected true or false"),
    ("ping_timeout = 60\n", {}, "--ping-timeout may not exceed --ping-interval"),
])
def test_bad_settings_are_named_in_one_line(tmp_path, content, env, reason):
    conf = tmp_path / "bad.toml"
    conf.write_text(content)
    out = serve("--config", str(conf), env=clean_env(**env))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and reason in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_an_unknown_environment_variable_is_named_once_and_ignored():
    # Containers and wrappers set variables of their own under the prefix.
    out = serve("--print-config", env=clean_env(TICKCAST_PROT="9000", TICKCAST_VERSION="1.2"))
    assert out.returncode == 0 and "port = 8765" in out.stdout
    assert sorted(out.stderr.splitlines()) == [
        "tickcast serve: $TICKCAST_PROT is not a setting, ignored (did you mean $TICKCAST_PORT?)",
        "tickcast serve: $TICKCAST_VERSION is not a setting, ignored"]


def test_a_missing_config_file_is_one_line(tmp_path):
    out = serve("--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 2 and "No such file" in out.stderr and out.stderr.count("\n") == 1


async def test_a_server_runs_on_its_file(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = KeyStore(tmp_path / "keys.sqlite3")
    key = store.add("max")
    store.close()
    conf = tmp_path / "tickcast.toml"
    conf.write_text(f'port = {port}\nkeys = "{tmp_path / "keys.sqlite3"}"\nfeed = "none"\n')
    proc = subprocess.Popen([*TICKCAST, "serve", "--config", str(conf)], stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    try:
        while f"serving ws://127.0.0.1:{port}/" not in (line := proc.stderr.readline()):
            assert line, "the server did not start"
        async with websockets.connect(f"ws://127.0.0.1:{port}/?key={key}") as ws:
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stderr.close()
