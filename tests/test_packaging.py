"""The installed packages: the server's needs its extensions, the SDK needs nothing of the server."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tickcast.client
import tickcast.server
from tickcast._version import __version__
from tickcast.extensions import EXTENSIONS

CLIENT = Path(__file__).resolve().parent.parent / "client"
# What the server installs and the SDK must not pull in.
SERVER_ONLY = {"tickcast", "uvloop", "pysimdjson", "picows", "cython", "orjson", "prometheus-client", "rich",
               "redis", "hiredis", "asyncpg"}


def test_package_is_installed_not_imported_from_the_source_tree():
    # The suite proves the wheel: tickcast must come from site-packages.
    for module in (tickcast.server, tickcast.client):
        assert {"site-packages", "dist-packages"} & set(Path(module.__file__).parts), module.__file__


def test_missing_extensions_fail_with_a_clear_message():
    """The compiled modules made unimportable: the server says what is
    missing and how to get it, rather than a bare ImportError; a producer
    (the Publisher, the bus record) needs none of them."""
    block = "import sys\nfor m in %r: sys.modules['tickcast.' + m] = None\n" % (EXTENSIONS,)
    out = subprocess.run([sys.executable, "-c", block + "import tickcast.server"], capture_output=True, text=True)
    assert out.returncode != 0
    assert "compiled extensions" in out.stderr and "pip install" in out.stderr
    out = subprocess.run([sys.executable, "-c", block + "from tickcast.publisher import Publisher, BusSink"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_sdk_loads_nothing_of_the_server():
    # A trading bot that imports the client gets no server module, no Cython
    # module, no simdjson, uvloop, picows or redis.
    code = ("import sys, tickcast.client; "
            "print(sorted(m for m in sys.modules if m.startswith(('tickcast.', 'simdjson', 'uvloop', 'picows', "
            "'redis')) and not m.startswith('tickcast.client')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_versions_move_together():
    # The server requires the SDK at its own version.
    from importlib.metadata import requires, version
    assert tickcast.client.__version__ == __version__ == version("tickcast") == version("tickcast-client")
    assert f"tickcast-client=={__version__}" in [r.replace(" ", "") for r in requires("tickcast")]


def test_the_sdk_installs_alone_and_passes_its_tests(tmp_path):
    """tickcast-client in a fresh virtual environment, with no compiler
    (CC=false) and none of the server's dependencies, passes its own tests
    against this environment's server, run as processes."""
    if not (CLIENT / "pyproject.toml").exists():
        pytest.skip("needs the checkout's client/ beside tests/")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {**os.environ, "CC": "false", "CXX": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run([py, "-m", "pip", "install", "--quiet", f"{CLIENT}[test]"], check=True, env=env)
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name'].lower(): (d.read_text('WHEEL') or '') for d in m.distributions()}))")
    installed = __import__("json").loads(subprocess.run([py, "-c", code], capture_output=True, text=True,
                                                        check=True, env=env).stdout)
    assert "tickcast-client" in installed and not SERVER_ONLY & set(installed), sorted(installed)
    assert "Tag: py3-none-any" in installed["tickcast-client"]
    out = subprocess.run([py, "-c", "import tickcast.server"], capture_output=True, text=True, env=env)
    assert "No module named 'tickcast.server'" in out.stderr
    server = Path(sys.executable).parent / "tickcast"
    run = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CLIENT / "tests")],
                         capture_output=True, text=True, env={**env, "TICKCAST_SERVER": str(server)},
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and " failed" not in run.stdout and " skipped" not in run.stdout
