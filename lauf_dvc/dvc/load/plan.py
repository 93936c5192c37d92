"""What ``dvc repro [options] [targets]`` means: which stages, and how each is reproduced.

The options are DVC's own, with DVC's names and defaults (dvc/commands/repro.py,
dvc/repo/reproduce.py). Which stages a run considers is decided by DVC's planning
itself (:func:`steps`), so ``-s``, ``-p``, ``-P``, ``-R``, ``--downstream`` and
``--glob`` mean exactly what they mean to ``dvc repro``; how one stage is reproduced
(:class:`StageOptions`) travels to every worker, on the command line of a spawned one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lauf_dvc.errors import ConfigError

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

#: ``on_error`` of ``Repo.reproduce`` -> the scheduler's failure policy.
ON_ERROR = {"fail": "stop", "keep-going": "continue", "ignore": "ignore"}


@dataclass(frozen=True)
class Selection:
    """Which stages: ``Repo.reproduce``'s targets and the options that widen or narrow them.

    ``targets`` are as the user typed them, relative to ``cwd`` (DVC's rule); none means
    the ``dvc.yaml`` in ``cwd``. ``cwd`` None: the process's working directory.
    """

    targets: tuple[str, ...] = ()
    recursive: bool = False
    glob: bool = False
    single_item: bool = False
    pipeline: bool = False
    all_pipelines: bool = False
    downstream: bool = False
    cwd: str | None = None

    def normalized(self) -> Selection:
        """As ``Repo.reproduce`` reads its flags: ``-p``/``-P`` override ``-s``/``--downstream``."""
        if self.all_pipelines or self.pipeline:
            return replace(self, single_item=False, downstream=False)
        return self


@dataclass(frozen=True)
class StageOptions:
    """How each selected stage is reproduced: the keyword arguments ``Repo.reproduce``
    hands to ``Stage.reproduce``, plus ``force_downstream`` (which forces a stage once
    one of its upstream stages was reproduced in this run, i.e. after ``since``)."""

    force: bool = False
    force_downstream: bool = False
    pull: bool = False
    allow_missing: bool = False
    no_commit: bool = False
    run_cache: bool = True
    since: float | None = None  # when the run began (time.time()); force_downstream needs it

    def argv(self) -> list[str]:
        """These options as ``lauf-dvc worker`` flags (see :func:`from_flags`)."""
        flags = ("force", "force_downstream", "pull", "allow_missing", "no_commit")
        out = [f"--{name.replace('_', '-')}" for name in flags if getattr(self, name)]
        if not self.run_cache:
            out.append("--no-run-cache")
        if self.since is not None:
            out += ["--since", repr(self.since)]
        return out


def from_flags(args: Any) -> StageOptions:
    """The :class:`StageOptions` an argparse namespace of ``repro``/``worker`` names."""
    return StageOptions(
        force=bool(getattr(args, "force", False)),
        force_downstream=bool(getattr(args, "force_downstream", False)),
        pull=bool(getattr(args, "pull", False)),
        allow_missing=bool(getattr(args, "allow_missing", False)),
        no_commit=bool(getattr(args, "no_commit", False)),
        run_cache=not getattr(args, "no_run_cache", False),
        since=getattr(args, "since", None),
    )


def check_on_error(on_error: str | None) -> str:
    value = on_error or "fail"
    if value not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    return value


def targets_list(targets: str | Iterable[str] | None) -> tuple[str, ...]:
    """``Repo.reproduce`` takes one target, a list of them, or None."""
    if targets is None:
        return ()
    if isinstance(targets, str):
        return (targets,)
    return tuple(targets)


def steps(repo: Repo, selection: Selection) -> list[Stage]:
    """The stages ``dvc repro`` would consider, in DVC's evaluation order.

    This is the first half of ``Repo.reproduce`` (dvc/repo/reproduce.py), made of DVC's
    own functions: collect the targets (relative to ``selection.cwd``, the default
    ``dvc.yaml`` included), then, unless ``single_item``, everything DVC's active graph
    (frozen stages cut off from their upstream) puts before them, or after them with
    ``downstream``, or their whole pipelines with ``pipeline``; every stage with
    ``all_pipelines``. The caller holds the repository lock. DVC's exceptions
    (unknown stage, missing file, cycle, overlapping outputs) propagate unchanged.
    """
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    sel = selection.normalized()
    stages: list[Stage] = []
    if not sel.all_pipelines:
        with contextlib.chdir(sel.cwd or os.getcwd()):  # DVC resolves targets in the cwd
            for target in sel.targets or [PROJECT_FILE]:
                try:
                    stages += collect_stages(repo, [target], recursive=sel.recursive,
                                             glob=sel.glob)  # fmt: skip
                except Exception as exc:  # still DVC's exception; the message may name it
                    exc.lauf_target = target if sel.targets else None  # type: ignore[attr-defined]
                    exc.lauf_cwd = os.getcwd()  # type: ignore[attr-defined]
                    raise
        stages = list(dict.fromkeys(stages))  # collect_stages's ldistinct, across targets
    if sel.single_item:
        return stages
    graph = get_active_graph(repo.index.graph)
    return list(plan_repro(graph, stages, pipeline=sel.pipeline, downstream=sel.downstream))


def single_item_order(graph: Any, stages: list[Stage]) -> dict[Stage, list[Stage]]:
    """For ``-s``: each stage, and the earlier targets it must wait for. DVC runs the
    targets one by one in the order given, whatever their dependencies; lauf keeps
    that order between targets connected in the graph (one reads what the other
    writes) and runs unconnected ones in parallel."""
    import networkx as nx

    out: dict[Stage, list[Stage]] = {}
    for i, stage in enumerate(stages):
        out[stage] = [
            earlier
            for earlier in stages[:i]
            if earlier in graph
            and stage in graph
            and (nx.has_path(graph, stage, earlier) or nx.has_path(graph, earlier, stage))
        ]
    return out


def upstream_of(repo: Repo, stage: Stage) -> list[Stage]:
    """The stages ``stage`` depends on directly in DVC's active graph (what
    ``Repo.reproduce`` passes ``Stage.reproduce`` as ``upstream``: ``--allow-missing``
    compares a missing dependency with what its producer recorded)."""
    from dvc.repo.reproduce import get_active_graph

    graph = get_active_graph(repo.index.graph)
    return list(graph.successors(stage)) if stage in graph else []
