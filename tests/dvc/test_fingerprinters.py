"""The built-in fingerprinters on real git+DVC repositories, checked against DVC itself.

``dvc``'s part hashes are the md5s DVC writes to dvc.lock, and over a seeded random
sequence of edits the stages whose fingerprint changed are exactly the stages
``dvc status`` reports, for ``dvc`` and for ``xxhash`` alike.
"""

from __future__ import annotations

import json
import os
import random
import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from lauf_dvc.dvc.load.pipeline import StageInfo, load_pipeline
from lauf_dvc.fingerprint import MISSING, Fingerprint, FingerprintContext, diff
from lauf_dvc.plugins import Hooks, make_plugin_manager

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

NAMES = ("dvc", "xxhash")

DVC_YAML = """\
stages:
  prepare:
    cmd: mkdir -p data/prepared && cp data/raw.csv data/prepared/ && echo x > data/prepared/x.txt
    deps: [data/raw.csv]
    outs: [data/prepared]
  train:
    cmd: mkdir -p models && cat data/prepared/raw.csv src/train.py > models/model.json
    deps: [data/prepared, src/train.py]
    params: [train.lr, train.epochs]
    outs: [models/model.json]
  evaluate:
    cmd: wc -c < models/model.json > metrics.json
    deps: [models/model.json]
    params: [{eval.json: [threshold]}]
    metrics: [{metrics.json: {cache: false}}]
"""

FILES = {
    "dvc.yaml": DVC_YAML,
    "params.yaml": "train:\n  lr: 0.1\n  epochs: 3\nunused: 1\n",
    "eval.json": '{"threshold": 0.5}',
    "data/raw.csv": "a,b\n1,2\n",
    "src/train.py": "print('train')\n",
}


@pytest.fixture
def repo(dvc_repo: Callable[..., Path]) -> Path:
    return dvc_repo(FILES)


def fingerprints(root: Path, name: str) -> dict[str, Fingerprint]:
    """Every stage's fingerprint, computed in one pass as a sync would."""
    stages = load_pipeline(root)
    hooks = Hooks(make_plugin_manager(entry_points=False))
    with FingerprintContext(root) as ctx:
        return {s.address: hooks.fingerprint(s, ctx, name) for s in stages}


def all_fingerprints(root: Path) -> dict[str, dict[str, Fingerprint]]:
    return {name: fingerprints(root, name) for name in NAMES}


def changed(root: Path, baseline: dict[str, dict[str, Fingerprint]]) -> dict[str, set[str]]:
    """The stages each fingerprinter finds changed since ``baseline``."""
    now = all_fingerprints(root)
    return {
        name: {a for a, fp in now[name].items() if diff(baseline[name][a], fp)} for name in NAMES
    }


def test_dvc_hashes_are_the_md5s_in_dvc_lock(repo: Path, dvctools: SimpleNamespace) -> None:
    dvctools.reproduce(repo)
    lock = dvctools.read_locks(repo)["dvc.lock"]["stages"]
    fps = fingerprints(repo, "dvc")
    for address, entry in lock.items():
        parts = fps[address].parts
        expected = {f"dep:{d['path']}": d["md5"] for d in entry.get("deps", [])}
        expected |= {f"out:{o['path']}": o["md5"] for o in entry.get("outs", [])}
        expected |= {
            f"param:{path}:{key}": json.dumps(value)
            for path, values in entry.get("params", {}).items()
            for key, value in values.items()
        }
        expected["cmd"] = json.dumps([entry["cmd"]])
        assert dict(parts) == expected, address
    assert fps["prepare"].parts["out:data/prepared"].endswith(".dir")


def test_before_the_first_run_outputs_are_missing(repo: Path) -> None:
    train = fingerprints(repo, "dvc")["train"].parts
    assert train["dep:data/prepared"] == MISSING and train["out:models/model.json"] == MISSING
    assert train["param:params.yaml:train.lr"] == "0.1"


def test_reasons_name_the_param_and_the_dependency(repo: Path, dvctools: SimpleNamespace) -> None:
    dvctools.reproduce(repo)
    before = all_fingerprints(repo)
    dvctools.write_files(repo, {
        "params.yaml": "train:\n  lr: 0.01\n  epochs: 3\nunused: 2\n",
        "data/raw.csv": "a,b\n1,3\n",
    })  # fmt: skip
    after = all_fingerprints(repo)
    for name in NAMES:
        reasons = {a: diff(before[name][a], after[name][a]) for a in before[name]}
        assert reasons == {
            "prepare": ["dependency data/raw.csv content changed"],
            "train": ["params.yaml:train.lr 0.1 -> 0.01"],
            "evaluate": [],
        }, name
    assert set(dvctools.dvc_status(repo)) == {"prepare", "train"}


def test_touching_files_changes_nothing(repo: Path, dvctools: SimpleNamespace) -> None:
    dvctools.reproduce(repo)
    baseline = all_fingerprints(repo)
    later = time.time_ns() + 5 * 10**9
    for path in ("data/raw.csv", "data/prepared/x.txt", "models/model.json", "params.yaml"):
        os.utime(repo / path, ns=(later, later))
    assert changed(repo, baseline) == {"dvc": set(), "xxhash": set()}
    assert dvctools.dvc_status(repo) == {}


# -- agreement with dvc status over random edits ---------------------------------------------


def _edit_param(repo: Path, rng: random.Random) -> str:
    lr = rng.choice([0.1, 0.01, 0.001])
    (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n  epochs: 3\nunused: 1\n")
    return f"train.lr={lr}"


def _edit_unused_param(repo: Path, rng: random.Random) -> str:
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(re.sub(r"unused: .*", f"unused: {rng.random()}", text))
    return "unused param"


def _edit_threshold(repo: Path, rng: random.Random) -> str:
    (repo / "eval.json").write_text(json.dumps({"threshold": rng.choice([0.5, 0.7])}))
    return "eval.json threshold"


def _edit_data(repo: Path, rng: random.Random) -> str:
    (repo / "data/raw.csv").write_text(rng.choice(["a,b\n1,2\n", "a,b\n1,3\n", "a,b\n"]))
    return "data/raw.csv"


def _edit_code(repo: Path, rng: random.Random) -> str:
    (repo / "src/train.py").write_text(rng.choice(["print('train')\n", "print(1)\n"]))
    return "src/train.py"


def _touch(repo: Path, rng: random.Random) -> str:
    path = repo / rng.choice(["data/raw.csv", "src/train.py", "models/model.json"])
    if path.exists():
        later = time.time_ns() + rng.randint(1, 10**9)
        os.utime(path, ns=(later, later))
    return f"touch {path.name}"


def _remove_output(repo: Path, rng: random.Random) -> str:
    path = repo / rng.choice(["models/model.json", "metrics.json", "data/prepared/x.txt"])
    path.unlink(missing_ok=True)
    return f"rm {path.name}"


def _change_output(repo: Path, rng: random.Random) -> str:
    path = repo / rng.choice(["models/model.json", "metrics.json"])
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"tampered {rng.random()}\n")
    return f"overwrite {path.name}"


def _edit_cmd(repo: Path, rng: random.Random) -> str:
    flag = rng.choice(["-c", "-m"])
    text = (repo / "dvc.yaml").read_text()
    new = text.replace("wc -c <", f"wc {flag} <").replace("wc -m <", f"wc {flag} <")
    (repo / "dvc.yaml").write_text(new)
    return f"evaluate cmd wc {flag}"


EDITS = [_edit_param, _edit_unused_param, _edit_threshold, _edit_data, _edit_code, _touch,
         _remove_output, _change_output, _edit_cmd]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_verdicts_agree_with_dvc_status(repo: Path, dvctools: SimpleNamespace, seed: int) -> None:
    rng = random.Random(seed)
    dvctools.reproduce(repo)
    baseline = all_fingerprints(repo)
    history: list[str] = []
    for _step in range(8):
        history.append(rng.choice(EDITS)(repo, rng))
        expected = set(dvctools.dvc_status(repo))
        assert changed(repo, baseline) == {"dvc": expected, "xxhash": expected}, history
        if rng.random() < 0.3:  # catch up, as `lauf-dvc repro` would
            dvctools.reproduce(repo)
            baseline = all_fingerprints(repo)
            history.append("repro")
            assert dvctools.dvc_status(repo) == {}


def test_stage_info_paths_match_dvc_parts(repo: Path) -> None:
    """The dvc fingerprinter keys its parts by the paths load_pipeline lists."""
    stages: list[StageInfo] = load_pipeline(repo)
    fps = fingerprints(repo, "dvc")
    for stage in stages:
        keys = {f"dep:{d}" for d in stage.deps} | {f"out:{o}" for o in stage.outs}
        keys |= {f"param:{p}" for p in stage.params} | {"cmd"}
        assert set(fps[stage.address].parts) == keys


def test_stages_in_subdirectories(dvc_repo: Callable[..., Path], dvctools: SimpleNamespace) -> None:
    root = dvc_repo({
        "sub/dvc.yaml": textwrap.dedent("""\
            stages:
              gen:
                foreach: [a, b]
                do:
                  cmd: echo ${item} > out_${item}.txt
                  params: [n]
                  outs: ["out_${item}.txt"]
            """),
        "sub/params.yaml": "n: 1\n",
    })  # fmt: skip
    dvctools.reproduce(root)
    fps = {name: fingerprints(root, name) for name in NAMES}
    assert set(fps["dvc"]) == {"sub/dvc.yaml:gen@a", "sub/dvc.yaml:gen@b"}
    part = fps["dvc"]["sub/dvc.yaml:gen@a"].parts
    assert part["param:sub/params.yaml:n"] == "1" and "out:sub/out_a.txt" in part
    (root / "sub/params.yaml").write_text("n: 2\n")
    for name in NAMES:
        now = fingerprints(root, name)["sub/dvc.yaml:gen@b"]
        assert diff(fps[name]["sub/dvc.yaml:gen@b"], now) == ["sub/params.yaml:n 1 -> 2"]
    assert set(dvctools.dvc_status(root)) == {"sub/dvc.yaml:gen@a", "sub/dvc.yaml:gen@b"}
