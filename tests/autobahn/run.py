"""Run the Autobahn|Testsuite's fuzzing client against `tickcast serve --echo-path`.

    python tests/autobahn/run.py [--cases "1.*,2.*"] [--python2 PATH]

wstest runs on Python 2.7 (pyenv keeps one): a virtual environment with
autobahntestsuite is made once under ~/.cache/tickcast/wstest. The server
runs from this environment's tickcast with an echo path, frames up to 16
MiB (case 9 sends them) and a queue to match. Prints the count of each
verdict and every case that is not OK; exits 1 if any case failed (OK,
NON-STRICT and INFORMATIONAL pass; UNIMPLEMENTED passes for compression,
cases 12 and 13). Not a pytest test: the README's test command does not
need Python 2.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = "1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*"
PASS = {"OK", "NON-STRICT", "INFORMATIONAL"}
VENV = Path.home() / ".cache" / "tickcast" / "wstest"


def python2() -> str | None:
    found = sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "2.7*" / "bin" / "python2.7")))
    return found[-1] if found else shutil.which("python2.7")


def wstest(py2: str) -> Path:
    exe = VENV / "bin" / "wstest"
    if not exe.exists():
        subprocess.run([py2, "-m", "pip", "install", "-q", "virtualenv"], check=True)
        subprocess.run([py2, "-m", "virtualenv", "-q", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "autobahntestsuite"], check=True)
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--python2", default=None)
    ap.add_argument("--report", default=None, help="keep the HTML report in this folder")
    args = ap.parse_args()
    py2 = args.python2 or python2()
    if py2 is None:
        print("autobahn: no Python 2.7 to run wstest with (pyenv install 2.7.18)", file=sys.stderr)
        return 2
    exe = wstest(py2)
    work = Path(tempfile.mkdtemp(prefix="tickcast-autobahn-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    keys = work / "keys.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKCAST_")}
    subprocess.run([sys.executable, "-m", "tickcast", "keys", "add", "--tier", "max", "--keys", str(keys)],
                   check=True, stdout=subprocess.DEVNULL, env=env)
    server = subprocess.Popen([sys.executable, "-m", "tickcast", "serve", "--port", str(port), "--keys", str(keys),
                               "--feed", "none", "--echo-path", "/echo", "--max-frame-size", str(16 << 20),
                               "--max-queue", str(64 << 20)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        while "serving ws://" not in (line := server.stderr.readline()):
            if not line:
                print("autobahn: the server did not start", file=sys.stderr)
                return 2
        reports = Path(args.report) if args.report else work / "reports"
        spec = {"outdir": str(reports), "servers": [{"agent": "tickcast", "url": f"ws://127.0.0.1:{port}/echo"}],
                "cases": args.cases.split(","), "exclude-cases": [], "exclude-agent-cases": {}}
        (work / "fuzzingclient.json").write_text(json.dumps(spec))
        started = time.monotonic()
        run = subprocess.run([str(exe), "-m", "fuzzingclient", "-s", str(work / "fuzzingclient.json")],
                             cwd=work, capture_output=True, text=True)
        if run.returncode != 0 or not (reports / "index.json").exists():
            print("autobahn: wstest failed:\n" + run.stdout[-2000:] + run.stderr[-2000:], file=sys.stderr)
            return 2
        results = json.loads((reports / "index.json").read_text())["tickcast"]
    finally:
        server.terminate()
        server.wait(30)
        server.stderr.close()

    def key(case: str):
        return [int(p) for p in re.findall(r"\d+", case)]
    verdicts = collections.Counter(r["behavior"] for r in results.values())
    failed = [c for c, r in results.items()
              if not (r["behavior"] in PASS or (r["behavior"] == "UNIMPLEMENTED" and c.split(".")[0] in ("12", "13")))
              or r["behaviorClose"] not in PASS | {"UNIMPLEMENTED"}]
    print(f"autobahn: {len(results)} cases ({args.cases}) in {time.monotonic() - started:.0f} s: " +
          ", ".join(f"{v} {n}" for v, n in verdicts.most_common()))
    for case in sorted(results, key=key):
        r = results[case]
        if r["behavior"] != "OK" or r["behaviorClose"] != "OK":
            print(f"  {case}: {r['behavior']} (close: {r['behaviorClose']})")
    if failed:
        print(f"autobahn: FAILED {len(failed)}: {', '.join(sorted(failed, key=key))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
