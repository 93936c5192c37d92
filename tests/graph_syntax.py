"""Readers for what ``lauf-dvc dag`` writes, strict enough to reject what Mermaid or
Graphviz would: a small dot parser (the grammar's statements, quoted and bare ids, attr
lists) and a structural check of a Mermaid ``flowchart``. Each returns the nodes with
their labels and the edges, or raises ``ValueError`` naming the line or token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Words Mermaid's flowchart grammar reads as keywords, not as node ids.
MERMAID_KEYWORDS = {"end", "graph", "flowchart", "subgraph", "style", "classDef", "class",
                    "click", "linkStyle", "direction"}  # fmt: skip


@dataclass
class Graph:
    labels: dict[str, str] = field(default_factory=dict)  # node id -> label text
    edges: list[tuple[str, str]] = field(default_factory=list)
    classes: dict[str, str] = field(default_factory=dict)  # node id -> class (mermaid)


def _mermaid_unescape(text: str) -> str:
    text = text.replace("#quot;", '"').replace("#lt;", "<").replace("#gt;", ">")
    return re.sub(r"#(\d+);", lambda m: chr(int(m[1])), text)


def parse_mermaid(source: str) -> Graph:
    """A ``flowchart`` of node definitions ``id["label"]:::class``, edges ``a --> b``
    between defined nodes, and ``classDef`` lines for every class used."""
    lines = [line for line in source.splitlines() if line.strip()]
    if not lines or not re.fullmatch(r"flowchart (TD|TB|BT|LR|RL)", lines[0].strip()):
        raise ValueError(f"not a flowchart header: {lines[:1]}")
    graph, defined = Graph(), set()
    node = re.compile(r'(\S+)\["([^"]*)"\](?::::([A-Za-z0-9_]+))?')
    for number, raw in enumerate(lines[1:], 2):
        line = raw.strip()
        if found := node.fullmatch(line):
            ident = _mermaid_id(found[1], number)
            graph.labels[ident] = _mermaid_unescape(found[2].replace("<br/>", "\n"))
            if found[3]:
                graph.classes[ident] = found[3]
        elif found := re.fullmatch(r"(\S+) --> (\S+)", line):
            a, b = _mermaid_id(found[1], number), _mermaid_id(found[2], number)
            if a not in graph.labels or b not in graph.labels:
                raise ValueError(f"line {number}: edge between undefined nodes: {line}")
            graph.edges.append((a, b))
        elif found := re.fullmatch(r"classDef ([A-Za-z0-9_]+) \S+", line):
            defined.add(found[1])
        else:
            raise ValueError(f"line {number}: not a node, an edge or a classDef: {line}")
    if missing := set(graph.classes.values()) - defined:
        raise ValueError(f"classes used but not defined: {sorted(missing)}")
    return graph


def _mermaid_id(ident: str, number: int) -> str:
    if not MERMAID_ID.fullmatch(ident) or ident in MERMAID_KEYWORDS:
        raise ValueError(f"line {number}: not a safe Mermaid node id: {ident!r}")
    return ident


_DOT_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<id>[A-Za-z_\x80-\uffff][\w\x80-\uffff]*'
    r"|-?(?:\.\d+|\d+(?:\.\d*)?))|(?P<op>->|--|[{}\[\]=;,]))",
    re.S,
)


def _dot_tokens(source: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(source.rstrip()):
        found = _DOT_TOKEN.match(source, pos)
        if not found:
            raise ValueError(f"dot: cannot read from {source[pos : pos + 30]!r}")
        kind = found.lastgroup or ""
        text = found[kind]
        if kind == "str":
            text = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], text[1:-1])
        tokens.append((kind, text))
        pos = found.end()
    return tokens


def parse_dot(source: str) -> Graph:
    """``digraph [id] { stmt; ... }`` with node, edge (``->``), attribute and
    ``key=value`` statements; labels from each node's ``label`` attribute."""
    tokens = _dot_tokens(source)
    if tokens[:1] != [("id", "digraph")]:
        raise ValueError("dot: not a digraph")
    i = 2 if tokens[1][0] in ("id", "str") else 1
    if tokens[i] != ("op", "{") or tokens[-1] != ("op", "}"):
        raise ValueError("dot: the statements are not in braces")
    graph, body, k = Graph(), tokens[i + 1 : -1], 0
    while k < len(body):
        k = _dot_statement(body, k, graph)
    return graph


def _dot_statement(body: list[tuple[str, str]], k: int, graph: Graph) -> int:
    kind, text = body[k]
    if kind not in ("id", "str"):
        raise ValueError(f"dot: a statement cannot start with {text!r}")
    if body[k + 1 : k + 2] == [("op", "=")]:
        k += 3  # key = value
    elif kind == "id" and text in ("graph", "node", "edge"):
        k = _dot_attrs(body, k + 1)[1]
    elif body[k + 1 : k + 2] == [("op", "->")]:
        if body[k + 2][0] not in ("id", "str"):
            raise ValueError(f"dot: an edge from {text!r} to {body[k + 2][1]!r}")
        graph.edges.append((text, body[k + 2][1]))
        graph.labels.setdefault(text, text)
        graph.labels.setdefault(body[k + 2][1], body[k + 2][1])
        k = _dot_attrs(body, k + 3)[1]
    else:
        attrs, k = _dot_attrs(body, k + 1)
        graph.labels[text] = attrs.get("label", text)
    if body[k : k + 1] == [("op", ";")]:
        k += 1
    return k


def _dot_attrs(body: list[tuple[str, str]], k: int) -> tuple[dict[str, str], int]:
    attrs: dict[str, str] = {}
    while body[k : k + 1] == [("op", "[")]:
        k += 1
        while body[k] != ("op", "]"):
            key, eq, value = body[k], body[k + 1], body[k + 2]
            if eq != ("op", "=") or key[0] not in ("id", "str") or value[0] not in ("id", "str"):
                raise ValueError(f"dot: a bad attribute at {key[1]!r}")
            attrs[key[1]] = value[1]
            k += 3
            if body[k] == ("op", ","):
                k += 1
        k += 1
    return attrs, k
