"""A stage whose paths another process holds for a moment (DVC's rwlock) waits for
them instead of failing: a terminated worker hands its stage back a moment before its
process, and its rwlock entries, are gone (seen in the soak test)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pipelines import dvc_yaml
from repro_helpers import lauf

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

HOLD = """
import sys, time
from dvc.repo import Repo
from dvc.rwlock import rwlock
repo = Repo(sys.argv[1])
out = repo.fs.join(repo.root_dir, "out.txt")
with rwlock(repo.tmp_dir, repo.fs, "holder", [], [out], False):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_stage_waits_for_paths_held_for_a_moment(dvc_repo) -> None:
    root = dvc_repo({"dvc.yaml": dvc_yaml({"s": {"cmd": "echo hi > out.txt",
                                                 "outs": ["out.txt"]}})})  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root), "3"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    res = lauf(root, "repro", "-j", "1")
    holder.wait(timeout=30)
    assert res.code == 0, res.out + res.err
    assert (root / "out.txt").read_text() == "hi\n"
