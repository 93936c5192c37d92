"""Plugin tests: a fresh plugin manager per test, stages built by hand (no DVC needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest

from lauf_dvc.plugins import Hooks, make_plugin_manager


@pytest.fixture(autouse=True)
def _plugin_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No blocked plugins from the caller's environment; the jsonlog plugin logs here."""
    monkeypatch.delenv("LAUF_DVC_DISABLE_PLUGINS", raising=False)
    log = tmp_path / "events.jsonl"
    monkeypatch.setenv("LAUF_DVC_JSONLOG", str(log))
    return log


@pytest.fixture
def pm() -> Iterator[pluggy.PluginManager]:
    """A fresh manager (built-ins and installed entry points), as lauf-dvc builds it."""
    yield make_plugin_manager()


@pytest.fixture
def hooks(pm: pluggy.PluginManager) -> Hooks:
    return Hooks(pm)
