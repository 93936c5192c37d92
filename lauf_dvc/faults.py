"""Fault injection for crash tests: a worker that SIGKILLs itself at a named instant.

``LAUF_DVC_FAULT=<point>[@<stage address>][,...]`` arms points; when a worker reaches an
armed point (for that stage, if one is named) it sends itself SIGKILL: no ``finally``,
no atexit, exactly what an OOM kill or a vanished node does. With
``LAUF_DVC_FAULT_ONCE=<directory>`` each armed item fires at most once across all
processes (a marker file named after the item, created with ``O_EXCL``, holds the pid
that died), so the worker that retries the stage runs through.

Both are read when a point is reached (``lauf_dvc.config.read_setting``); unset,
:func:`fault` costs one environment lookup. The points, in the order a stage
meets them (see :mod:`lauf_dvc.dvc.run.runner`):

``before-command``  path locks held, outputs removed, the command not started
``during-command``  the command has written its first output and is still running
``before-commit``   the command succeeded, DVC's repository lock taken, nothing saved
``during-save``     the first output committed to the cache, the others not, no dvc.lock
``during-dump``     part of the new dvc.lock written (to a temporary file: see
                    :mod:`lauf_dvc.dvc.commit.atomic`), not yet in place; armed for a
                    stage, its worker posts its group-commit record only once it holds
                    DVC's lock, so that its own rewrite is the one that dies (else
                    another holder may write the entry first, and the point is never met)
``after-dump``      the dvc.lock entry in place, the task not yet completed in the database

and, not at a stage, ``worker-crash``: a worker has registered and claimed nothing; it
raises an exception there instead of dying (a bug, or a broken environment: what a
worker that crashes looks like to ``repro``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lauf_dvc.config import read_setting
from lauf_dvc.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "LAUF_DVC_FAULT"
POINTS = (
    "before-command",
    "during-command",
    "before-commit",
    "during-save",
    "during-dump",
    "after-dump",
    "worker-crash",
)


def fault(point: str, address: str | None = None) -> None:
    """Die here (SIGKILL) if ``point`` is armed for ``address``; else return at once."""
    item = _armed_item(point, address)
    if item is None or not _first_time(item):
        return
    if point == "worker-crash":
        raise RuntimeError(f"fault injection: {point} in pid {os.getpid()}")
    log.warning("fault injection: %s at stage %s: killing pid %d", point, address, os.getpid())
    os.kill(os.getpid(), signal.SIGKILL)


def armed(point: str, address: str | None = None) -> bool:
    """Whether :func:`fault` may fire at ``point`` for ``address`` (for setting up a point)."""
    return _armed_item(point, address) is not None


@contextmanager
def after_call(obj: Any, method: str, point: str, address: str | None) -> Iterator[None]:
    """Fire ``point`` right after the first call of ``obj.method`` inside the block.

    For instants inside DVC's own loops (``during-save``: after one output's commit);
    unarmed, nothing is wrapped.
    """
    if obj is None or not armed(point, address):
        yield
        return
    original = getattr(obj, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        fault(point, address)
        return result

    setattr(obj, method, wrapper)
    try:
        yield
    finally:
        delattr(obj, method)  # the class's method shows through again


def _armed_item(point: str, address: str | None) -> str | None:
    spec: str | None = read_setting("fault")
    if not spec:
        return None
    for item in (i.strip() for i in spec.split(",")):
        name, _, stage = item.partition("@")
        if name not in POINTS:
            raise ConfigError(
                f"environment variable {ENV}: unknown fault point {name!r} "
                f"(known: {', '.join(POINTS)})"
            )
        if name == point and (not stage or stage == address):
            return item
    return None


def _first_time(item: str) -> bool:
    """Without LAUF_DVC_FAULT_ONCE always; with it, only for the first process to get here."""
    once: str | None = read_setting("fault_once")
    if not once:
        return True
    marker = Path(once) / quote(item, safe="")
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True
