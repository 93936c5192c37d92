"""A stage whose paths another process holds for a moment (DVC's rwlock) waits for
them instead of failing: a terminated worker hands its stage back a moment before its
process, and its rwlock entries, are gone (seen in the soak test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pipelines import dvc_yaml
from repro_helpers import lauf

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

HOLD = """
import sys, time
from dvc.repo import Repo
from dvc.rwlock import rwlock
repo = Repo(sys.argv[1])
out = repo.fs.join(repo.root_dir, "out.txt")
with rwlock(repo.tmp_dir, repo.fs, "holder", [], [out], False):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_stage_waits_for_paths_held_for_a_moment(dvc_repo) -> None:
    root = dvc_repo({"dvc.yaml": dvc_yaml({"s": {"cmd": "echo hi > out.txt",
                                                 "outs": ["out.txt"]}})})  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root), "3"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    res = lauf(root, "repro", "-j", "1")
    holder.wait(timeout=30)
    assert res.code == 0, res.out + res.err
    assert (root / "out.txt").read_text() == "hi\n"


def test_dvc_methods_under_held_path_locks_leave_the_rwlock_file_alone(dvc_repo) -> None:
    """While a worker holds a stage's path locks, DVC's ``@rwlocked`` methods on that
    stage ask for nothing new: they pass without an edit of ``.dvc/tmp/rwlock`` (each
    edit replaces it: a new inode); a stage whose paths are not held edits it as DVC does."""
    from lauf_dvc.dvc.load.pipeline import locked
    from lauf_dvc.dvc.load.single import collect_stage
    from lauf_dvc.dvc.run.runner import StageRunner, _PathLocks

    root = dvc_repo({"in.txt": "x\n", "dvc.yaml": dvc_yaml({
        "s": {"cmd": "cp in.txt out.txt", "deps": ["in.txt"], "outs": ["out.txt"]},
        "t": {"cmd": "cp out.txt t.txt", "deps": ["out.txt"], "outs": ["t.txt"]},
    })})  # fmt: skip
    rwlock = root / ".dvc" / "tmp" / "rwlock"

    def seen() -> tuple[int, int]:
        st = rwlock.stat()
        return st.st_ino, st.st_mtime_ns

    with StageRunner(root) as runner:
        repo = runner.repo
        with locked(repo):
            stage, other = collect_stage(repo, "s"), collect_stage(repo, "t")
            paths = _PathLocks(repo, stage)
            paths.acquire()
            held = seen()
            assert stage.changed()  # never ran; changed, changed_deps, changed_outs
            stage.remove_outs(ignore_remove=False, force=False)
            assert seen() == held
            other.changed()  # its paths are not held: DVC's own edits
            assert seen() != held
            paths.release()
            left = json.loads(rwlock.read_text())
            assert not any(left.get(mode) for mode in ("read", "write")), left


def test_a_failed_reflink_leaves_an_existing_cache_object_alone(tmp_path) -> None:
    """DVC's reflink (Linux) truncates and deletes its destination when the clone fails:
    a cache object another worker had just added vanished. Through lauf's, the
    destination is replaced only by a finished clone."""
    import errno

    from dvc_objects.fs import system

    from lauf_dvc.dvc.commit.atomic import safe_reflink

    safe_reflink()
    src, dst = tmp_path / "src", tmp_path / "obj"
    src.write_text("new\n")
    dst.write_text("added by another worker\n")
    try:
        system.reflink(str(src), str(dst))
    except OSError as exc:  # no reflink here (ext4): the copy that follows replaces it
        assert exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY), exc
        assert dst.read_text() == "added by another worker\n"
    else:  # a filesystem that clones: the clone is in place, whole
        assert dst.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj", "src"]  # no temporary left
