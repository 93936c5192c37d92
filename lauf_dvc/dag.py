"""``lauf-dvc dag``: the pipeline's graph with each stage's state, as text (a line per
stage, upstream first, with what it depends on), a Mermaid ``flowchart`` or Graphviz dot.

Pure functions of the stages and their states; ``cli.py`` reads them and prints.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The state of a stage no run has recorded.
NEVER_RUN = "never run"
#: States whose stored reason the graph shows beside them (why it is not done).
EXPLAINED = frozenset({"failed", "killed", "upstream_failed"})
COLOURS = {"completed": "#b2f2bb", "running": "#d0bfff", "pending": "#e9ecef",
           "invalidated": "#ffec99", "failed": "#ffa8a8", "killed": "#ffc078",
           "upstream_failed": "#ffd8a8", NEVER_RUN: "#ffffff"}  # fmt: skip


@dataclass(frozen=True)
class Node:
    """One stage: its address, what it depends on (addresses), its state and, for a
    failure, why."""

    stage: str
    upstream: tuple[str, ...]
    state: str = NEVER_RUN
    reason: str | None = None

    @property
    def label(self) -> str:
        """``state`` or ``state: reason`` (failures only)."""
        if self.state in EXPLAINED and self.reason:
            return f"{self.state}: {self.reason}"
        return self.state


def nodes(
    stages: Sequence[tuple[str, Sequence[str]]], states: Mapping[str, tuple[str, str | None]]
) -> list[Node]:
    """``stages``: ``(address, upstream)`` in pipeline order; ``states``: ``{address:
    (state, reason)}`` from the database. Dependencies outside ``stages`` are dropped."""
    known = {address for address, _ in stages}
    out = []
    for address, upstream in stages:
        state, reason = states.get(address, (NEVER_RUN, None))
        out.append(Node(address, tuple(u for u in upstream if u in known), state, reason))
    return out


def text(graph: Sequence[Node]) -> str:
    """One line per stage, upstream first: name, state, what it depends on."""
    if not graph:
        return ""
    w_stage = max(5, *(len(n.stage) for n in graph))
    w_state = max(5, *(len(n.label) for n in graph))
    lines = [f"{'stage':<{w_stage}}  {'state':<{w_state}}  after"]
    for n in graph:
        lines.append(f"{n.stage:<{w_stage}}  {n.label:<{w_state}}  {', '.join(n.upstream)}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _ids(graph: Sequence[Node]) -> dict[str, str]:
    """A Mermaid node id per stage: letters, digits and ``_`` only, prefixed (so that no
    id is a keyword such as ``end``), unique."""
    ids: dict[str, str] = {}
    used: set[str] = set()
    for n in graph:
        base = "s_" + re.sub(r"[^A-Za-z0-9_]", "_", n.stage)
        ident, k = base, 1
        while ident in used:
            k += 1
            ident = f"{base}_{k}"
        used.add(ident)
        ids[n.stage] = ident
    return ids


def _mermaid_text(value: str) -> str:
    """Text safe inside a quoted Mermaid label (entity codes for what would end it)."""
    out = value.replace("#", "#35;").replace('"', "#quot;")
    return out.replace("<", "#lt;").replace(">", "#gt;")


def _state_class(state: str) -> str:
    return "st_" + re.sub(r"[^A-Za-z0-9_]", "_", state)


def mermaid(graph: Sequence[Node]) -> str:
    """A Mermaid ``flowchart TD``: a quoted label per stage (name and state), an edge
    from each dependency to what needs it, and a class (colour) per state."""
    ids = _ids(graph)
    lines = ["flowchart TD"]
    for n in graph:
        label = f"{_mermaid_text(n.stage)}<br/>{_mermaid_text(n.label)}"
        lines.append(f'    {ids[n.stage]}["{label}"]:::{_state_class(n.state)}')
    for n in graph:
        lines += [f"    {ids[u]} --> {ids[n.stage]}" for u in n.upstream]
    for state in sorted({n.state for n in graph}):
        colour = COLOURS.get(state, "#ffffff")
        lines.append(f"    classDef {_state_class(state)} fill:{colour},stroke:#495057")
    return "\n".join(lines) + "\n"


def _dot_text(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(graph: Sequence[Node]) -> str:
    """Graphviz ``digraph``: a box per stage labelled with its name and state, filled
    by state, an edge from each dependency to what needs it."""
    lines = ["digraph pipeline {", "    rankdir=TB;",
             '    node [shape=box, style="rounded,filled", fontname="Helvetica"];']  # fmt: skip
    for n in graph:
        colour = COLOURS.get(n.state, "#ffffff")
        label = _dot_text(f"{n.stage}\n{n.label}")
        lines.append(f'    {_dot_text(n.stage)} [label={label}, fillcolor="{colour}"];')
    for n in graph:
        lines += [f"    {_dot_text(u)} -> {_dot_text(n.stage)};" for u in n.upstream]
    lines.append("}")
    return "\n".join(lines) + "\n"
