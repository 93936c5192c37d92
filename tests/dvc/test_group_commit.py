"""Group commit (lauf_dvc/dvc/commit/group.py): the worker holding DVC's lock writes every
entry waiting for it in one rewrite, byte for byte what DVC's dumps in that order give,
and an entry is never overwritten by an older one.

Each test drives real stages of a real DVC repository: outputs made, saved and
committed as a worker does, entries posted, then committed under DVC's repository lock.
The twin repository gets the same outputs and DVC's own ``Stage.save`` / ``commit`` /
``dump`` in the same order."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipelines import dvc_yaml

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

STAGES = {
    name: {"cmd": f"echo {name} > out/{name}.txt", "outs": [f"out/{name}.txt"]}
    for name in ("a", "b", "c", "d")
}
FILES = {"dvc.yaml": dvc_yaml(STAGES), "out/.keep": ""}


def _make_outputs(root: Path, names: str, tag: str = "") -> None:
    for name in names:
        (root / "out" / f"{name}.txt").write_text(f"{name}{tag}\n")


def _lauf_save(runner, names: str) -> dict:
    """As a worker's phase 3 before the lock: save and commit each stage's outputs with
    the .gitignore lines deferred, render and post its entry. {name: (stage, record)}."""
    from lauf_dvc.dvc.commit import group, lockfile
    from lauf_dvc.dvc.load.pipeline import locked
    from lauf_dvc.dvc.load.single import collect_stage
    from lauf_dvc.dvc.run.runner import _ignores_deferred

    repo = runner.repo
    posted = {}
    for name in names:
        with locked(repo), contextlib.chdir(repo.root_dir):
            stage = collect_stage(repo, name)
        with _ignores_deferred(stage), contextlib.chdir(repo.root_dir):
            stage.save()
            with locked(repo):
                stage.commit()
        record = group.post(repo, stage, lockfile.rendered(stage))
        assert record is not None
        posted[name] = (stage, record)
    return posted


def _commit(runner, stage, record) -> str:
    from lauf_dvc.dvc.commit import group
    from lauf_dvc.dvc.load.pipeline import locked

    with locked(runner.repo), runner.repo.scm_context(quiet=True):
        return group.commit(runner.repo, stage, record)


def _dvc_dump(root: Path, names: str) -> None:
    """DVC's own save, commit and dump of each stage, in this order."""
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo, repo.lock, repo.scm_context(quiet=True):
        for name in names:
            (stage,) = repo.stage.collect(name)
            stage.save()
            stage.commit()
            stage.dump(update_pipeline=False)


def _records(root: Path) -> list[Path]:
    return sorted((root / ".dvc/tmp/lauf/commit").glob("*/*.json"))


def test_one_rewrite_writes_every_waiting_entry_as_dvc_would(dvc_repo, dvctools) -> None:
    from lauf_dvc.dvc.load.pipeline import locked
    from lauf_dvc.dvc.run.runner import StageRunner

    root, twin = dvc_repo(FILES, name="lauf"), dvc_repo(FILES, name="dvc")
    for where in (root, twin):
        _make_outputs(where, "abcd")
    _dvc_dump(twin, "d")  # dvc.lock exists already (its first write is DVC's own)
    _dvc_dump(twin, "abc")
    with StageRunner(root) as runner:
        (stage_d, record_d) = _lauf_save(runner, "d")["d"]
        assert _commit(runner, stage_d, record_d) == "dvc"  # a new dvc.lock: DVC writes it
        with locked(runner.repo):
            stage_d.dump(update_pipeline=False)
        posted = _lauf_save(runner, "abc")
        assert len(_records(root)) == 3
        before = (root / "dvc.lock").stat().st_ino
        assert _commit(runner, *posted["a"]) == "wrote"  # a's, and b's and c's
        assert (root / "dvc.lock").stat().st_ino != before
        assert _records(root) == []
        written = (root / "dvc.lock").stat().st_ino
        assert _commit(runner, *posted["b"]) == "found"  # nothing left to write
        assert _commit(runner, *posted["c"]) == "found"
        assert (root / "dvc.lock").stat().st_ino == written
    assert (root / "dvc.lock").read_bytes() == (twin / "dvc.lock").read_bytes()
    assert dvctools.gitignores(root) == dvctools.gitignores(twin)
    assert dvctools.dvc_status(root) == {}


def test_an_entry_written_since_a_record_was_posted_is_never_overwritten(dvc_repo) -> None:
    """A record older than dvc.lock's last rewrite is left to its poster: had its holder
    died after the rewrite, a later write of that stage (here DVC's own) must stand."""
    from lauf_dvc.dvc.commit import lockfile
    from lauf_dvc.dvc.run.runner import StageRunner

    root = dvc_repo(FILES)
    _make_outputs(root, "abcd")
    _dvc_dump(root, "abcd")
    with StageRunner(root) as runner:
        _make_outputs(root, "b", tag="-old")
        old_b = _lauf_save(runner, "b")["b"]  # posted; its worker "dies" here
        _make_outputs(root, "b", tag="-new")
        _dvc_dump(root, "b")  # a later run of b, by DVC
        dvc_b = lockfile.entry_text((root / "dvc.lock").read_text(), "b")
        _make_outputs(root, "c", tag="-2")
        stage_c, record_c = _lauf_save(runner, "c")["c"]
        assert _commit(runner, stage_c, record_c) == "wrote"
        text = (root / "dvc.lock").read_text()
        assert lockfile.entry_text(text, "b") == dvc_b != old_b[1].block  # not the old record's
        assert lockfile.entry_text(text, "c") == record_c.block
        assert [p.name for p in _records(root)] == [old_b[1].path.name]  # left to its poster


def test_a_poster_whose_record_is_gone_and_not_written_writes_its_own(dvc_repo) -> None:
    from lauf_dvc.dvc.commit import lockfile
    from lauf_dvc.dvc.run.runner import StageRunner

    root = dvc_repo(FILES)
    _make_outputs(root, "abcd")
    _dvc_dump(root, "d")
    with StageRunner(root) as runner:
        stage, record = _lauf_save(runner, "a")["a"]
        record.path.unlink()  # e.g. replaced by a rerun's record and removed meanwhile
        assert _commit(runner, stage, record) == "wrote"
        assert lockfile.entry_text((root / "dvc.lock").read_text(), "a") == record.block


def test_records_of_dead_workers_of_this_host_are_removed_at_start(dvc_repo) -> None:
    from lauf_dvc.dvc.commit import group
    from lauf_dvc.dvc.run.runner import StageRunner

    root = dvc_repo(FILES)
    _make_outputs(root, "abcd")
    _dvc_dump(root, "d")
    with StageRunner(root) as runner:
        (_, mine), (_, theirs) = _lauf_save(runner, "ab").values()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    body = theirs.path.read_text()
    theirs.path.write_text(body.replace(f'"pid": {os.getpid()}', f'"pid": {dead}'))
    with StageRunner(root) as runner:
        group.clean(runner.repo)
    assert _records(root) == [mine.path]


def test_later_rewrites_skip_the_whole_file_checks_and_still_write_dvcs_bytes(dvc_repo) -> None:
    """After a group commit its dvc.lock's digest and stages end are kept beside the
    records; the next rewrite of that same file skips the whole-file checks: the bytes are
    still DVC's. An edit (here a comment) changes the digest: checked again, DVC writes."""
    from lauf_dvc.dvc.commit import group
    from lauf_dvc.dvc.run.runner import StageRunner

    root, twin = dvc_repo(FILES, name="lauf"), dvc_repo(FILES, name="dvc")
    for where in (root, twin):
        _make_outputs(where, "abcd")
        _dvc_dump(where, "d")
    _dvc_dump(twin, "abc")
    with StageRunner(root) as runner:
        posted = _lauf_save(runner, "abc")
        assert _commit(runner, *posted["a"]) == "wrote"  # checked in full: DVC wrote it
        shape = posted["a"][1].path.parent / group._SHAPE
        first = shape.read_text()
        for tag in ("-2", "-3"):
            for where in (root, twin):
                _make_outputs(where, "cab", tag=tag)
            _dvc_dump(twin, "cab")
            posted = _lauf_save(runner, "cab")
            assert _commit(runner, *posted["c"]) == "wrote"
            assert (root / "dvc.lock").read_bytes() == (twin / "dvc.lock").read_bytes()
            assert shape.read_text() != first
        with (root / "dvc.lock").open("a") as fd:
            fd.write("# edited by hand\n")
        _make_outputs(root, "b", tag="-4")
        assert _commit(runner, *_lauf_save(runner, "b")["b"]) == "dvc"
