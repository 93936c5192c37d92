"""Running ``lauf-dvc`` as a user does (a subprocess) and comparing a repository with
what ``dvc repro`` made of a copy of it; shared by the command-line test modules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pipelines import MARKS_ENV, SLEEP_ENV, Run, runs

from lauf_dvc.errors import ExitCode

SLEEP = "0.1"  # seconds each generated stage's command takes
LAUF_DB = Path(".dvc") / "tmp" / "lauf" / "lauf.sqlite"
SUMMARY = re.compile(r"(\d+) stage\(s\): (\d+) ran, \d+ up to date(?: \((\d+) by early cutoff\))?")


@dataclass
class Result:
    code: int
    out: str
    err: str
    ran: dict[str, Run]  # the stages whose command ran during this call

    @property
    def summary(self) -> tuple[int, int, int]:
        """(stages, ran, up to date by early cutoff) from the summary line of `repro`."""
        found = SUMMARY.search(self.out)
        assert found, f"no summary line in:\n{self.out}"
        return int(found[1]), int(found[2]), int(found[3] or 0)


#: ``lauf-dvc`` as installed (the console script a user types)
CONSOLE_SCRIPT = str(Path(sys.executable).with_name("lauf-dvc"))


def lauf(
    root: Path, *args: str, cwd: Path | None = None, sleep: str = SLEEP, script: bool = False
) -> Result:
    """Run ``lauf-dvc ARGS`` in ``cwd`` (default: the repository root) and wait for it:
    ``python -m lauf_dvc``, or with ``script`` the installed ``lauf-dvc`` command."""
    marks = Path(tempfile.mkdtemp(prefix="marks-", dir=root.parent))
    env = {**os.environ, MARKS_ENV: str(marks), SLEEP_ENV: sleep}
    program = [CONSOLE_SCRIPT] if script else [sys.executable, "-m", "lauf_dvc"]
    proc = subprocess.run(
        [*program, *args],
        cwd=cwd or root, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr, runs(marks))


def start_worker(root: Path, marks: Path) -> subprocess.Popen[str]:
    env = {**os.environ, MARKS_ENV: str(marks), SLEEP_ENV: SLEEP}
    return subprocess.Popen(
        [sys.executable, "-m", "lauf_dvc", "worker"], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def status(root: Path) -> dict[str, dict[str, Any]]:
    """``lauf-dvc status --json``, by stage."""
    res = lauf(root, "status", "--json")
    assert res.code == 0, res.err
    assert not res.ran
    return {row["stage"]: row for row in json.loads(res.out)}


def stale(rows: dict[str, dict[str, Any]]) -> set[str]:
    return {name for name, row in rows.items() if row["stale"]}


def reference(root: Path, dvctools: SimpleNamespace, **kwargs: Any) -> set[str]:
    """``dvc repro`` (in-process) in ``root``: the stages whose command ran."""
    marks = Path(tempfile.mkdtemp(prefix="ref-marks-", dir=root.parent))
    with _environ({MARKS_ENV: str(marks), SLEEP_ENV: "0"}):
        dvctools.reproduce(root, **kwargs)
    return set(runs(marks))


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def assert_like_dvc_repro(root: Path, ref: Path, dvctools: SimpleNamespace) -> None:
    """``root`` (run by lauf) is in the state ``dvc repro`` left ``ref`` in, entry for entry."""
    ours, theirs = dvctools.read_locks(root), dvctools.read_locks(ref)
    assert sorted(ours) == sorted(theirs), "not the same dvc.lock files"
    for path, lock in theirs.items():
        assert ours[path].keys() == lock.keys()
        assert sorted(ours[path]["stages"]) == sorted(lock["stages"]), path
        for name, entry in lock["stages"].items():  # the order of the entries may differ
            assert ours[path]["stages"][name] == entry, f"{path}: {name}"
    assert dvctools.dvc_status(root) == {}
    assert dvctools.cache_files(root) == dvctools.cache_files(ref)  # objects and run cache
    assert dvctools.workspace_files(root) == dvctools.workspace_files(ref)
    assert dvctools.gitignores(root) == dvctools.gitignores(ref)


def assert_one_error_line(res: Result, code: ExitCode, *words: str) -> None:
    assert res.code == code, (res.code, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lauf-dvc: error: "), res.err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in res.err
