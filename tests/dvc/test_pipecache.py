"""The pipeline snapshot (lauf_dvc.dvc.load.pipecache): used when nothing changed, never after
a change DVC would see, on real repositories."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lauf_dvc.dvc.load import pipecache
from lauf_dvc.dvc.project import LAUF_DIR, open_project

FILES = {
    "params.yaml": "x: 1\n",
    "dvc.yaml": (
        "vars:\n  - lauf:\n      jobs: 2\n"
        "stages:\n"
        "  a:\n    cmd: echo ${x} > a.txt\n    outs: [a.txt]\n"
        "  b:\n    cmd: cat a.txt > b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n"
    ),
    "data/keep.txt": "data\n",
}


def _age(root: Path, seconds: float = 60) -> None:
    """Date every file of the workspace back (the snapshot distrusts fresh files)."""
    past = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in [*filenames, "."]:
            os.utime(os.path.join(dirpath, name), (past, past))
    os.utime(root / ".git/info/exclude", (past, past))


def _cached(root: Path) -> list[str] | None:
    hit = pipecache.load(root, root / LAUF_DIR)
    return None if hit is None else [s.address for s in hit[1]]


@pytest.fixture
def repo(dvc_repo) -> Path:
    root = dvc_repo(FILES)
    _age(root)
    project = open_project(start=root)  # a full load, which saves the snapshot
    assert [s.address for s in project.stages] == ["a", "b"]
    assert project.settings.jobs == 2
    return root


def test_unchanged_project_comes_from_the_snapshot(repo: Path) -> None:
    assert _cached(repo) == ["a", "b"]
    project = open_project(start=repo)
    assert project.stages[0].cmd == ("echo 1 > a.txt",) and project.settings.jobs == 2
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # not an input of the load
    assert _cached(repo) == ["a", "b"]


@pytest.mark.parametrize(
    "change",
    ["edit dvc.yaml", "interpolated param", "new sub/dvc.yaml", "gitignore", "dvcignore"],
)
def test_any_change_dvc_would_see_means_a_full_load(repo: Path, change: str) -> None:
    if change == "edit dvc.yaml":
        text = (repo / "dvc.yaml").read_text().replace("cat a.txt", "sort a.txt")
        (repo / "dvc.yaml").write_text(text)
    elif change == "interpolated param":
        (repo / "params.yaml").write_text("x: 2\n")
    elif change == "new sub/dvc.yaml":
        (repo / "sub").mkdir()
        (repo / "sub/dvc.yaml").write_text("stages:\n  c:\n    cmd: echo c\n")
    elif change == "gitignore":
        (repo / ".gitignore").write_text("/data\n")
    else:
        (repo / ".dvcignore").write_text("data\n")
    _age(repo)  # even with old timestamps: sizes, inodes and listings differ
    assert _cached(repo) is None
    project = open_project(start=repo)  # the full load sees the change
    if change == "interpolated param":
        assert project.stages[0].cmd == ("echo 2 > a.txt",)
    if change == "new sub/dvc.yaml":
        assert "sub/dvc.yaml:c" in [s.address for s in project.stages]
    if change == "edit dvc.yaml":
        assert project.stages[1].cmd == ("sort a.txt > b.txt",)


def test_a_file_changed_within_a_timestamp_tick_is_not_trusted(repo: Path) -> None:
    (repo / "params.yaml").write_text("x: 3\n")  # fresh mtime
    assert _cached(repo) is None
    assert open_project(start=repo).stages[0].cmd == ("echo 3 > a.txt",)
    assert _cached(repo) is None  # params.yaml is still too fresh to snapshot


# -- DVC's verdicts kept for `lauf-dvc status` (lauf_dvc.dvc.status.verdictcache) ----------------


@pytest.fixture
def asked(monkeypatch) -> list[set[str]]:
    """The stages each of DVC's verdict passes was asked about (the real pass, counted)."""
    from lauf_dvc.dvc import project as project_module

    calls: list[set[str]] = []
    real = project_module._verdicts_locked

    def counting(repo, stages, only):
        calls.append(set(only or ()))
        return real(repo, stages, only)

    monkeypatch.setattr(project_module, "_verdicts_locked", counting)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stored_verdicts_agree_with_dvc_status(
    dvc_repo, dvctools, monkeypatch, tmp_path, seed, asked
) -> None:
    """Over random edits (the cache too), the stored verdicts say what `dvc status` says,
    for `lauf-dvc status` (prefetched) and for a sync (``dvc_verdicts``) alike."""
    import random

    from test_fingerprinters import EDITS
    from test_fingerprinters import FILES as PIPELINE

    from lauf_dvc.dvc import project as project_module
    from lauf_dvc.dvc.status import verdictcache

    # no 2 s distrust of fresh files here, so that the stored verdicts are used at once
    monkeypatch.setattr(pipecache, "RACY", 0.0)
    monkeypatch.setattr(verdictcache, "RACY", 0.0)
    root = dvc_repo(PIPELINE)
    dvctools.reproduce(root)
    kept = tmp_path / "objects"
    kept.mkdir()

    def drop_object(root: Path, rng: random.Random) -> str:
        objects = sorted((root / ".dvc/cache/files").rglob("*"))
        objects = [o for o in objects if o.is_file()]
        if not objects:
            return "no object to drop"
        gone = rng.choice(objects)
        gone.chmod(0o644)
        gone.rename(kept / str(gone.relative_to(root)).replace("/", "%"))
        return f"rm cache {gone.name}"

    def restore_objects(root: Path, rng: random.Random) -> str:
        for back in kept.iterdir():  # the same bytes, a new inode
            (root / back.name.replace("%", "/")).write_bytes(back.read_bytes())
            back.unlink()
        return "restore cache"

    edits = [*EDITS, drop_object, drop_object, restore_objects]
    rng = random.Random(seed)
    history: list[str] = []
    from_store = 0
    for _step in range(12):
        history.append(rng.choice(edits)(root, rng))
        expected = set(dvctools.dvc_status(root))
        for attempt in range(3):  # the first may ask DVC; the others find it stored
            asked.clear()
            if attempt == 1:  # as `lauf-dvc status` reads them
                verdicts = open_project(start=root, prefetch_verdicts=True)._prefetched
            else:  # as the sync of `repro` and `worker` reads them
                verdicts = project_module.dvc_verdicts(open_project(start=root))
            assert verdicts is not None
            got = {a for a, v in verdicts.items() if v.changed}
            assert got == expected, (history, attempt)
            from_store += attempt > 0 and not asked
        if rng.random() < 0.3:
            dvctools.reproduce(root)
            history.append("repro")
    assert from_store >= 10, history  # the store was really used (a future mtime is not)


def test_repro_takes_stored_verdicts_while_the_cache_holds(twins, dvctools) -> None:
    """An unchanged pipeline's `repro` asks DVC nothing (the stored verdicts hold); an
    output whose object left the cache runs again, as `dvc repro` runs it."""
    from pipelines import MARK, dvc_yaml, stage
    from repro_helpers import assert_like_dvc_repro, lauf, reference

    from lauf_dvc.dvc.status import verdictcache

    files = {"mark.py": MARK, "data.txt": "data\n", "dvc.yaml": dvc_yaml({
        "one": stage("one.txt", "data.txt"), "two": stage("two.txt", "one.txt")})}  # fmt: skip
    a, b = twins(files)
    for root in (a, b):
        dvctools.reproduce(root)
    time.sleep(pipecache.RACY + 0.1)  # the files age past the distrust of fresh ones
    stored = a / LAUF_DIR / verdictcache.FILE
    first = lauf(a, "repro", "-j", "2")  # asks DVC and stores its answer
    assert first.summary[:2] == (2, 0) and not first.ran
    assert set(json.loads(stored.read_text())["stages"]) == {"one", "two"}
    before = pipecache.file_stat(stored)
    again = lauf(a, "repro", "-j", "2")
    assert again.summary[:2] == (2, 0) and not again.ran
    assert pipecache.file_stat(stored) == before  # nothing asked, so nothing stored anew

    for root in (a, b):  # the object of one.txt leaves the cache
        md5 = dvctools.read_locks(root)["dvc.lock"]["stages"]["one"]["outs"][0]["md5"]
        (root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()
    ours = lauf(a, "repro", "-j", "2")
    theirs = reference(b, dvctools)
    assert ours.code == 0, ours.err
    assert "one" in theirs and set(ours.ran) == theirs
    assert_like_dvc_repro(a, b, dvctools)


def test_a_full_load_drops_the_stored_verdicts(repo: Path) -> None:
    """Verdicts are keyed on what lauf loads of a stage, not on every setting DVC reads
    (an output's `cache`, `persist`): a full load (dvc.yaml changed) forgets them all."""
    from lauf_dvc.dvc.status import verdictcache

    open_project(start=repo, prefetch_verdicts=True)  # from the snapshot: stores verdicts
    assert (repo / LAUF_DIR / verdictcache.FILE).exists()
    text = (
        (repo / "dvc.yaml").read_text().replace("outs: [b.txt]", "outs: [{b.txt: {persist: true}}]")
    )
    (repo / "dvc.yaml").write_text(text)
    open_project(start=repo)  # e.g. `lauf-dvc repro --dry`: a full load, no verdicts asked
    assert not (repo / LAUF_DIR / verdictcache.FILE).exists()


def test_verdicts_stored_under_another_snapshot_are_not_used(
    repo: Path, monkeypatch, asked
) -> None:
    """A status still running on the old pipeline may store its verdicts after a full
    load replaced the snapshot: they name the snapshot they were computed under, and no
    other takes them."""
    from lauf_dvc.dvc import project as project_module
    from lauf_dvc.dvc.status import verdictcache

    monkeypatch.setattr(verdictcache, "RACY", 0.0)
    open_project(start=repo, prefetch_verdicts=True)  # stores verdicts under the snapshot
    stored = repo / LAUF_DIR / verdictcache.FILE
    late = stored.read_text()
    asked.clear()
    project_module.dvc_verdicts(open_project(start=repo))
    assert asked == []  # the same snapshot: stored verdicts are used
    (repo / LAUF_DIR / pipecache.FILE).unlink()
    _age(repo)
    open_project(start=repo)  # a full load: a new snapshot, the stored verdicts dropped
    assert not stored.exists()
    stored.write_text(late)  # the late writer
    project_module.dvc_verdicts(open_project(start=repo))
    assert asked == [{"a", "b"}]
