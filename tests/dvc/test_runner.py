"""run_stage against `dvc repro`: same dvc.lock, same cache, same workspace, `dvc status` clean.

Each equivalence test builds one repository, copies it (A and B), runs every stage with
run_stage in A (in load_pipeline's order) and `dvc repro` in B, then compares; then it
changes some inputs in both and does it again (early cutoff, persist outputs), then
reverts them (the run cache).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lauf_dvc.dvc.load.pipeline import load_pipeline
from lauf_dvc.dvc.run.runner import StageResult, log_file, run_stage
from lauf_dvc.errors import PipelineError

# pygtrie's deprecation, raised inside DVC's graph building (dvc/repo/trie.py, graph.py)
pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

CHAIN = {
    "files": {
        "src.txt": "hello\n",
        "dvc.yaml": """\
            stages:
              one:
                cmd: cat src.txt > one.txt
                deps: [src.txt]
                outs: [one.txt]
              two:
                cmd: tr a-z A-Z < one.txt > two.txt
                deps: [one.txt]
                outs: [two.txt]
              three:
                cmd: wc -c < two.txt > three.txt
                deps: [two.txt]
                outs: [three.txt]
            """,
    },
    # two.txt comes out the same: three is cut off; the revert is served by the run cache
    "rounds": [{"src.txt": "HELLO\n"}, {"src.txt": "hello\n"}],
}

DIAMOND = {
    "files": {
        "n.txt": "3\n",
        "dvc.yaml": """\
            stages:
              top:
                cmd: mkdir -p parts && for i in $(seq $(cat n.txt)); do echo $i > parts/$i.txt; done
                deps: [n.txt]
                outs: [parts]
              left:
                cmd: cat parts/1.txt parts/2.txt > left.txt
                deps: [parts/1.txt, parts/2.txt]
                outs: [left.txt]
              right:
                cmd: ls parts > right.txt
                deps: [parts]
                outs: [right.txt]
              bottom:
                cmd: cat left.txt right.txt > bottom.txt
                deps: [left.txt, right.txt]
                outs: [bottom.txt]
            """,
    },
    "rounds": [{"n.txt": "4\n"}, {"n.txt": "3\n"}],
}

FOREACH_SUBFOLDER = {
    "files": {
        "raw.csv": "a,b\n1,2\n",
        "tag.txt": "v1\n",
        "dvc.yaml": """\
            stages:
              shard:
                foreach: [x, y]
                do:
                  cmd: (cat raw.csv tag.txt; echo $DVC_STAGE) > shard_${item}.txt
                  deps: [raw.csv, tag.txt]
                  outs:
                    - shard_${item}.txt
              grid:
                matrix:
                  a: [1, 2]
                  b: [u, v]
                cmd: echo ${item.a}${item.b} $DVC_STAGE > grid_${item.a}${item.b}.txt
                outs:
                  - grid_${item.a}${item.b}.txt
            """,
        "sub/dvc.yaml": """\
            stages:
              collect:
                cmd: (cat ../shard_?.txt ../grid_1u.txt; echo $DVC_STAGE) > all.txt
                deps: [../shard_x.txt, ../shard_y.txt, ../grid_1u.txt]
                outs: [all.txt]
              per:
                foreach:
                  first: 1
                  second: 2
                do:
                  cmd: echo ${item} ${key} $PWD > /dev/null && echo ${key} > per_${key}.txt
                  outs:
                    - per_${key}.txt
              up:
                wdir: ..
                cmd: cat sub/all.txt | wc -l > sub/up.txt
                deps: [sub/all.txt]
                outs: [sub/up.txt]
            """,
    },
    "add": ["raw.csv"],
    "rounds": [{"tag.txt": "v2\n"}, {"tag.txt": "v1\n"}],
}

KINDS = {
    "files": {
        "data.csv": "x\n1\n2\n",
        "conf/model.yaml": "scale: 2\nname: lin\n",
        "params.yaml": "train:\n  lr: 0.1\n  epochs: 3\n",
        "score.sh": "n=$(wc -l < out/data.txt)\n"
        'printf \'{"lines": %s, "scale": %s}\\n\' "$n" "$1" > metrics.json\n',
        "dvc.yaml": """\
            vars:
              - conf/model.yaml
            stages:
              prep:
                cmd:
                  - mkdir -p out
                  - cat data.csv > out/data.txt
                  - echo scale=${scale} >> out/data.txt
                deps: [data.csv]
                params:
                  - conf/model.yaml:
                      - scale
                outs: [out]
              score:
                cmd: bash score.sh ${scale}
                deps: [out/data.txt, score.sh]
                params:
                  - conf/model.yaml:
                      - scale
                metrics:
                  - metrics.json:
                      cache: false
              plot:
                cmd: |
                  printf 'x,y\\n1,2\\n' > plot.csv
                  cp metrics.json summary.json
                deps: [metrics.json]
                plots: [plot.csv]
                outs:
                  - summary.json:
                      cache: false
              history:
                cmd: cat metrics.json >> history.txt
                deps: [metrics.json]
                outs:
                  - history.txt:
                      persist: true
              train:
                cmd: echo lr=${train.lr} epochs=${train.epochs} > model.txt
                deps: [out]
                params:
                  - train
                  - conf/model.yaml:
                outs: [model.txt]
            """,
    },
    "rounds": [
        {
            "conf/model.yaml": "scale: 3\nname: lin\n",
            "params.yaml": "train:\n  lr: 0.2\n  epochs: 3\n",
        },
        {
            "conf/model.yaml": "scale: 2\nname: lin\n",
            "params.yaml": "train:\n  lr: 0.1\n  epochs: 3\n",
        },
    ],
}

PIPELINES = {
    "chain": CHAIN,
    "diamond": DIAMOND,
    "foreach_matrix_subfolder": FOREACH_SUBFOLDER,
    "cache_false_persist_metrics_params": KINDS,
}


def dedent(files: dict[str, str]) -> dict[str, str]:
    return {k: textwrap.dedent(v) for k, v in files.items()}


def run_all(root: Path, **kwargs) -> list[StageResult]:
    return [run_stage(root, s.address, **kwargs) for s in load_pipeline(root)]


def assert_same_repository(a: Path, b: Path, tools) -> None:
    """dvc.lock entries, cache, run cache, .gitignore and workspace equal; A clean."""
    assert tools.read_locks(a) == tools.read_locks(b)
    assert tools.workspace_files(a) == tools.workspace_files(b)
    assert tools.gitignores(a) == tools.gitignores(b)
    assert tools.cache_files(a) == tools.cache_files(b)
    assert tools.dvc_status(a) == {}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_same_result_as_dvc_repro(name, dvc_repo, dvctools, tmp_path) -> None:
    spec = PIPELINES[name]
    a = dvc_repo(dedent(spec["files"]), add=spec.get("add", ()))
    b = tmp_path / "b"
    shutil.copytree(a, b, symlinks=True)

    for round_ in [{}, *spec["rounds"]]:
        dvctools.write_files(a, round_)
        dvctools.write_files(b, round_)
        results = run_all(a)
        assert [r for r in results if r.outcome == "failed"] == []
        reproduced = dvctools.reproduce(b)
        # what dvc repro reproduced (ran, restored, verified) is what wrote dvc.lock in A
        assert {r.address for r in results if r.lock_entry_written} == set(reproduced)
        assert_same_repository(a, b, dvctools)

    again = run_all(a)
    assert {(r.outcome, r.reason) for r in again} == {("skipped", "up to date")}
    locks = dvctools.read_locks(a)  # lock_entry is the stage's dvc.lock entry, as written
    for info, result in zip(load_pipeline(a), again, strict=True):
        if not info.is_pipeline:  # a .dvc file: its own record, not a dvc.lock entry
            continue
        dvcfile = info.dvcfile.replace("dvc.yaml", "dvc.lock")
        assert result.lock_entry == locks[dvcfile]["stages"][info.name]


def test_early_cutoff_and_run_cache(dvc_repo, dvctools) -> None:
    root = dvc_repo(dedent(CHAIN["files"]))
    assert [r.outcome for r in run_all(root)] == ["ran"] * 3
    dvctools.write_files(root, {"src.txt": "HELLO\n"})
    outcomes = [(r.address, r.outcome, r.reason) for r in run_all(root)]
    assert outcomes == [("one", "ran", "ran"), ("two", "ran", "ran"),
                        ("three", "skipped", "up to date")]  # fmt: skip
    dvctools.write_files(root, {"src.txt": "hello\n"})
    restored = run_all(root)
    assert [r.reason for r in restored] == ["restored from run cache"] * 2 + ["up to date"]
    assert (root / "two.txt").read_text() == "HELLO\n"
    dvctools.write_files(root, {"src.txt": "HELLO\n"})
    assert run_stage(root, "one").reason == "restored from run cache"
    # --no-run-cache: the command runs again
    dvctools.write_files(root, {"src.txt": "hello\n"})
    assert run_stage(root, "one", run_cache=False).reason == "ran"


def test_force_runs_an_up_to_date_stage(dvc_repo) -> None:
    root = dvc_repo(dedent(CHAIN["files"]))
    run_all(root)
    assert run_stage(root, "two").outcome == "skipped"
    forced = run_stage(root, "two", force=True)
    assert (forced.outcome, forced.returncode, forced.lock_entry_written) == ("ran", 0, True)


def test_always_changed_runs_every_time_like_dvc_repro(dvc_repo, dvctools, tmp_path) -> None:
    files = {
        "dvc.yaml": "stages:\n  tick:\n    cmd: echo tick >> ticks.txt && cp ticks.txt n.txt\n"
        "    outs: [n.txt]\n    always_changed: true\n"
    }
    a = dvc_repo(files)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for _ in range(2):
        assert run_stage(a, "tick").outcome == "ran"
        assert dvctools.reproduce(b) == ["tick"]
    assert dvctools.read_locks(a) == dvctools.read_locks(b)
    assert (a / "ticks.txt").read_text() == "tick\ntick\n"


def test_frozen_stage_is_verified_not_run(dvc_repo, dvctools, tmp_path) -> None:
    a = dvc_repo(dedent(CHAIN["files"]))
    run_all(a)
    yaml = (a / "dvc.yaml").read_text().replace("  two:\n", "  two:\n    frozen: true\n")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    for root in (a, b):
        dvctools.write_files(root, {"dvc.yaml": yaml, "src.txt": "other\n"})
    results = {r.address: r for r in run_all(a)}
    assert (results["one"].outcome, results["two"].outcome) == ("ran", "skipped")
    assert dvctools.reproduce(b) == ["one"]
    assert dvctools.read_locks(a) == dvctools.read_locks(b)
    # A frozen stage whose output is gone: dvc repro fails verifying it, and so do we.
    for root in (a, b):
        (root / "two.txt").unlink()
    failed = run_stage(a, "two")
    assert (failed.outcome, failed.returncode) == ("failed", None)
    assert "two.txt" in failed.reason
    with pytest.raises(Exception, match="failed to reproduce"):
        dvctools.reproduce(b)


def test_failing_command_is_a_failed_result(dvc_repo, dvctools, tmp_path) -> None:
    files = {
        "dvc.yaml": "stages:\n"
        "  ok:\n    cmd: echo fine > ok.txt\n    outs: [ok.txt]\n"
        "  bad:\n    cmd:\n      - echo first line\n      - echo 'it broke' >&2; exit 3\n"
        "      - echo never > never.txt\n    outs: [bad.txt]\n"
        "  missing:\n    cmd: no-such-command-lauf --x\n    outs: [m.txt]\n"
    }
    root = dvc_repo(files)
    logs = tmp_path / "logs"
    assert run_stage(root, "ok", log_dir=logs).outcome == "ran"
    bad = run_stage(root, "bad", log_dir=logs)
    assert (bad.outcome, bad.returncode) == ("failed", 3)
    assert "it broke" in bad.log_tail and "first line" in bad.log_tail
    assert bad.log_path == log_file(logs, "bad") and "it broke" in bad.log_path.read_text()
    assert not (root / "never.txt").exists()
    missing = run_stage(root, "missing", log_dir=logs)
    assert (missing.outcome, missing.returncode) == ("failed", 127)
    assert "no-such-command-lauf" in missing.log_tail
    assert set(dvctools.read_locks(root)["dvc.lock"]["stages"]) == {"ok"}


def test_forgotten_mkdir_fails_as_under_dvc_repro(dvc_repo, dvctools, tmp_path) -> None:
    files = {"dvc.yaml": "stages:\n  w:\n    cmd: echo x > newdir/out.txt\n"
             "    outs: [newdir/out.txt]\n"}  # fmt: skip
    a = dvc_repo(files)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    result = run_stage(a, "w")
    assert (result.outcome, result.returncode) == ("failed", 1)
    assert "No such file or directory" in result.log_tail
    with pytest.raises(Exception, match="failed to reproduce"):
        dvctools.reproduce(b)
    for root in (a, b):
        assert not (root / "newdir").exists()
        assert not (root / "dvc.lock").exists()


def test_output_not_written_fails_like_dvc_repro(dvc_repo, tmp_path) -> None:
    root = dvc_repo({"dvc.yaml": "stages:\n  lazy:\n    cmd: 'true'\n    outs: [o.txt]\n"})
    result = run_stage(root, "lazy", log_dir=tmp_path)
    assert (result.outcome, result.returncode) == ("failed", None)
    assert "o.txt" in result.reason and "does not exist" in result.reason
    assert result.log_path is not None and result.reason in result.log_path.read_text()
    assert result.reason in result.log_tail
    assert not (root / "dvc.lock").exists()


def test_missing_dependency_fails_before_the_command_like_dvc_repro(
    dvc_repo, dvctools, tmp_path
) -> None:
    files = {"dvc.yaml": "stages:\n  m:\n    cmd: touch ran.txt o.txt\n    deps: [gone.txt]\n"
             "    outs: [o.txt]\n"}  # fmt: skip
    a = dvc_repo(files)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    result = run_stage(a, "m")
    assert (result.outcome, result.returncode) == ("failed", None)
    assert result.reason == "No such file or directory: gone.txt"
    with pytest.raises(Exception, match="failed to reproduce"):
        dvctools.reproduce(b)
    assert not (a / "ran.txt").exists() and not (b / "ran.txt").exists()


def test_paths_busy_in_another_dvc_process_fail_the_stage(dvc_repo) -> None:
    """DVC's path locks (held by `dvc repro` around a stage) are respected, and ours released."""
    from dvc.repo import Repo
    from dvc.rwlock import rwlock

    root = dvc_repo(dedent(CHAIN["files"]))
    with Repo(str(root)) as repo:
        tmp, fs = repo.tmp_dir, repo.fs
    with rwlock(tmp, fs, "dvc repro elsewhere", [], [str(root / "one.txt")], False):
        busy = run_stage(root, "one")
    assert (busy.outcome, busy.returncode) == ("failed", None)
    assert "busy" in busy.reason and "\n" not in busy.reason
    assert run_stage(root, "one").outcome == "ran"


def test_environment_wdir_log_and_stream(dvc_repo, tmp_path, monkeypatch) -> None:
    files = {
        "sub/dvc.yaml": 'stages:\n  env:\n    cmd: echo "$DVC_ROOT|$DVC_STAGE|$PWD" > env.txt'
        " && echo to-the-log\n    outs: [env.txt]\n"
    }
    root = dvc_repo(files)
    monkeypatch.chdir(tmp_path)  # not the repository: nothing may depend on the cwd
    stream = io.StringIO()
    result = run_stage(root, "sub/dvc.yaml:env", log_dir=tmp_path / "logs", stream=stream)
    assert result.outcome == "ran"
    dvc_root, dvc_stage, pwd = (root / "sub" / "env.txt").read_text().strip().split("|")
    assert (Path(dvc_root), dvc_stage, Path(pwd)) == (root, "sub/dvc.yaml:env", root / "sub")
    assert "to-the-log" in stream.getvalue()
    assert result.log_path is not None and result.log_path.parent == tmp_path / "logs"
    assert "to-the-log" in result.log_path.read_text()
    assert "/" not in result.log_path.name and ":" not in result.log_path.name


def test_log_file_names_are_safe_and_distinct(tmp_path) -> None:
    names = ["train", "featurize@a", "sub/dvc.yaml:gen", "sub_dvc.yaml_gen", "f@a b", "f@a_b"]
    paths = [log_file(tmp_path, n) for n in names]
    assert len(set(paths)) == len(names)
    assert paths[0].name == "train.log" and paths[1].name == "featurize@a.log"
    assert all(p.parent == tmp_path and "/" not in p.name and ":" not in p.name for p in paths)


def test_unknown_or_ambiguous_address_is_a_pipeline_error(dvc_repo) -> None:
    root = dvc_repo(dedent(FOREACH_SUBFOLDER["files"]))
    for address in ("nosuch", "shard", "sub/dvc.yaml"):
        with pytest.raises(PipelineError) as err:
            run_stage(root, address)
        assert "\n" not in str(err.value) and repr(address) in str(err.value)


WORKER = """
import sys
from lauf_dvc.dvc.run.runner import run_stage
for address in sys.argv[2:]:
    result = run_stage(sys.argv[1], address)
    if result.outcome != "ran":
        sys.exit(f"{address}: {result.outcome} {result.reason}")
"""


@pytest.mark.slow
def test_concurrent_workers_lose_no_lock_entry(dvc_repo, dvctools) -> None:
    n, workers = 64, 8
    items = ", ".join(str(i) for i in range(n))
    files = {
        "seed.txt": "s\n",
        "dvc.yaml": f"stages:\n  s:\n    foreach: [{items}]\n    do:\n"
        "      cmd: cat seed.txt > o_${item}.txt && echo ${item} >> o_${item}.txt\n"
        "      deps: [seed.txt]\n      outs:\n        - o_${item}.txt\n",
    }
    a = dvc_repo(files)
    addresses = [s.address for s in load_pipeline(a)]
    assert len(addresses) == n
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(a), *addresses[i::workers]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(workers)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
    assert len(dvctools.read_locks(a)["dvc.lock"]["stages"]) == n
    assert dvctools.dvc_status(a) == {}  # every entry matches its output, all in the cache
    rwlock = a / ".dvc" / "tmp" / "rwlock"  # DVC's path locks were all released
    assert not rwlock.exists() or not any(json.loads(rwlock.read_text()).values())
