"""lauf-dvc plugin: one JSON line per scheduler event, appended to an event log."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lauf_dvc.hookspecs import hookimpl

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo

ENV = "LAUF_DVC_JSONLOG"
DEFAULT = Path(".dvc") / "tmp" / "lauf" / "events.jsonl"


def log_path(start: Path | None = None) -> Path:
    """``$LAUF_DVC_JSONLOG`` or the default, relative paths taken from the repository root.

    The root is the nearest directory above ``start`` (the cwd) holding ``.dvc``; the
    cwd itself if there is none. Read at every event, never at import.
    """
    path = Path(os.environ.get(ENV) or DEFAULT)
    if path.is_absolute():
        return path
    here = (start or Path.cwd()).resolve()
    root = next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), here)
    return root / path


def write_event(event: str, **fields: Any) -> None:
    """Append one line; one ``write`` with ``O_APPEND``, so the lines of concurrent
    processes on one machine never mix (NFS has no atomic append between machines:
    give each node its own file, docs/plugins.md)."""
    record = {"event": event, **fields, "pid": os.getpid(), "time": _now()}
    line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _short(fingerprint: str | None) -> str | None:
    if fingerprint is None:
        return None
    try:
        from lauf_dvc.fingerprint import Fingerprint

        return Fingerprint.from_json(fingerprint).digest
    except ValueError:
        return fingerprint


@hookimpl
def lauf_task_state_changed(
    task_id: str,
    old: str | None,
    new: str,
    reason: str | None,
    worker: str | None,
    fingerprint: str | None,
) -> None:
    write_event(
        "task_state_changed",
        task=task_id,
        old=old,
        new=new,
        reason=reason,
        worker=worker,
        fingerprint=_short(fingerprint),
    )


@hookimpl
def lauf_stage_started(stage: StageInfo, worker: str) -> None:
    write_event("stage_started", stage=stage.address, worker=worker)


@hookimpl
def lauf_stage_finished(
    stage: StageInfo, outcome: str, duration: float, exit_code: int | None, worker: str
) -> None:
    write_event(
        "stage_finished",
        stage=stage.address,
        outcome=outcome,
        duration=round(duration, 3),
        exit_code=exit_code,
        worker=worker,
    )


@hookimpl
def lauf_pipeline_synced(invalidated: Mapping[str, str], root: Path) -> None:
    write_event("pipeline_synced", invalidated=dict(invalidated), root=str(root))
