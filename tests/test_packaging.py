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
    """Only the .py files of the installed package, without the compiled modules."""
    pkg = Path(tickcast.__file__).parent
    shutil.copytree(pkg, tmp_path / "tickcast", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import tickcast"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": ""})
    assert out.returncode != 0
    assert "compiled extensions" in out.stderr and "pip install" in out.stderr
