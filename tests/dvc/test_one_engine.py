"""A Graphband user and a DVC pipeline go through the same invalidation code: the core's
``staleness.decide``, whose decisions the store applies (issue 16). The spy only records
the calls of the real function; everything else is real (SQLite, DVC, worker processes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pipelines import MARK, dvc_yaml, stage

import lauf_dvc
from lauf_dvc.scheduler import Graphband, Task, staleness

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> list[staleness.Decision]:
    seen: list[staleness.Decision] = []
    real = staleness.decide

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        decision = real(*args, **kwargs)
        seen.append(decision)
        return decision

    monkeypatch.setattr(staleness, "decide", recording)
    return seen


def test_graphband_and_a_dvc_pipeline_invalidate_through_one_engine(
    tmp_path: Path, dvc_repo, decisions: list[staleness.Decision], monkeypatch
) -> None:
    db = f"sqlite:///{tmp_path / 'band.sqlite'}"

    def band(param: str) -> list[str]:
        tasks = [Task("a", fingerprint=param), Task("b", dependencies=["a"])]
        return [t.id for t in Graphband(tasks, db=db, enable_fingerprints=True)]

    assert band("1") == ["a", "b"]
    decisions.clear()
    assert band("2") == ["a", "b"]
    graphband = [d for d in decisions if d.invalidate]
    assert [sorted(d.invalidate) for d in graphband] == [["a"]]

    root = dvc_repo({"mark.py": MARK, "data.txt": "1\n", "dvc.yaml": dvc_yaml({
        "one": stage("one.txt", "data.txt"), "two": stage("two.txt", "one.txt"),
    })})  # fmt: skip
    monkeypatch.chdir(root)  # as `dvc repro`: the dvc.yaml of the cwd
    assert sorted(s.name for s in lauf_dvc.reproduce(jobs=2)) == ["one", "two"]
    (root / "data.txt").write_text("2\n")
    decisions.clear()
    assert sorted(s.name for s in lauf_dvc.reproduce(jobs=2)) == ["one", "two"]
    pipeline = [d for d in decisions if d.invalidate]
    assert [sorted(d.invalidate) for d in pipeline] == [["one"]]
    assert pipeline[0].stale["two"] == f"upstream one <- {pipeline[0].stale['one']}"
