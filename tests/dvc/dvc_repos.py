"""Real DVC repositories in tmp_path (git init + dvc init), and ways to look at them.

Importable as ``dvc_repos`` from any test module below tests/dvc (a plain module, not
the conftest: with several conftest.py files in the tree, ``import conftest`` finds
whichever was imported first).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cli_helpers import dvc_status  # noqa: F401  (one definition, for both helper sets)

DVC_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "lauf test",
    "GIT_AUTHOR_EMAIL": "lauf@example.invalid",
    "GIT_COMMITTER_NAME": "lauf test",
    "GIT_COMMITTER_EMAIL": "lauf@example.invalid",
}
SKIP_DIRS = {".git", ".dvc"}


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def write_files(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def init_repo(root: Path, files: Mapping[str, str], add: Sequence[str] = ()) -> Path:
    """git init + dvc init in ``root``, write ``files``, ``dvc add`` ``add``, commit."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    git(root, "config", "user.name", DVC_ENV["GIT_AUTHOR_NAME"])
    git(root, "config", "user.email", DVC_ENV["GIT_AUTHOR_EMAIL"])
    with Repo.init(str(root)) as repo:
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["autostage"] = False
        write_files(root, files)
        for path in add:
            repo.add(str(root / path))
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def reproduce(root: Path, **kwargs: Any) -> list[str]:
    """``dvc repro`` in-process, from the root (where a user runs it); the stages it ran.

    Without targets: every pipeline (``--all-pipelines``), which is what lauf runs.
    """
    from dvc.repo import Repo

    if "targets" not in kwargs:
        kwargs["all_pipelines"] = True
    old = os.getcwd()
    os.chdir(root)
    try:
        with Repo(str(root)) as repo:
            return [s.addressing for s in repo.reproduce(**kwargs)]
    finally:
        os.chdir(old)


def read_locks(root: Path) -> dict[str, Any]:
    """Every dvc.lock below ``root``, parsed: {relative path: content}."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    return {
        path.relative_to(root).as_posix(): yaml.load(path.read_text())
        for path in sorted(_walk(root))
        if path.name == "dvc.lock"
    }


def cache_files(root: Path) -> set[str]:
    """Every file in the DVC cache (objects and run cache), relative to the cache dir."""
    cache = root / ".dvc" / "cache"
    return {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}


def gitignores(root: Path) -> dict[str, set[str]]:
    return {
        p.relative_to(root).as_posix(): set(p.read_text().splitlines())
        for p in _walk(root)
        if p.name == ".gitignore"
    }


def workspace_files(root: Path) -> dict[str, bytes]:
    """Every file outside .git/.dvc (and not a dvc.lock/.gitignore), with its content."""
    skip = {"dvc.lock", ".gitignore"}
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in _walk(root) if p.name not in skip
    }


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            yield Path(dirpath) / name
