"""lauf_dvc.dvc.commit.gitignore answers "is this path git-ignored?" as scmrepo (dulwich)
does, on real git repositories: every answer it gives is scmrepo's, and it gives one
wherever no negated pattern or other unusual case says otherwise."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from scmrepo.git import Git

from lauf_dvc.dvc.commit.gitignore import FastIgnores, _is_literal, _split

POOL = [
    "/a.txt", "/out", "/sub/deep.bin", "*.log", "build/", "/data/raw/", "**/tmp",
    "sub/*.csv", "# a comment", "", "   ", "/with space.txt", "/x\\[1\\].txt", "/b.txt\r",
    "/dir/", "nested", "/c*", "/d?.txt", "/out2  ", "/e.txt",
]  # fmt: skip
TREE = [
    "a.txt", "b.txt", "c1.txt", "d1.txt", "e.txt", "out/f.txt", "out/g/h.txt", "sub/deep.bin",
    "sub/x.csv", "sub/nested/z.txt", "data/raw/r.txt", "dir/q.txt", "tmp/t.txt",
    "sub/tmp/u.txt", "x[1].txt", "with space.txt", "build/o.o", "p.log", "sub/p.log",
    "out2/k.txt",
]  # fmt: skip


def _git_repo(root: Path) -> Git:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    for rel in TREE:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    return Git(str(root))


def _candidates(root: Path) -> list[str]:
    paths = set()
    for rel in TREE:
        parts = rel.split("/")
        for n in range(1, len(parts) + 1):
            paths.add(str(root / "/".join(parts[:n])))
    return sorted(paths)


def _compare(scm: Git, root: Path) -> tuple[int, int]:
    """Every answer FastIgnores gives equals scmrepo's; (answered, asked)."""
    fast = FastIgnores(scm)
    answered = 0
    paths = _candidates(root)
    for path in paths:
        scm._reset()  # a fresh dulwich manager, as DVC has after each lock
        expected = scm.is_ignored(path)
        got = fast.is_ignored(path)
        if got is not None:
            answered += 1
            assert got == expected, (path, got, expected, _files(root))
    return answered, len(paths)


def _files(root: Path) -> dict[str, str]:
    found = {}
    for p in root.rglob(".gitignore"):
        found[str(p.relative_to(root))] = p.read_text()
    exclude = root / ".git" / "info" / "exclude"
    if exclude.exists():
        found["info/exclude"] = exclude.read_text()
    return found


def test_literal_lines_are_those_dvc_writes() -> None:
    assert _is_literal(b"/a.txt") and _is_literal(b"/sub/deep.bin")
    for line in [b"/", b"/dir/", b"a.txt", b"/c*", b"/x\\[1\\].txt", b"/with space.txt",
                 b"/b.txt\r", b"!/a.txt", b"/a//b", b"/a/../b", b"/./a"]:  # fmt: skip
        assert not _is_literal(line), line
    literals, others = _split(b"/a\n*.log\n\n# c\n/b/c\n")
    assert literals == {b"a", b"b/c"} and others == (b"*.log", b"# c")


@pytest.mark.parametrize("seed", range(40))
def test_answers_equal_scmrepos(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "repo"
    scm = _git_repo(root)
    negated = False
    for folder in ["", "sub", "out", "sub/nested"]:
        lines = rng.sample(POOL, rng.randint(0, 8))
        if seed % 5 == 0 and folder == "sub":  # some repositories re-include something
            lines.append("!x.csv")
            negated = True
        if lines or rng.random() < 0.5:
            (root / folder / ".gitignore").write_text("\n".join(lines) + "\n")
    if seed % 7 == 3:
        (root / ".git" / "info").mkdir(exist_ok=True)
        (root / ".git" / "info" / "exclude").write_text("*.bin\n")
    answered, asked = _compare(scm, root)
    if not negated:
        assert answered == asked  # the fast path answers everything it may


def test_a_negated_pattern_is_left_to_scmrepo(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    scm = _git_repo(root)
    (root / ".gitignore").write_text("/a.txt\n*.log\n!p.log\n")
    fast = FastIgnores(scm)
    assert fast.is_ignored(str(root / "p.log")) is None
    assert fast.is_ignored(str(root / "a.txt")) is True  # a listed literal: git ignores it
    assert scm.is_ignored(str(root / "p.log")) is False


def test_a_symlinked_gitignore_is_left_to_scmrepo(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    scm = _git_repo(root)
    (root / "elsewhere").write_text("/a.txt\n")
    os.symlink(root / "elsewhere", root / ".gitignore")
    assert FastIgnores(scm).is_ignored(str(root / "a.txt")) is None


def test_dvcs_own_lines_are_not_compiled(tmp_path: Path) -> None:
    """A folder of 2000 outputs DVC listed: answered from the set, the one user line
    compiled alone."""
    root = tmp_path / "repo"
    scm = _git_repo(root)
    lines = [f"/o{i}.txt" for i in range(2000)] + ["*.log"]
    (root / "out" / ".gitignore").write_text("\n".join(lines) + "\n")
    fast = FastIgnores(scm)
    assert fast.is_ignored(str(root / "out" / "o1999.txt")) is True
    assert fast.is_ignored(str(root / "out" / "new.txt")) is False
    assert fast.is_ignored(str(root / "out" / "x.log")) is True
    assert [p.pattern for p in fast._filters[(b"*.log",)].patterns] == [b"*.log"]
    for path in ["out/o5.txt", "out/new.txt", "out/x.log", "out/f.txt"]:
        scm._reset()
        assert fast.is_ignored(str(root / path)) == scm.is_ignored(str(root / path)), path


def test_lines_added_or_changed_are_seen(tmp_path: Path) -> None:
    """A .gitignore DVC appended to is split again from where it was read last; one
    rewritten otherwise, whole: the answers follow either way."""
    root = tmp_path / "repo"
    scm = _git_repo(root)
    gitignore = root / "out" / ".gitignore"
    gitignore.write_text("/f.txt\n")
    path = str(root / "out" / "new.txt")
    assert FastIgnores(scm).is_ignored(path) is False
    with gitignore.open("a") as f:
        f.write("/new.txt\n")
    assert FastIgnores(scm).is_ignored(path) is True
    gitignore.write_text("*.csv\n")  # not an append
    assert FastIgnores(scm).is_ignored(path) is False
    gitignore.write_text("*.csv\n*.txt\n")  # a user's pattern appended
    assert FastIgnores(scm).is_ignored(path) is True
    gitignore.write_text("*.csv\n*.txt\n!new.txt\n")  # a negation appended
    assert FastIgnores(scm).is_ignored(path) is None


def test_a_deeper_negation_is_seen_before_a_listed_literal(tmp_path: Path) -> None:
    """git: the deeper .gitignore's ``!x.csv`` re-includes what the root's literal line
    excluded, so this cannot answer from the literal alone."""
    root = tmp_path / "repo"
    scm = _git_repo(root)
    (root / ".gitignore").write_text("/sub/x.csv\n")
    (root / "sub" / ".gitignore").write_text("!x.csv\n")
    path = str(root / "sub" / "x.csv")
    assert FastIgnores(scm).is_ignored(path) is None
    assert scm.is_ignored(path) is False
