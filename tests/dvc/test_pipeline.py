"""load_pipeline against real repositories: what DVC resolves, in dependency order."""

from __future__ import annotations

from pathlib import Path

import pytest

from lauf_dvc.dvc.load.pipeline import StageInfo, load_pipeline
from lauf_dvc.errors import PipelineError

# pygtrie's deprecation, raised inside DVC's graph building (dvc/repo/trie.py, graph.py)
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

ROOT_YAML = """\
vars:
  - lauf:
      jobs: 2
stages:
  prepare:
    cmd: python3 -c "print(1)" > data/prepared.txt
    deps:
      - data/raw.csv
    params:
      - prepare.seed
    outs:
      - data/prepared.txt
  featurize:
    foreach: [a, b]
    do:
      cmd: cat data/prepared.txt > features/${item}.txt
      deps:
        - data/prepared.txt
      outs:
        - features/${item}.txt
      meta:
        lauf:
          priority: ${prepare.seed}
  grid:
    matrix:
      model: [lin, tree]
      depth: [1, 2]
    cmd: echo ${item.model} ${item.depth} > grid_${item.model}_${item.depth}.txt
    outs:
      - grid_${item.model}_${item.depth}.txt
  train:
    cmd:
      - cat features/a.txt features/b.txt > model.txt
      - echo done
    deps:
      - features/a.txt
      - features/b.txt
    params:
      - train.lr
      - conf/train.yaml:
          - optimizer.name
      - whole.yaml:
    outs:
      - model.txt
    metrics:
      - metrics.json:
          cache: false
"""

SUB_YAML = """\
stages:
  report:
    wdir: ..
    cmd: cat model.txt grid_lin_1.txt > sub/report.txt
    deps:
      - model.txt
      - grid_lin_1.txt
    outs:
      - sub/report.txt
  local:
    cmd: cat report.txt > local.txt
    deps:
      - report.txt
    outs:
      - local.txt
    frozen: true
"""

FILES = {
    "dvc.yaml": ROOT_YAML,
    "sub/dvc.yaml": SUB_YAML,
    "params.yaml": "prepare:\n  seed: 7\ntrain:\n  lr: 0.1\n",
    "conf/train.yaml": "optimizer:\n  name: sgd\n",
    "whole.yaml": "x: 1\n",
    "data/raw.csv": "a,b\n1,2\n",
}

ORDER = [
    "prepare",
    "featurize@a",
    "featurize@b",
    "grid@lin-1",
    "grid@lin-2",
    "grid@tree-1",
    "grid@tree-2",
    "train",
    "sub/dvc.yaml:report",
    "sub/dvc.yaml:local",
]


@pytest.fixture
def repo(dvc_repo) -> Path:
    return dvc_repo(FILES)


def by_address(stages: list[StageInfo]) -> dict[str, StageInfo]:
    return {s.address: s for s in stages}


def assert_topological(stages: list[StageInfo]) -> None:
    seen: set[str] = set()
    for stage in stages:
        assert set(stage.upstream) <= seen, f"{stage.address} before its upstream"
        seen.add(stage.address)


def test_every_stage_of_every_dvc_yaml_in_order(repo: Path) -> None:
    stages = load_pipeline(repo)
    assert [s.address for s in stages] == ORDER
    assert_topological(stages)
    got = by_address(stages)

    assert got["prepare"] == StageInfo(
        address="prepare",
        dvcfile="dvc.yaml",
        name="prepare",
        cmd=('python3 -c "print(1)" > data/prepared.txt',),
        wdir=".",
        deps=("data/raw.csv",),
        outs=("data/prepared.txt",),
        params=("params.yaml:prepare.seed",),
        upstream=(),
        frozen=False,
        always_changed=False,
        meta={},
    )
    assert got["featurize@b"].upstream == ("prepare",)
    assert got["featurize@b"].meta == {"lauf": {"priority": 7}}  # interpolated by DVC
    assert got["grid@tree-2"].cmd == ("echo tree 2 > grid_tree_2.txt",)
    train = got["train"]
    assert train.upstream == ("featurize@a", "featurize@b")
    assert train.cmd == ("cat features/a.txt features/b.txt > model.txt", "echo done")
    assert train.outs == ("model.txt", "metrics.json")
    assert set(train.params) == {
        "params.yaml:train.lr",
        "conf/train.yaml:optimizer.name",
        "whole.yaml",
    }
    report = got["sub/dvc.yaml:report"]
    assert (report.dvcfile, report.name, report.wdir) == ("sub/dvc.yaml", "report", ".")
    assert report.deps == ("model.txt", "grid_lin_1.txt")
    assert report.upstream == ("grid@lin-1", "train")
    local = got["sub/dvc.yaml:local"]
    assert (local.wdir, local.deps, local.outs) == ("sub", ("sub/report.txt",), ("sub/local.txt",))
    assert local.frozen and local.upstream == ("sub/dvc.yaml:report",)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (["train"], ["prepare", "featurize@a", "featurize@b", "train"]),
        (["featurize"], ["prepare", "featurize@a", "featurize@b"]),  # a foreach group
        (["featurize@b"], ["prepare", "featurize@b"]),
        (["grid@tree-1", "prepare"], ["prepare", "grid@tree-1"]),
        (
            ["sub/dvc.yaml:report"],
            ["prepare", "featurize@a", "featurize@b", "grid@lin-1", "train", "sub/dvc.yaml:report"],
        ),
        (["sub/dvc.yaml:local"], ["sub/dvc.yaml:local"]),  # frozen: upstream not reproduced
        (["dvc.yaml"], ORDER[:8]),
    ],
)
def test_targets_pull_in_their_upstream_as_dvc_repro_does(repo, targets, expected) -> None:
    assert [s.address for s in load_pipeline(repo, targets)] == expected


def test_targets_are_relative_to_the_root_whatever_the_cwd(repo, tmp_path, monkeypatch) -> None:
    # From inside sub/, DVC itself would read "train" in sub/dvc.yaml; lauf reads the root's.
    monkeypatch.chdir(repo / "sub")
    assert [s.address for s in load_pipeline(repo, ["train"])][-1] == "train"
    assert load_pipeline(repo, ["sub/dvc.yaml:report"])[-1].address == "sub/dvc.yaml:report"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert [s.address for s in load_pipeline(repo)] == ORDER
    assert [s.address for s in load_pipeline(str(repo), ["featurize"])][-1] == "featurize@b"
    assert load_pipeline(repo / "sub")[0].address == "prepare"  # a subfolder finds the root


def test_dvc_added_data_is_a_stage_upstream_of_its_users(dvc_repo) -> None:
    """As in DVC's own graph (issue 12): a ``dvc add`` file is a node, committed before
    the stages reading it run; it can be a target on its own."""
    repo = dvc_repo(
        {
            "data.csv": "x\n1\n",
            "dvc.yaml": "stages:\n  use:\n    cmd: cat data.csv > o.txt\n"
            "    deps: [data.csv]\n    outs: [o.txt]\n",
        },
        add=["data.csv"],
    )
    assert (repo / "data.csv.dvc").exists()
    data, use = load_pipeline(repo)
    assert (data.address, data.kind, data.cmd, data.outs) == ("data.csv.dvc", "data", (),
                                                             ("data.csv",))  # fmt: skip
    assert (use.address, use.deps, use.upstream) == ("use", ("data.csv",), ("data.csv.dvc",))
    assert load_pipeline(repo, ["data.csv.dvc"]) == [data]


def test_no_dvc_yaml_is_an_empty_pipeline(dvc_repo) -> None:
    assert load_pipeline(dvc_repo({"README": "hi\n"})) == []


BROKEN = {
    "malformed YAML": (
        {"dvc.yaml": "stages:\n  a:\n    cmd: [echo\n"},
        ["dvc.yaml: invalid YAML", "line 4"],
    ),
    "unknown key": (
        {"dvc.yaml": "stages:\n  a:\n    cmd: echo\n    outz: [x]\n"},
        ["dvc.yaml: extra keys not allowed", "outz"],
    ),
    "missing variable": (
        {"dvc.yaml": "stages:\n  a:\n    cmd: echo ${nope}\n"},
        ["dvc.yaml", "stages.a.cmd", "nope"],
    ),
    "cycle": (
        {
            "dvc.yaml": "stages:\n  a:\n    cmd: echo\n    deps: [y]\n    outs: [x]\n"
            "  b:\n    cmd: echo\n    deps: [x]\n    outs: [y]\n"
        },
        ["cycle", "a", "b"],
    ),
    "output of two stages": (
        {
            "dvc.yaml": "stages:\n  a:\n    cmd: echo\n    outs: [x]\n",
            "sub/dvc.yaml": "stages:\n  b:\n    cmd: echo\n    outs: [../x]\n",
        },
        ["'x'", "a and sub/dvc.yaml:b", "one stage"],
    ),
    "overlapping outputs": (
        {
            "dvc.yaml": "stages:\n  a:\n    cmd: echo\n    outs: [d]\n  b:\n    cmd: echo\n"
            "    outs: [d/x]\n"
        },
        ["'d'", "'d/x'", "overlap"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_pipelines_are_one_line_errors(dvc_repo, tmp_path, monkeypatch, case) -> None:
    files, words = BROKEN[case]
    repo = dvc_repo(files)
    monkeypatch.chdir(tmp_path)  # messages name files relative to the root, not the cwd
    with pytest.raises(PipelineError) as err:
        load_pipeline(repo)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message
    assert str(repo.name) + "/" not in message and "../" not in message


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("nosuch", ["'nosuch'", "dvc stage list"]),
        ("sub/dvc.yaml:nosuch", ["'nosuch'", "sub/dvc.yaml"]),
        ("nodir/dvc.yaml:gen", ["'nodir/dvc.yaml:gen'"]),
        ("dvc.lock", ["dvc.yaml"]),
    ],
)
def test_unknown_targets_are_one_line_errors(repo, target, words) -> None:
    with pytest.raises(PipelineError) as err:
        load_pipeline(repo, [target])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_not_a_dvc_repository(tmp_path) -> None:
    with pytest.raises(PipelineError, match="dvc init"):
        load_pipeline(tmp_path)


def test_outputs_overlap_as_checked_one_by_one() -> None:
    """``_Produced.overlaps`` (the start-up check of every dep against every output, in
    time independent of the number of outputs) answers as ``_overlaps`` against each."""
    import random

    from lauf_dvc.dvc.load.pipeline import _overlaps, _Produced

    rng = random.Random(1)
    names = ["a", "b", "ab", "a.txt", "d"]

    def path() -> str:
        return "/".join(rng.choice(names) for _ in range(rng.randint(1, 3))) + rng.choice(
            ["", "", "/"]
        )

    for _ in range(300):
        outs = [path() for _ in range(rng.randint(0, 6))]
        produced = _Produced(outs)
        for _ in range(20):
            dep = path()
            assert produced.overlaps(dep) == any(_overlaps(dep, o) for o in outs), (dep, outs)
