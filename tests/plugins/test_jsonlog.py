"""The first-party plugin under plugins/: installed as its own package, found by entry point."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
from plugin_helpers import stage

from lauf_dvc.fingerprint import Fingerprint
from lauf_dvc.plugins import Hooks, describe_plugins


@pytest.fixture(autouse=True)
def _installed() -> None:
    names = {ep.name for ep in importlib.metadata.entry_points(group="lauf_dvc")}
    if "jsonlog" not in names:
        pytest.fail(
            "plugins/lauf-dvc-jsonlog is not installed: run `make venv` (or "
            "`.venv/bin/python -m pip install -e plugins/lauf-dvc-jsonlog`)"
        )


def test_discovered_through_its_entry_point(pm: pluggy.PluginManager) -> None:
    (ep,) = importlib.metadata.entry_points(group="lauf_dvc", name="jsonlog")
    assert ep.dist is not None and ep.dist.name == "lauf-dvc-jsonlog"
    assert pm.get_plugin("jsonlog") is ep.load()
    row = next(r for r in describe_plugins(pm) if r["name"] == "jsonlog")
    assert row == dict(
        name="jsonlog",
        hooks=[
            "lauf_pipeline_synced",
            "lauf_stage_finished",
            "lauf_stage_started",
            "lauf_task_state_changed",
        ],
        source=f"lauf-dvc-jsonlog {ep.dist.version}",
    )


def test_writes_one_json_line_per_event(hooks: Hooks, _plugin_env: Path, tmp_path: Path) -> None:
    fp = Fingerprint("xxhash", "1", {"cmd": "[]"})
    train = stage()
    hooks.task_state_changed("train", "invalidated", "running", "claimed", "w1", fp.to_json())
    hooks.stage_started(train, worker="w1")
    hooks.stage_finished(train, outcome="failed", duration=0.25, exit_code=3, worker="w1")
    hooks.pipeline_synced({"evaluate": "upstream train changed"}, tmp_path)
    assert hooks.failures == {}
    events = [json.loads(line) for line in _plugin_env.read_text().splitlines()]
    for event in events:
        assert event.pop("time").endswith("+00:00") and isinstance(event.pop("pid"), int)
    assert events == [
        dict(event="task_state_changed", task="train", old="invalidated", new="running",
             reason="claimed", worker="w1", fingerprint=fp.digest),
        dict(event="stage_started", stage="train", worker="w1"),
        dict(event="stage_finished", stage="train", outcome="failed", duration=0.25,
             exit_code=3, worker="w1"),
        dict(event="pipeline_synced", invalidated={"evaluate": "upstream train changed"},
             root=str(tmp_path)),
    ]  # fmt: skip


def test_default_log_is_in_the_repository(
    hooks: Hooks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "repo" / ".dvc").mkdir(parents=True)
    (tmp_path / "repo" / "src").mkdir()
    monkeypatch.delenv("LAUF_DVC_JSONLOG")
    monkeypatch.chdir(tmp_path / "repo" / "src")
    hooks.stage_started(stage(), worker="w1")
    log = tmp_path / "repo" / ".dvc" / "tmp" / "lauf" / "events.jsonl"
    assert json.loads(log.read_text())["event"] == "stage_started"


def test_listed_by_the_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lauf_dvc", "plugins", "--json"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["jsonlog"]["source"].startswith("lauf-dvc-jsonlog ")
    assert rows["xxhash"]["fingerprinters"] == ["xxhash@1"]
    assert rows["dvc"]["fingerprinters"] == ["dvc@1"]
