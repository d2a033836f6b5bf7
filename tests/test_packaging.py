"""The installed package: its version, and no silent fallback without its extensions."""
import shutil
import subprocess
import sys
from pathlib import Path

import tickcast


def test_package_is_installed_not_imported_from_the_source_tree():
    # The suite proves the wheel: tickcast must come from site-packages.
    assert "site-packages" in Path(tickcast.__file__).parts or "dist-packages" in Path(tickcast.__file__).parts


def test_missing_extensions_fail_with_a_clear_message(tmp_path):
    """Only the .py files of the installed package, without the compiled
    modules: the server says what is missing; the SDK does not need them."""
    pkg = Path(tickcast.__file__).parent
    shutil.copytree(pkg, tmp_path / "tickcast", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    for module in ("tickcast.server", "tickcast.publisher"):
        out = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path,
                             capture_output=True, text=True, env=env)
        assert out.returncode != 0
        assert "compiled extensions" in out.stderr and "pip install" in out.stderr
    out = subprocess.run([sys.executable, "-c", "import tickcast.client; print(tickcast.client.MarketAiClient)"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def test_the_sdk_loads_nothing_of_the_server():
    # A trading bot that imports the client gets no Cython module, no
    # simdjson, no uvloop, no picows, no redis.
    code = ("import sys, tickcast.client; "
            "print(sorted(m for m in sys.modules if m.startswith(('tickcast._', 'simdjson', 'uvloop', 'picows', "
            "'redis', 'tickcast.server', 'tickcast.dialects', 'tickcast.publisher'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['tickcast._version']"
