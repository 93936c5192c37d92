"""Every hook a lauf-dvc plugin may implement, grouped by phase.

Implement a hook with ``@hookimpl`` on a function of the same name in a module (or
object) registered under the ``lauf_dvc`` entry-point group; see docs/plugins.md.
An implementation may accept any subset of a hook's arguments, by name.

Notification hooks are called one implementation at a time, after the fact they report
(a state change is committed before anyone hears of it): an implementation that raises
is reported as a warning naming its plugin, the others are still called, and lauf's
state is unaffected. Their return value is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo
    from lauf_dvc.fingerprint import Fingerprinter

PROJECT = "lauf_dvc"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- fingerprinting ----------------------------------------------------------------------


@hookspec
def lauf_fingerprinters() -> Sequence[Fingerprinter] | None:
    """Register fingerprinters: return the ones this plugin provides.

    Called once each time lauf needs the set of available fingerprinters (when a sync
    or a worker starts, and by ``lauf-dvc plugins``); keep it cheap. Each returned
    object has a ``name`` users select it by, a ``version``, and a
    ``fingerprint(stage, ctx)`` method (:class:`lauf_dvc.fingerprint.Fingerprinter`).
    Two plugins providing the same name is an error.

    Returning ``None`` (or an empty list) means this plugin provides none.
    """


# -- notifications: scheduler ------------------------------------------------------------


@hookspec
def lauf_task_state_changed(
    task_id: str,
    old: str | None,
    new: str,
    reason: str | None,
    worker: str | None,
    fingerprint: str | None,
) -> None:
    """A task changed state; called once per transition, after it was committed.

    ``old`` and ``new`` are state names (``"pending"``, ``"running"``, ``"completed"``,
    ``"failed"``, ``"killed"``, ``"invalidated"``, ``"upstream_failed"``; ``old`` is
    ``None`` when the task was created). ``reason`` is the human reason recorded with
    the event, ``worker`` the worker that made the change (``None`` for a sync),
    ``fingerprint`` the stored fingerprint text, if any.

    The return value is ignored (``None`` is expected).
    """


@hookspec
def lauf_pipeline_synced(invalidated: Mapping[str, str], root: Path) -> None:
    """A sync finished: the pipeline was loaded and every stale stage invalidated.

    ``invalidated`` maps each stage address invalidated by this sync to its reason
    (``"params.yaml:train.lr 0.1 -> 0.01"``, ``"upstream train changed"``); empty when
    nothing changed. ``root`` is the repository root. Called once per sync, by the
    process that ran it.

    The return value is ignored (``None`` is expected).
    """


# -- notifications: stages ---------------------------------------------------------------


@hookspec
def lauf_stage_started(stage: StageInfo, worker: str) -> None:
    """A worker claimed ``stage`` and is about to run its command (in that worker's process).

    The return value is ignored (``None`` is expected).
    """


@hookspec
def lauf_stage_finished(
    stage: StageInfo,
    outcome: str,
    duration: float,
    exit_code: int | None,
    worker: str,
) -> None:
    """A worker is done with ``stage``: called after its outcome was recorded.

    ``outcome`` is ``"ran"`` (command succeeded, outputs committed), ``"skipped"``
    (up to date: early cutoff) or ``"failed"``; ``duration`` is in seconds, ``exit_code``
    the command's (``None`` when it did not run or lauf failed before running it).

    The return value is ignored (``None`` is expected).
    """


#: Hooks whose implementations are called one by one, failures reported and ignored.
NOTIFICATION_HOOKS = (
    "lauf_task_state_changed",
    "lauf_pipeline_synced",
    "lauf_stage_started",
    "lauf_stage_finished",
)
