"""DVC's verdicts on a few stages of a large pipeline, each stage loaded alone
(``status._few``), are the verdicts of the pass over DVC's whole index (``status._all``)
and what ``dvc status`` says, on a real repository over a sequence of edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lauf_dvc.dvc.load.pipeline import load_pipeline, locked, open_repo
from lauf_dvc.dvc.status import status

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

N = 2 * status.FEW  # stages: asking about one of them loads it alone


def _files() -> dict[str, str]:
    stages = {
        "root": {"cmd": "cp data.txt out/root.txt", "deps": ["data.txt"], "outs": ["out/root.txt"]}
    }
    for i in range(N - 1):
        stages[f"s{i}"] = {
            "cmd": f"mkdir -p out/d{i} && cat out/root.txt > out/d{i}/x.txt",
            "deps": ["out/root.txt"],
            "params": [f"p.s{i}"],
            "outs": [f"out/d{i}"],
        }
    params = {"p": {f"s{i}": i for i in range(N - 1)}}
    return {
        "data.txt": "data\n",
        "params.yaml": json.dumps(params),
        "dvc.yaml": json.dumps({"stages": stages}, indent=1),
        "out/.keep": "",
    }


def _both(root: Path, asked: list[str], *, alone: bool = True) -> tuple[dict, dict]:
    """The verdict on each stage in ``asked``, asked one at a time, and the whole index
    pass's; ``alone``: the first were found without DVC's index (a cached property of
    the repo once built)."""
    stages = load_pipeline(root)
    with open_repo(root) as repo, locked(repo):
        few = {a: status.verdicts_locked(repo, stages, {a})[a] for a in asked}
        assert ("index" not in vars(repo)) == alone
        every = status._all(repo, stages, set(asked))
    return few, every


def test_few_stages_loaded_alone_say_what_the_whole_index_says(dvc_repo, dvctools) -> None:
    root = dvc_repo(_files())
    dvctools.reproduce(root)
    lock = dvctools.read_locks(root)["dvc.lock"]["stages"]

    def drop_object(stage: str) -> None:  # its .dir object leaves the cache
        md5 = lock[stage]["outs"][0]["md5"]
        (root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()

    edits = {
        "nothing": lambda: None,
        "param": lambda: (root / "params.yaml").write_text(
            (root / "params.yaml").read_text().replace('"s3": 3', '"s3": 33')
        ),
        "output file": lambda: (root / "out/d4/x.txt").write_text("tampered\n"),
        "output gone": lambda: (root / "out/d5/x.txt").unlink(),
        "not in cache": lambda: drop_object("s6"),
        "data": lambda: (root / "data.txt").write_text("new data\n"),
    }
    asked = ["root", "s3", "s4", "s5", "s6", "s7"]
    for what, edit in edits.items():
        edit()
        expected = set(dvctools.dvc_status(root))
        few, every = _both(root, asked)
        assert few == every, what
        assert {a for a, v in few.items() if v.changed} == expected & set(asked), what
    assert {"root", "s3", "s4", "s5", "s6"} <= expected


def test_a_stage_never_run_is_asked_through_the_whole_index(dvc_repo, dvctools) -> None:
    """Its reasons name a missing dependency no stage makes, which needs every stage."""
    files = _files()
    pipeline = json.loads(files["dvc.yaml"])
    pipeline["stages"]["new"] = {"cmd": "cat nowhere.txt > new.txt", "deps": ["nowhere.txt"],
                                 "outs": ["new.txt"]}  # fmt: skip
    root = dvc_repo(files)
    dvctools.reproduce(root)
    (root / "dvc.yaml").write_text(json.dumps(pipeline, indent=1))
    few, every = _both(root, ["new"], alone=False)
    assert few == every
    assert few["new"].reasons == ("never run", "dependency nowhere.txt deleted")
