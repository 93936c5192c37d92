"""Real DVC repositories in tmp_path (git init + dvc init), and ways to look at them.

Fixtures:
- ``dvc_repo(files, name="repo", add=())``: a fresh repository holding ``files``
  ({relative path: text}), ``add`` paths tracked with ``dvc add``, all committed to git.
- ``dvctools``: the helpers of ``dvc_repos`` as attributes (``dvctools.read_locks(root)``...), so
  that test modules need not import this conftest: ``reproduce`` (the reference,
  ``dvc repro`` in-process from the root), ``write_files``, ``read_locks``,
  ``dvc_status``, ``cache_files``, ``gitignores``, ``workspace_files``, ``git``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from dvc_repos import (
    DVC_ENV,
    cache_files,
    dvc_status,
    git,
    gitignores,
    init_repo,
    read_locks,
    reproduce,
    workspace_files,
    write_files,
)


@pytest.fixture(autouse=True)
def _isolated_dvc(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No analytics, no user/global DVC config, DVC's state DB under this test's tmp dir.

    Set in os.environ so that worker processes started by a test inherit it.
    """
    base = tmp_path_factory.mktemp("dvc-home")
    for key, value in DVC_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(base / "global"))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(base / "system"))
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(base / "site"))
    monkeypatch.setenv("SHELL", "/bin/bash")


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Callable[..., Path]:
    def make(files: Mapping[str, str], name: str = "repo", add: Sequence[str] = ()) -> Path:
        return init_repo(tmp_path / name, files, add)

    return make


@pytest.fixture
def twins(dvc_repo) -> Callable[[dict[str, str]], tuple[Path, Path]]:
    """Two identical fresh repositories: one for lauf, one for `dvc repro`."""
    return lambda files: (dvc_repo(files, name="lauf"), dvc_repo(files, name="dvc"))


@pytest.fixture
def dvctools() -> SimpleNamespace:
    return SimpleNamespace(
        reproduce=reproduce,
        write_files=write_files,
        read_locks=read_locks,
        dvc_status=dvc_status,
        cache_files=cache_files,
        gitignores=gitignores,
        workspace_files=workspace_files,
        git=git,
    )
