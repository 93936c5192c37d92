"""``lauf_dvc.reproduce``: ``Repo.reproduce``'s signature, return value and exceptions,
with real worker processes, compared with DVC's own ``Repo.reproduce`` on a copy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pipelines import MARK, dvc_yaml, stage

import lauf_dvc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHAIN = {
    "mark.py": MARK,
    "data.txt": "data\n",
    "dvc.yaml": dvc_yaml(
        {"one": stage("out/one.txt", "data.txt"), "two": stage("out/two.txt", "out/one.txt")}
    ),
}


@pytest.fixture
def chdir(monkeypatch):
    return monkeypatch.chdir


def test_returns_the_callers_stage_objects_in_the_order_they_finished(dvc_repo, chdir):
    from dvc.repo import Repo

    a, b = dvc_repo(CHAIN, name="a", add=["data.txt"]), dvc_repo(CHAIN, name="b", add=["data.txt"])
    chdir(a)
    with Repo(str(a)) as repo:
        stages = lauf_dvc.reproduce(repo=repo, jobs=2)
        by_name = {s.addressing: s for s in repo.index.stages}
        assert stages == [by_name["one"], by_name["two"]]  # DVC's Stage.__eq__: same repo
        assert lauf_dvc.reproduce(repo=repo, jobs=2) == []
        (a / "data.txt").write_text("new\n")
        assert [s.addressing for s in lauf_dvc.reproduce(repo=repo)] == [
            "data.txt.dvc", "one", "two"]  # fmt: skip
    chdir(b)
    with Repo(str(b)) as repo:
        assert [s.addressing for s in repo.reproduce()] == ["one", "two"]
        (b / "data.txt").write_text("new\n")
        assert [s.addressing for s in repo.reproduce()] == ["data.txt.dvc", "one", "two"]


def test_failures_raise_dvcs_reproduction_error(dvc_repo, chdir):
    from dvc.exceptions import ReproductionError
    from dvc.stage.exceptions import StageCmdFailedError

    failing = {"bad": {"cmd": "exit 3", "deps": ["data.txt"], "outs": ["o"]},
               "worse": {"cmd": "exit 4", "deps": ["data.txt"], "outs": ["p"]}}  # fmt: skip
    root = dvc_repo({**CHAIN, "dvc.yaml": dvc_yaml(failing)}, add=["data.txt"])
    chdir(root)
    with pytest.raises(ReproductionError, match="failed to reproduce 'bad'") as info:
        lauf_dvc.reproduce("bad", root=root, jobs=2)
    assert isinstance(info.value.__cause__, StageCmdFailedError)
    assert "exited with 3" in str(info.value.__cause__)
    with pytest.raises(ReproductionError, match="failed to reproduce stages: 'bad' and 'worse'"):
        lauf_dvc.reproduce(root=root, jobs=2, on_error="keep-going")
    assert lauf_dvc.reproduce(root=root, jobs=2, on_error="ignore") == []


def test_dvcs_own_exceptions_propagate(dvc_repo, chdir):
    from dvc.exceptions import CyclicGraphError
    from dvc.stage.exceptions import StageNotFound

    root = dvc_repo(CHAIN)
    chdir(root)
    with pytest.raises(StageNotFound):
        lauf_dvc.reproduce("nosuch", root=root)
    cyclic = {"x": {"cmd": "cp b a", "deps": ["b"], "outs": ["a"]},
              "y": {"cmd": "cp a b", "deps": ["a"], "outs": ["b"]}}  # fmt: skip
    (root / "dvc.yaml").write_text(dvc_yaml(cyclic))
    with pytest.raises(CyclicGraphError):
        lauf_dvc.reproduce(root=root)


def test_dry_run_and_refusals(dvc_repo, chdir):
    root = dvc_repo(CHAIN)
    chdir(root)
    lauf_dvc.reproduce(root=root)
    (root / "data.txt").write_text("new\n")
    lock = (root / "dvc.lock").read_text()
    # DVC's own dry run: two's input is not rewritten, so DVC does not list it
    assert [s.addressing for s in lauf_dvc.reproduce(root=root, dry=True)] == ["one"]
    assert (root / "dvc.lock").read_text() == lock
    with pytest.raises(TypeError, match="repro_fn"):
        lauf_dvc.reproduce(root=root, repro_fn=print)
    with pytest.raises(TypeError, match="unexpected keyword"):
        lauf_dvc.reproduce(root=root, forse=True)
    with pytest.raises(lauf_dvc.ConfigError, match="interactive"):
        lauf_dvc.reproduce(root=root, interactive=True)


def test_the_documented_example_runs(dvc_repo) -> None:
    root = dvc_repo(CHAIN)
    (example,) = re.findall(r"```python\n(# reproduce_example\.py.*?)```",
                            (DOCS / "python.md").read_text(), re.S)  # fmt: skip
    (root.parent / "reproduce_example.py").write_text(example)
    res = subprocess.run([sys.executable, str(root.parent / "reproduce_example.py")],
                         cwd=root, capture_output=True, text=True, env=os.environ,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["reproduced: ['one', 'two']", "again: []"]
