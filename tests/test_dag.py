"""``lauf-dvc dag``'s three forms on hand-made graphs whose names need care (``@``,
``:``, ``/``, ``-``, quotes, Mermaid keywords, names equal once sanitised), read back
by the strict readers of graph_syntax.py (which the real-pipeline test uses too)."""

from __future__ import annotations

import pytest
from graph_syntax import parse_dot, parse_mermaid

from lauf_dvc import dag

STAGES = [
    ("end", ()),  # a Mermaid keyword as a stage name
    ("gen@a-1", ("end",)),
    ("gen@a_1", ("end",)),  # the same as gen@a-1 once sanitised
    ("sub/dvc.yaml:post", ("gen@a-1", "gen@a_1")),
    ('odd "name" #1 <x>', ("sub/dvc.yaml:post",)),
    ("elsewhere", ("not-selected",)),  # a dependency outside the graph is dropped
]
STATES = {
    "end": ("completed", "early cutoff: up to date"),
    "gen@a-1": ("failed", 'exit code 3 "bad" <x>'),
    "gen@a_1": ("running", None),
    "sub/dvc.yaml:post": ("upstream_failed", "upstream gen@a-1 failed"),
}
EXPECTED = {
    "end": "completed",  # no reason beside a state that needs none
    "gen@a-1": 'failed: exit code 3 "bad" <x>',
    "gen@a_1": "running",
    "sub/dvc.yaml:post": "upstream_failed: upstream gen@a-1 failed",
    'odd "name" #1 <x>': "never run",
    "elsewhere": "never run",
}
EDGES = {("end", "gen@a-1"), ("end", "gen@a_1"), ("gen@a-1", "sub/dvc.yaml:post"),
         ("gen@a_1", "sub/dvc.yaml:post"), ("sub/dvc.yaml:post", 'odd "name" #1 <x>')}  # fmt: skip


@pytest.fixture
def graph() -> list[dag.Node]:
    return dag.nodes(STAGES, STATES)


def test_mermaid_names_every_stage_with_its_state_under_a_safe_unique_id(graph) -> None:
    parsed = parse_mermaid(dag.mermaid(graph))
    labels = {ident: label.split("\n", 1) for ident, label in parsed.labels.items()}
    assert {name: state for name, state in labels.values()} == EXPECTED
    assert len(labels) == len(STAGES)  # gen@a-1 and gen@a_1 got ids of their own
    name_of = {ident: pair[0] for ident, pair in labels.items()}
    assert {(name_of[a], name_of[b]) for a, b in parsed.edges} == EDGES
    assert parsed.classes[next(i for i, n in name_of.items() if n == "gen@a-1")] == "st_failed"


def test_dot_names_every_stage_with_its_state(graph) -> None:
    parsed = parse_dot(dag.dot(graph))
    assert {n: label.split("\n", 1)[1] for n, label in parsed.labels.items()} == EXPECTED
    assert all(label.split("\n", 1)[0] == n for n, label in parsed.labels.items())
    assert set(parsed.edges) == EDGES


def test_the_text_form_is_a_line_per_stage_upstream_first(graph) -> None:
    lines = dag.text(graph).splitlines()
    assert lines[0].split() == ["stage", "state", "after"]
    assert [line.split("  ")[0] for line in lines[1:]] == [name for name, _ in STAGES]
    post = next(line for line in lines if line.startswith("sub/dvc.yaml:post"))
    assert post.split()[1:] == ["upstream_failed:", "upstream", "gen@a-1", "failed",
                                "gen@a-1,", "gen@a_1"]  # fmt: skip
    assert lines[-1].split() == ["elsewhere", "never", "run"]


def test_the_readers_refuse_what_would_not_render() -> None:
    with pytest.raises(ValueError, match="safe Mermaid node id"):
        parse_mermaid('flowchart TD\n    end["x"]')
    with pytest.raises(ValueError, match="undefined"):
        parse_mermaid('flowchart TD\n    a["x"]\n    a --> b')
    with pytest.raises(ValueError, match="not a node"):
        parse_mermaid('flowchart TD\n    a["x "y""]')
    with pytest.raises(ValueError, match="not defined"):
        parse_mermaid('flowchart TD\n    a["x"]:::st_x')
    with pytest.raises(ValueError, match="cannot read"):
        parse_dot('digraph g {\n "a" -> "b;\n}')
    with pytest.raises(ValueError, match="bad attribute"):
        parse_dot('digraph g {\n "a" [label];\n}')
