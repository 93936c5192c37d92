"""A pytest plugin for DVC's own test suite: ``Repo.reproduce`` (which ``dvc repro`` on
the command line calls too) goes to :func:`lauf_dvc.reproduce`, with parallel workers.

Loaded with ``-p lauf_route`` (this folder on ``PYTHONPATH``). With
``LAUF_DVC_ROUTE=1`` it routes; without, it only records. Either way it writes, to the
file ``LAUF_DVC_ROUTE_REPORT`` names, one JSON line per test: its outcome and whether
it called ``Repo.reproduce`` at all (so the summary can tell the tests that exercise
lauf from those that pass whatever ``reproduce`` does).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_calls: list[int] = [0]


def pytest_configure(config: pytest.Config) -> None:
    from dvc.repo import Repo

    original = Repo.reproduce
    routed = os.environ.get("LAUF_DVC_ROUTE") == "1"
    jobs = int(os.environ.get("LAUF_DVC_ROUTE_JOBS", "2"))

    def reproduce(self: Repo, targets: Any = None, **kwargs: Any) -> Any:
        _calls[0] += 1
        if not routed:
            return original(self, targets, **kwargs)
        import lauf_dvc

        return lauf_dvc.reproduce(targets, repo=self, jobs=jobs, **kwargs)

    Repo.reproduce = reproduce  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Any:
    _calls[0] = 0
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    report = outcome.get_result()
    path = os.environ.get("LAUF_DVC_ROUTE_REPORT")
    if not path:
        return
    final = (report.when == "call") or (report.when == "setup" and report.outcome != "passed")
    if report.when == "teardown" and report.outcome == "failed":
        final = True
    if final:
        line = {"test": item.nodeid, "when": report.when, "outcome": report.outcome,
                "reproduce_calls": _calls[0]}  # fmt: skip
        if hasattr(report, "wasxfail"):
            line["xfail"] = True
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
