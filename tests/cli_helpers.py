"""Helpers for the top-level command-line tests: real git + DVC repositories in
``tmp_path``, ``python -m lauf_dvc`` run as a user runs it (a subprocess), and a
snapshot of everything a run must not lose.

``isolated`` is a fixture: import it into a test module (``# noqa: F401``) and use it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DB = Path(".dvc") / "tmp" / "lauf" / "lauf.sqlite"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "lauf test",
    "GIT_AUTHOR_EMAIL": "lauf@example.invalid",
    "GIT_COMMITTER_NAME": "lauf test",
    "GIT_COMMITTER_EMAIL": "lauf@example.invalid",
}


@pytest.fixture
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No analytics, no user or global DVC config, no LAUF_DVC_* from the caller; set in
    os.environ so that every process a test starts inherits it."""
    base = tmp_path_factory.mktemp("dvc-home")
    for key in [k for k in os.environ if k.startswith("LAUF_DVC_")]:
        monkeypatch.delenv(key)
    for key, value in {**GIT_ENV, "DVC_NO_ANALYTICS": "1", "SHELL": "/bin/bash"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(base / "global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(base / "system"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(base / "site"))
    monkeypatch.setenv("LAUF_DVC_JSONLOG", str(base / "events.jsonl"))  # the jsonlog plugin


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout


def make_repo(root: Path, files: Mapping[str, str]) -> Path:
    """``git init`` + ``dvc init`` in ``root``, ``files`` ({path: text}) written, committed."""
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q")
    with Repo.init(str(root)) as repo, repo.config.edit() as conf:
        conf["core"]["analytics"] = False
        conf["core"]["autostage"] = False
    write_files(root, files)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


def write_files(root: Path, files: Mapping[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def lauf(root: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Run:
    """``lauf-dvc ARGS`` in ``root`` (``env`` added to the environment), waited for."""
    proc = subprocess.run(
        [sys.executable, "-m", "lauf_dvc", *args],
        cwd=root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def dvc_status(root: Path) -> dict[str, Any]:
    """``dvc status`` of ``root`` (empty: every stage up to date, every output cached)."""
    from dvc.repo import Repo

    old = os.getcwd()
    os.chdir(root)
    try:
        with Repo(str(root)) as repo:
            return repo.status()
    finally:
        os.chdir(old)


def workspace(root: Path) -> dict[str, bytes]:
    """Every file outside .git and .dvc, with its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in {".git", ".dvc"}]
        for name in filenames:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def db_rows(root: Path) -> dict[str, list[tuple[Any, ...]]] | None:
    """The tasks and events of the repository's SQLite database (None: there is none),
    read without writing to it (no WAL checkpoint, no journal)."""
    path = root / DB
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("lauf_tasks", "lauf_events", "lauf_edges", "lauf_meta")
        }
    finally:
        conn.close()


def snapshot(root: Path) -> dict[str, Any]:
    """What a failed command must leave as it was: the workspace (dvc.lock, outputs,
    .gitignore files), the DVC cache, and the scheduler's tasks and their history."""
    cache = root / ".dvc" / "cache"
    return {
        "workspace": workspace(root),
        "cache": sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()),
        "db": db_rows(root),
    }


def iter_blocks(markdown: str, languages: tuple[str, ...]) -> Iterator[tuple[str, int, list[str]]]:
    """``(language, line number of its first line, lines)`` of every fenced code block
    in one of ``languages``."""
    lang: str | None = None
    start, lines = 0, []
    for number, line in enumerate(markdown.splitlines(), 1):
        fence = line.strip().startswith("```")
        if lang is None and fence:
            lang, start, lines = line.strip()[3:].strip(), number + 1, []
        elif lang is not None and fence:
            if lang in languages:
                yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)
