"""A worker that joins a running pipeline never dies of files that running stages are
rewriting (issue 13, point 4).

Seen on a cluster: a worker that joined while another ran stage ``side`` exited 74
before claiming anything, ``No such file or directory: .../out/side.txt``: to sync, a
joining worker asks DVC about every stage, and DVC hashed an output (or, for the stage
downstream, a dependency) that the running command had just deleted. Here one worker
runs ``churn``, whose command deletes and recreates its file and directory outputs in a
loop for a while; joining workers are started one after another while it runs, each
with ``--max-idle 0`` (sync, find nothing to claim, leave). Every one must exit 0; the
run must still end with every stage completed once and ``dvc status`` clean.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import dvc_status, isolated, lauf, make_repo  # noqa: F401 (fixture)

pytestmark = [
    pytest.mark.usefixtures("isolated"),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
    pytest.mark.slow,
]

CHURN_SECONDS = 20
#: Deletes and recreates its outputs (a file and a directory of files) as fast as it can,
#: as a stage that rewrites its results in steps does; the last round is what it leaves.
CHURN = """\
import os, shutil, sys, time
open("started", "w").close()
end = time.monotonic() + float(sys.argv[1])
os.makedirs("out", exist_ok=True)
while True:
    for path in ("out/side.txt", "out/sidedir"):
        shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else (
            os.path.exists(path) and os.remove(path))
    with open("out/side.txt", "w") as f:
        f.write("side\\n")
    os.makedirs("out/sidedir")
    for i in range(8):
        with open(f"out/sidedir/part{i}", "w") as f:
            f.write(f"part {i}\\n")
    if time.monotonic() > end:
        break
    time.sleep(0.001)  # leave the joining workers some CPU
"""
DVC_YAML = f"""\
stages:
  churn:
    cmd: python3 churn.py {CHURN_SECONDS}
    deps:
      - churn.py
    outs:
      - out/side.txt
      - out/sidedir
  down:
    cmd: cat out/side.txt out/sidedir/part0 > out/down.txt
    deps:
      - out/side.txt
      - out/sidedir
    outs:
      - out/down.txt
  other:
    cmd: mkdir -p out && echo other > out/other.txt
    outs:
      - out/other.txt
"""


@pytest.mark.timeout(240)
def test_workers_joining_while_a_stage_rewrites_its_outputs_never_crash(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", {"dvc.yaml": DVC_YAML, "churn.py": CHURN})
    first = subprocess.Popen(
        [sys.executable, "-m", "lauf_dvc", "worker", "--identifier", "first"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (root / "started").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
        time.sleep(0.05)
    joined = []
    while first.poll() is None and (root / "out" / "down.txt").exists() is False:
        # two at a time, as array tasks arrive
        pair = [
            subprocess.Popen(
                [sys.executable, "-m", "lauf_dvc", "worker", "--max-idle", "0"],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in pair:
            out, _ = proc.communicate(timeout=120)
            joined.append((proc.returncode, out))
        crashed = [(code, out) for code, out in joined if code != 0]
        assert not crashed, crashed[0]
    assert first.wait(timeout=120) == 0, first.stdout.read()
    # the loop must have tried: a run without joins during the churn proves nothing
    assert len(joined) >= 6, len(joined)
    res = lauf(root, "status", "--json")
    assert res.code == 0 and res.out.count('"completed"') == 3, res.out + res.err
    assert dvc_status(root) == {}
