"""``lauf-dvc`` as a user runs it (issue 3's acceptance): a real subprocess in a real
git + DVC repository, compared with what ``dvc repro`` does to a copy of it.

Stage commands are ``mark.py`` (see pipelines.py): each run leaves a marker created with
``O_EXCL`` in a directory fresh for every ``lauf-dvc`` call, so ``Result.ran`` is exactly
the set of stages whose command ran in that call, each once, with its start and end time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pipelines import (
    MARK,
    MARKS_ENV,
    SLEEP_ENV,
    Pipeline,
    assert_in_order,
    diamond,
    dvc_yaml,
    fan_out,
    foreach_matrix,
    independent,
    params_yaml,
    runs,
    stage,
)
from repro_helpers import (
    LAUF_DB,
    assert_like_dvc_repro,
    assert_one_error_line,
    lauf,
    reference,
    stale,
    start_worker,
    status,
)

from lauf_dvc.errors import ExitCode

# pygtrie's deprecation, raised inside DVC's graph building (dvc/repo/trie.py, graph.py)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

EXAMPLE = Path(__file__).parents[2] / "examples" / "dvc_project"
# -- equivalence, exactly once, in order ------------------------------------------------


def example_files() -> dict[str, str]:
    """examples/dvc_project, with its stand-in work (1 s per stage) cut to 0.1 s."""
    files = {}
    for path in EXAMPLE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            text = path.read_text()
            if path.suffix == ".py":
                assert "time.sleep(1)" in text, path
                text = text.replace("time.sleep(1)", "time.sleep(0.1)")
            files[path.relative_to(EXAMPLE).as_posix()] = text
    return files


def test_example_project_ends_as_dvc_repro_leaves_it(twins, dvctools) -> None:
    root, ref = twins(example_files())
    first = lauf(root, "repro", "-P", "-j", "4")
    assert first.code == 0, first.out + first.err
    assert first.summary == (8, 8, 0)
    assert len(dvctools.reproduce(ref)) == 8
    assert_like_dvc_repro(root, ref, dvctools)

    again = lauf(root, "repro", "-P", "-j", "4")
    assert again.code == 0 and again.summary == (8, 0, 0), again.out

    # the demo: one parameter changes; only train and what depends on it are affected
    for repo in (root, ref):
        params = repo / "params.yaml"
        params.write_text(params.read_text().replace("lr: 0.1", "lr: 0.05"))
    rows = status(root)
    assert stale(rows) == {"train", "evaluate", "report/dvc.yaml:summary"}
    assert "params.yaml:train.lr 0.1 -> 0.05" in rows["train"]["reason"]  # params: [train]
    assert rows["evaluate"]["reason"].startswith("upstream train")
    untouched = ["data/prepared/train.csv", *(f"features/{f}.json" for f in
                 ("sepal_length", "sepal_width", "petal_length", "petal_width"))]  # fmt: skip
    before = {p: (root / p).stat() for p in untouched}
    model = (root / "models/model.json").read_bytes()

    third = lauf(root, "repro", "-P", "-j", "4")
    assert third.code == 0, third.out + third.err
    ref_ran = dvctools.reproduce(ref)
    _, ran, cut_off = third.summary
    assert ran == len(ref_ran) and ran + cut_off == 3, (third.out, ref_ran)
    assert (root / "models/model.json").read_bytes() != model
    for path, st in before.items():  # prepare and featurize did not run again
        now = (root / path).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), path
    assert_like_dvc_repro(root, ref, dvctools)


@pytest.mark.parametrize("make", [fan_out, diamond, foreach_matrix], ids=lambda f: f.__name__)
def test_generated_pipeline_ends_as_dvc_repro_leaves_it(make, twins, dvctools) -> None:
    pipeline: Pipeline = make()
    root, ref = twins(pipeline.files)
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0, res.out + res.err
    n = len(pipeline.stages)
    assert res.summary == (n, n, 0)
    assert set(res.ran) == pipeline.stages  # each exactly once (O_EXCL markers)
    assert_in_order(pipeline, res.ran)
    assert reference(ref, dvctools) == pipeline.stages
    assert_like_dvc_repro(root, ref, dvctools)

    again = lauf(root, "repro", "-j", "4")
    assert again.code == 0 and not again.ran and again.summary == (n, 0, 0), again.out
    assert_like_dvc_repro(root, ref, dvctools)


# -- invalidation, early cutoff, --dry, status reasons, history -----------------------


def test_a_change_reruns_that_stage_and_downstream_and_nothing_else(dvc_repo, dvctools):
    pipeline = diamond()
    root = dvc_repo(pipeline.files)
    rows = status(root)
    assert all(row["reason"] == "never run" and row["state"] == "new" for row in rows.values())
    assert not (root / ".dvc/tmp/lauf/lauf.sqlite").exists()  # a look creates nothing
    assert set(lauf(root, "repro", "-j", "4").ran) == pipeline.stages

    # a parameter: left reads p.left
    (root / "params.yaml").write_text(params_yaml({"p": {"top": 1, "left": 3}}))
    rows = status(root)
    assert stale(rows) == pipeline.downstream("left") == {"left", "bottom", "final"}
    assert "params.yaml:p.left" in rows["left"]["reason"]
    assert rows["bottom"]["reason"].startswith("upstream left")
    assert rows["right"]["reason"] == "up to date"
    lock = (root / "dvc.lock").read_bytes()
    # targets are relative to the cwd, as for dvc repro
    dry = lauf(root, "repro", "--dry", "../dvc.yaml:final", cwd=root / "data")
    assert dry.code == 0 and not dry.ran, dry.err
    assert all(f"{s}:" in dry.out for s in ("left", "bottom", "final")), dry.out
    assert "top:" not in dry.out and "right:" not in dry.out
    assert (root / "dvc.lock").read_bytes() == lock
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0 and set(res.ran) == {"left", "bottom", "final"}, res.out
    assert_in_order(pipeline, res.ran)

    # a dependency file of the first stage: everything downstream of it, not `side`
    (root / "data/raw.txt").write_text("raw, second version\n")
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0 and set(res.ran) == pipeline.downstream("top"), res.out
    assert_in_order(pipeline, res.ran)

    # a command that writes the same output: right re-runs, bottom and final are cut off
    yaml = root / "dvc.yaml"
    yaml.write_text(yaml.read_text().replace("out/right.txt out/top.txt", "out/right.txt "
                                             "out/top.txt +v2"))  # fmt: skip
    assert stale(status(root)) == {"right", "bottom", "final"}  # as far as anyone knows
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0 and set(res.ran) == {"right"}, res.out
    assert res.summary == (6, 1, 2)

    # a command that writes another output: right and everything downstream of it
    yaml.write_text(yaml.read_text().replace("+v2", "=v2"))
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0 and set(res.ran) == {"right", "bottom", "final"}, res.out
    assert dvctools.dvc_status(root) == {}

    history = lauf(root, "history", "bottom", "--json")
    assert history.code == 0, history.err
    events = json.loads(history.out)
    done = [e for e in events if e["state"] == "completed"]
    assert len(done) == 5  # the first run, then params, raw.txt, +v2 (cut off), =v2
    assert "early cutoff" in done[3]["reason"] and "early cutoff" not in str(done[4]["reason"])
    assert any(e["state"] == "invalidated" and "upstream" in e["reason"] for e in events)
    assert_one_error_line(lauf(root, "history", "nosuch"), ExitCode.PIPELINE, "'nosuch'")


# -- side by side with dvc ---------------------------------------------------------------


def test_stage_reproduced_by_plain_dvc_is_up_to_date_for_lauf(dvc_repo, dvctools) -> None:
    pipeline = diamond()
    root = dvc_repo(pipeline.files)
    assert reference(root, dvctools, targets=["top"], single_item=True) == {"top"}
    rows = status(root)
    assert not rows["top"]["stale"] and rows["left"]["reason"] == "never run"
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0 and set(res.ran) == pipeline.stages - {"top"}, res.out

    (root / "data/raw.txt").write_text("raw, changed for dvc\n")
    assert reference(root, dvctools, targets=["top"], single_item=True) == {"top"}
    rows = status(root)
    assert stale(rows) == pipeline.downstream("top") - {"top"}
    assert "out/top.txt" in rows["left"]["reason"], rows["left"]
    res = lauf(root, "repro", "-j", "4")
    assert res.code == 0 and set(res.ran) == pipeline.downstream("top") - {"top"}, res.out
    assert dvctools.dvc_status(root) == {}


class LockWatcher(threading.Thread):
    """A user's ``dvc status`` loop, and a read of dvc.lock in the same hold of DVC's lock.

    ``dvc status`` may find a stage's paths busy (DVC's rwlock: a stage is being written),
    as it does beside a running ``dvc repro``; anything else it raises is a failure (a torn
    dvc.lock fails to parse), and the dvc.lock read must always parse and never lose an entry.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop = threading.Event()
        self.counts: list[int] = []  # dvc.lock entries seen, in order
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            self._watch()
        except BaseException as exc:
            self.errors.append(f"watcher: {exc!r}")

    def _watch(self) -> None:
        from dvc.lock import LockError
        from dvc.repo import Repo
        from ruamel.yaml import YAML

        path = self.root / "dvc.lock"
        with Repo(str(self.root)) as repo:
            while not self.stop.is_set():
                with _dvc_lock(repo):
                    try:
                        repo.status(targets=[f"{self.root / 'dvc.yaml'}:s000"])  # reads dvc.lock
                    except LockError as exc:
                        if "is busy" not in str(exc):
                            self.errors.append(repr(exc))
                    except Exception as exc:
                        self.errors.append(f"dvc status: {exc!r}")
                    text = path.read_text() if path.exists() else ""
                try:
                    self.counts.append(len(YAML(typ="safe").load(text)["stages"]) if text else 0)
                except Exception as exc:
                    self.errors.append(f"dvc.lock read under DVC's lock: {exc!r}")
                time.sleep(1.0)  # a user's loop, not a siege: lauf needs the lock too


@contextmanager
def _dvc_lock(repo: Any) -> Iterator[None]:
    """Hold DVC's repository lock (``.dvc/tmp/lock``, what every ``dvc`` command takes),
    trying every millisecond; DVC's commands nest inside (``@locked`` re-enters).

    DVC itself retries every 0.5 s, and lauf's workers hand the lock on to each other at
    once, so at DVC's pace a ``dvc status`` mostly waits until the run is over instead of
    landing between commits, which is the case to test.
    """
    from dvc.lock import LockError

    while True:
        try:
            repo.lock._do_lock()  # one attempt of Lock.lock()
            break
        except LockError:
            time.sleep(0.001)
    repo._lock_depth = 1  # as lock_repo() does: DVC's own calls re-enter
    repo._reset()  # nothing DVC read before we held the lock may be used
    try:
        yield
    finally:
        repo._lock_depth = 0
        repo.lock.unlock()
        repo._reset()


def test_eight_workers_lose_no_entry_and_dvc_never_sees_a_torn_lock(dvc_repo, dvctools):
    pipeline = independent(64)
    root = dvc_repo(pipeline.files)
    watcher = LockWatcher(root)
    watcher.start()
    try:
        res = lauf(root, "repro", "-j", "8", sleep="0")
    finally:
        watcher.stop.set()
        watcher.join()
    assert res.code == 0, res.out + res.err
    assert set(res.ran) == pipeline.stages
    lock = dvctools.read_locks(root)["dvc.lock"]
    assert sorted(lock["stages"]) == sorted(pipeline.stages)
    assert dvctools.dvc_status(root) == {}
    assert not watcher.errors, watcher.errors
    assert watcher.counts == sorted(watcher.counts), "an entry disappeared from dvc.lock"
    assert any(0 < n < 64 for n in watcher.counts), f"never between commits: {watcher.counts}"


# -- failures --------------------------------------------------------------------------


def failing_pipeline(flag: Path) -> Pipeline:
    """a -> b (fails, exit 3) -> c, and x -> y on its own.

    x finishes 1.5 s after b failed, so whether y runs depends on the failure policy only.
    """
    b = stage("out/b.txt", "out/a.txt")
    b["cmd"] = [b["cmd"], f"echo 'boom: b is broken' && touch {flag} && exit 3"]
    x = stage("out/x.txt", "=x")
    x["cmd"] = [f"while [ ! -e {flag} ]; do sleep 0.05; done; sleep 1.5", x["cmd"]]
    stages = {"a": stage("out/a.txt", "=a"), "b": b, "c": stage("out/c.txt", "out/b.txt"),
              "x": x, "y": stage("out/y.txt", "out/x.txt")}  # fmt: skip
    upstream = {"a": set(), "b": {"a"}, "c": {"b"}, "x": set(), "y": {"x"}}
    return Pipeline({"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)}, upstream)


def test_a_failing_stage_stops_the_run_like_dvc_repro(dvc_repo, dvctools, tmp_path) -> None:
    root = dvc_repo(failing_pipeline(tmp_path / "b-failed").files)
    res = lauf(root, "repro", "-j", "2")
    assert res.code == ExitCode.STAGE_FAILED, res.out + res.err
    assert set(res.ran) == {"a", "b", "x"}  # x was running: it may finish; y never starts
    assert "boom: b is broken" in res.out  # the failed stage's log tail, in the summary
    assert res.summary == (5, 2, 0)
    rows = status(root)
    assert rows["b"]["state"] == "failed" and rows["b"]["reason"] == "failed with exit code 3"
    assert "boom: b is broken" in Path(rows["b"]["log"]).read_text()
    assert rows["c"]["state"] == "upstream_failed"
    assert rows["y"]["state"] == "pending"
    assert sorted(dvctools.read_locks(root)["dvc.lock"]["stages"]) == ["a", "x"]


def test_keep_going_then_reset_failed_and_a_worker_finish_the_run(dvc_repo, dvctools, tmp_path):
    flag = tmp_path / "b-failed"
    root = dvc_repo(failing_pipeline(flag).files)
    res = lauf(root, "repro", "-j", "2", "--keep-going")
    assert res.code == ExitCode.STAGE_FAILED, res.out + res.err
    assert set(res.ran) == {"a", "b", "x", "y"}
    assert "boom: b is broken" in res.out
    rows = status(root)
    assert [rows[s]["state"] for s in "abcxy"] == [
        "completed", "failed", "upstream_failed", "completed", "completed"]  # fmt: skip

    yaml = root / "dvc.yaml"  # fix b
    yaml.write_text(yaml.read_text().replace("exit 3", "true"))
    res = lauf(root, "worker")  # a worker does not retry what failed for good...
    assert not res.ran, res.err
    assert_one_error_line(lauf(root, "reset"), ExitCode.USAGE, "--failed")
    res = lauf(root, "reset", "--failed")  # ...until it is reset
    assert res.code == 0 and "b, c" in res.out, res.out
    assert {name: row["state"] for name, row in status(root).items()} == {
        "a": "completed",
        "b": "pending",
        "c": "pending",
        "x": "completed",
        "y": "completed",
    }
    res = lauf(root, "worker")
    assert res.code == 0 and set(res.ran) == {"b", "c"}, res.err
    assert dvctools.dvc_status(root) == {}


BROKEN = {
    "broken yaml": (
        lambda text: text.replace('"stages": {', '"stages": {{', 1),
        (),
        ExitCode.PIPELINE,
        ["dvc.yaml", "invalid YAML", "line"],
    ),
    "cycle": (
        lambda text: text.replace('"data/raw.txt"', '"out/final.txt"'),
        (),
        ExitCode.PIPELINE,
        ["cycle", "top", "final"],
    ),
    "unknown target": (lambda text: text, ("nosuch",), ExitCode.PIPELINE, ["'nosuch'"]),
    "unknown lauf key": (
        lambda text: dvc_yaml(json.loads(text)["stages"], vars=[{"lauf": {"jobs": 2, "jbos": 3}}]),
        (),
        ExitCode.CONFIG,
        ["dvc.yaml", "lauf.jbos"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_bad_input_is_one_error_line_and_writes_nothing(case, dvc_repo, dvctools) -> None:
    edit, targets, code, words = BROKEN[case]
    root = dvc_repo(diamond().files)
    reference(root, dvctools)
    yaml = root / "dvc.yaml"
    yaml.write_text(edit(yaml.read_text()))
    lock = (root / "dvc.lock").read_bytes()
    workspace = dvctools.workspace_files(root)
    for command in (["repro", "-j", "2", *targets], ["worker", *targets]):
        res = lauf(root, *command)
        assert_one_error_line(res, code, *words)
        assert not res.ran and res.out == ""
    assert not (root / LAUF_DB).exists()
    assert (root / "dvc.lock").read_bytes() == lock
    assert dvctools.workspace_files(root) == workspace


# -- workers with no head process ------------------------------------------------------


def test_workers_without_a_head_process_complete_the_pipeline(twins, dvctools, tmp_path):
    pipeline = foreach_matrix()
    root, ref = twins(pipeline.files)
    marks = tmp_path / "marks"
    marks.mkdir()
    workers = [start_worker(root, marks) for _ in range(2)]  # two array jobs at once
    deadline = time.monotonic() + 60
    while not any(marks.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    workers.append(start_worker(root, marks))  # and one that joins while stages run
    assert set(status(root)) == pipeline.stages  # `lauf-dvc status` works mid-run too
    for worker in workers:
        _, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err
    ran = runs(marks)
    assert set(ran) == pipeline.stages
    assert_in_order(pipeline, ran)
    assert reference(ref, dvctools) == pipeline.stages
    assert_like_dvc_repro(root, ref, dvctools)


def test_max_tasks_and_max_idle_end_a_worker_cleanly(dvc_repo, tmp_path):
    """What SLURM array jobs use (docs/slurm.md): leave after N stages, or after waiting
    SECONDS with nothing to claim; exit 0 either way, and the stages left stay pending."""
    pipeline = fan_out(1)  # source -> leaf_0 -> gather: one stage at a time
    root = dvc_repo(pipeline.files)
    res = lauf(root, "worker", "--max-tasks", "1")
    assert res.code == 0, res.err
    assert set(res.ran) == {"source"}
    assert re.search(r"worker \S+ leaving: ran 1 stage\(s\) \(--max-tasks\)", res.err), res.err
    assert {n: r["state"] for n, r in status(root).items()} == {
        "source": "completed", "leaf_0": "pending", "gather": "pending"}  # fmt: skip

    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, MARKS_ENV: str(marks), SLEEP_ENV: "8"}
    busy = subprocess.Popen([sys.executable, "-m", "lauf_dvc", "worker", "--max-tasks", "1"],
                            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(marks.iterdir()):  # busy runs leaf_0 (8 s); gather waits for it
        assert time.monotonic() < deadline and busy.poll() is None, busy.communicate()
        time.sleep(0.05)
    idle = lauf(root, "worker", "--max-idle", "1")
    assert idle.code == 0 and idle.ran == {}, idle.err  # left before leaf_0 was done
    assert "leaving: nothing to claim for 1 s while the stages left wait" in idle.err, idle.err
    _, err = busy.communicate(timeout=60)
    assert busy.returncode == 0, err
    assert status(root)["gather"]["state"] == "pending"
    res = lauf(root, "worker")  # no limit: finishes the pipeline, no "leaving" line
    assert res.code == 0 and set(res.ran) == {"gather"} and "leaving" not in res.err
