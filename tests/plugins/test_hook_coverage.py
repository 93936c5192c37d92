"""Every hook spec has a docstring, at least one test, and an entry in docs/plugins.md."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from lauf_dvc import hookspecs

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted(
    name
    for name, obj in vars(hookspecs).items()
    if name.startswith("lauf_") and inspect.isfunction(obj)
)


def test_there_are_hook_specs() -> None:
    assert {"lauf_fingerprinters", "lauf_task_state_changed", "lauf_stage_started",
            "lauf_stage_finished", "lauf_pipeline_synced"} <= set(SPECS)  # fmt: skip


@pytest.mark.parametrize("name", SPECS)
def test_spec_says_when_it_runs_and_what_none_means(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert "None" in doc and len(doc.splitlines()) >= 3, name


@pytest.mark.parametrize("name", SPECS)
def test_spec_has_a_test(name: str) -> None:
    here = Path(__file__).resolve()
    tests = [p for p in (ROOT / "tests").rglob("*.py") if p.resolve() != here]
    assert any(name in p.read_text() for p in tests), f"no test mentions {name}"


@pytest.mark.parametrize("name", SPECS)
def test_spec_is_documented(name: str) -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert f"### `{name}" in docs, f"docs/plugins.md has no section for {name}"
