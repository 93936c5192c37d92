"""The live view (issue 6, point 4): ``lauf-dvc watch``, ``status --json``, the progress of
``repro``; and the small worker options (``--max-idle``) and read-only commands that
must not create a database."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import DB, isolated, lauf, make_repo  # noqa: F401 (fixture)

from lauf_dvc.cli import STATUS_KEYS
from lauf_dvc.progress import ProgressView
from lauf_dvc.scheduler.store import TaskRow
from lauf_dvc.states import TaskState

pytestmark = [
    pytest.mark.usefixtures("isolated"),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),  # pygtrie in DVC
]
S = TaskState


def pipeline(flag: Path) -> dict[str, str]:
    """``slow`` waits for ``flag``; ``after`` needs it, and ``broken`` (exit 3) ``after``."""
    return {
        "dvc.yaml": f"""\
stages:
  slow:
    cmd: while [ ! -e {flag} ]; do sleep 0.05; done; echo slow > slow.txt
    outs: [slow.txt]
  after:
    cmd: cp slow.txt after.txt
    deps: [slow.txt]
    outs: [after.txt]
  broken:
    cmd: echo 'broken on purpose' && exit 3
    deps: [after.txt]
    outs: [broken.txt]
"""
    }


def wait_for(predicate, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_watch_shows_workers_running_stages_and_failures(tmp_path: Path) -> None:
    flag = tmp_path / "go"
    root = make_repo(tmp_path / "repo", pipeline(flag))
    worker = subprocess.Popen(
        [sys.executable, "-m", "lauf_dvc", "worker", "--identifier", "w-one"], cwd=root,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # w-one runs `slow`; nothing else is ready until it is done
        wait_for(lambda: "running" in lauf(root, "watch", "--once").out)
        view = lauf(root, "watch", "--once")
        assert view.code == 0, view.err
        line = next(x for x in view.out.splitlines() if x.startswith("w-one"))
        assert re.search(
            rf"w-one\s+\S+\s+{worker.pid}\s+alive\s+[\d.]+s ago\s+slow \([\d.]+s\)", line
        )
        assert re.search(r"^slow\s+running\s+[\d.]+s", view.out, re.M), view.out
        assert re.search(r"^after\s+pending\s+waits for slow", view.out, re.M), view.out

        # a second worker finds nothing to claim while `slow` runs: --max-idle lets it go
        idle = lauf(root, "worker", "--identifier", "w-two", "--max-idle", "0.5")
        assert idle.code == 0 and worker.poll() is None, idle.err
    finally:
        flag.touch()
        out, err = worker.communicate(timeout=120)
    assert worker.returncode == 1, err  # `broken` failed
    assert "Updating lock file" not in out + err  # DVC's chatter stays out of ours
    view = lauf(root, "watch", "--once")
    assert re.search(r"^slow\s+completed\s+[\d.]+s", view.out, re.M), view.out
    assert re.search(r"^broken\s+failed\s+[\d.]+s\s+exit code 3$", view.out, re.M), view.out
    failures = view.out[view.out.index("failures") :]
    assert "broken" in failures and "broken.log" in failures
    assert re.search(r"^w-one\s.*\soffline\s", view.out, re.M), view.out

    rows = json.loads(lauf(root, "status", "--json").out)
    assert [tuple(row) for row in rows] == [STATUS_KEYS] * 3
    by = {row["stage"]: row for row in rows}
    assert by["broken"]["reason"] == "failed with exit code 3"
    assert by["broken"]["log"].endswith("broken.log") and by["slow"]["log"] is None


def test_repro_progress_lines_show_counts_elapsed_and_estimate(tmp_path: Path) -> None:
    stages = "".join(
        f"  s{i}:\n    cmd: sleep 0.2 && echo {i} > s{i}.txt\n    outs: [s{i}.txt]\n"
        for i in range(4)
    )
    root = make_repo(tmp_path / "repo", {"dvc.yaml": f"stages:\n{stages}"})
    res = lauf(root, "repro", "-j", "2")
    assert res.code == 0, res.err
    ends = re.findall(r"^✓ s\d \[(\d)/4 done, 0 failed, [\d.]+s(, ~[\d.]+s left)?\]$",
                      res.out, re.M)  # fmt: skip
    assert len(ends) == 4, res.out
    assert any(eta for done, eta in ends if done != "4"), res.out  # an estimate once one ended
    assert all(not eta for done, eta in ends if done == "4"), res.out


def row(task: str, state: TaskState, updated: float) -> TaskRow:
    return TaskRow(task, state, None, None, None, 0, 0, {}, updated, ())


def test_estimate_is_the_pace_since_the_workers_started() -> None:
    now = [100.0]
    view = ProgressView(total=4, clock=lambda: now[0])
    done_before = row("a", S.COMPLETED, 90.0)  # found up to date before: not our pace
    view.update([done_before, row("b", S.PENDING, 90), row("c", S.PENDING, 90),
                 row("d", S.PENDING, 90)], started=95.0)  # fmt: skip
    assert view.estimate(todo=3, now=now[0]) is None  # none finished since: no pace yet
    now[0] = 110.0
    view.update([row("b", S.COMPLETED, 105), row("c", S.RUNNING, 105)], started=95.0)
    assert view.estimate(todo=2, now=now[0]) == pytest.approx(20.0)  # 10 s per stage
    assert view.progress_text(started=95.0) == "2/4 done, 0 failed, 15.0s, ~20.0s left"
    # the counts follow the changes: b invalidated again, c failed
    view.update([row("b", S.INVALIDATED, 111), row("c", S.FAILED, 111)], started=95.0)
    assert view.progress_text(started=95.0) == "1/4 done, 1 failed, 15.0s, ~20.0s left"


def test_read_only_commands_create_no_database(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "repo", pipeline(tmp_path / "go"))
    message = "lauf-dvc: no lauf-dvc run recorded yet: run `lauf-dvc repro` first"
    for command in (("history", "slow"), ("watch", "--once"), ("reset", "--failed"),
                    ("prune",)):  # fmt: skip
        res = lauf(root, *command)
        assert (res.code, res.err_lines) == (0, [message]), (command, res.err)
    assert lauf(root, "history", "slow", "--json").out.strip() == "[]"
    unknown = lauf(root, "history", "slwo")
    assert unknown.code == 4 and "unknown stage 'slwo'" in unknown.err
    assert not (root / DB).exists()
