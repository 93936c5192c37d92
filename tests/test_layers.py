"""The package's layering, from its source: who may import whom (every import, at any
depth: a function-level import is an arrow too), and no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lauf_dvc"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, typing_only: bool) -> set[str]:
    """Every module ``path`` imports, anywhere in it; ``typing_only``: also those under
    ``if TYPE_CHECKING:`` (they are no arrow at run time, but still a dependency)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and "TYPE_CHECKING" in ast.unparse(child.test)
                and not typing_only
            ):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def arrows(*, typing_only: bool) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for name, path in MODULES.items():
        for target in imports(path, typing_only=typing_only):
            if target in MODULES and target != name and not name.startswith(target + "."):
                graph.add_edge(name, target)
    return graph


def importers_of(prefix: str, *, within: str = "lauf_dvc") -> set[str]:
    """Modules under ``within`` that import ``prefix`` or anything below it."""
    return {
        name
        for name, path in MODULES.items()
        if name.startswith(within)
        and any(i == prefix or i.startswith(prefix + ".") for i in imports(path, typing_only=True))
    }


def test_only_the_adapter_imports_dvc() -> None:
    assert {m for m in importers_of("dvc") if not m.startswith("lauf_dvc.dvc")} == set()


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("lauf_dvc.scheduler", "dvc"),
        ("lauf_dvc.scheduler", "lauf_dvc.dvc"),
        ("lauf_dvc.fingerprint", "lauf_dvc.scheduler"),
        ("lauf_dvc.resources", "lauf_dvc.scheduler"),
        ("lauf_dvc.states", "lauf_dvc.scheduler"),
        ("lauf_dvc.errors", "lauf_dvc"),
    ],
)
def test_a_lower_layer_never_imports_a_higher_one(lower, upper) -> None:
    offenders = {m for m in importers_of(upper, within=lower) if not m.startswith(upper)}
    assert offenders == set(), f"{lower} imports {upper}"


def test_no_import_cycles() -> None:
    cycles = list(nx.simple_cycles(arrows(typing_only=False)))
    assert cycles == []


def test_the_checker_sees_function_level_imports() -> None:
    """The graph is not only module-level imports: it would miss cycles hidden in them."""
    assert "lauf_dvc.dvc.load.pipeline" in imports(
        MODULES["lauf_dvc.dvc.status.fingerprinter"], typing_only=False
    )


# lauf_dvc.dvc's parts, lowest first, and the parts each may import (any import, also one
# under TYPE_CHECKING). The seam (compat) and DVC's YAML parser import no other part;
# commit (dvc.lock, atomic writes) needs only them; DVC's locks write their holder notes
# through commit; loading reads dvc.lock entries through commit and takes DVC's lock;
# status and running a stage build on loading, never on each other; the project (the read
# step of staleness) on loading and status; the worker loop, repro and the API on top.
DVC_PARTS: dict[str, set[str]] = {
    "compat": set(),
    "yamlparse": set(),
    "logs": set(),
    "commit": {"compat", "yamlparse"},
    "repolock": {"compat", "commit"},
    "load": {"compat", "yamlparse", "commit", "repolock"},
    "status": {"compat", "commit", "load"},
    "run": {"compat", "commit", "repolock", "load"},
    "project": {"compat", "load", "status"},
    "work": {"compat", "load", "repolock", "run", "project"},
    "repro": {"compat", "load", "run", "project", "work"},
    "api": {"compat", "load", "project", "repro"},
}


def dvc_part(module: str) -> str | None:
    """``lauf_dvc.dvc.load.pipeline`` -> ``load``, ``lauf_dvc.dvc.compat`` -> ``compat``;
    None outside lauf_dvc.dvc and for its ``__init__``."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["lauf_dvc", "dvc"] and len(parts) > 2 else None


def test_every_dvc_module_is_in_a_part_and_the_parts_are_layered() -> None:
    assert {dvc_part(m) for m in MODULES} - {None} == set(DVC_PARTS)
    allowed = nx.DiGraph([(a, b) for a, below in DVC_PARTS.items() for b in below])
    assert nx.is_directed_acyclic_graph(allowed)


@pytest.mark.parametrize("part", list(DVC_PARTS))
def test_a_dvc_part_imports_only_the_parts_below_it(part) -> None:
    graph = arrows(typing_only=True)
    imported = {
        dvc_part(target)
        for module in MODULES
        if dvc_part(module) == part
        for target in graph.successors(module)
    } - {None, part}
    assert imported <= DVC_PARTS[part], f"lauf_dvc.dvc.{part} imports {imported - DVC_PARTS[part]}"


@pytest.mark.parametrize(
    "package", sorted(m for m, p in MODULES.items() if p.name == "__init__.py" and dvc_part(m))
)
def test_a_dvc_subpackage_init_imports_nothing(package) -> None:
    """Callers import the modules by their full names; an ``__init__`` that imported its
    modules would make every import of one of them an import of all (and invite cycles)."""
    assert imports(MODULES[package], typing_only=True) == set()


@pytest.mark.parametrize("role", ["claims", "transitions", "graphsync"])
def test_the_store_roles_run_inside_a_transaction_they_do_not_open(role) -> None:
    """Claims, state changes and the graph's sync are statements on a connection the
    :class:`Store` hands them: none opens a transaction itself (imports the store or the
    database); a claim may change state (transitions), a state change claims nothing."""
    found = imports(MODULES[f"lauf_dvc.scheduler.{role}"], typing_only=True)
    opened = {"lauf_dvc.scheduler.store", "lauf_dvc.scheduler.database"}
    assert not {i for i in found if i in opened or i.rsplit(".", 1)[0] in opened}
    if role == "transitions":
        assert not {
            i
            for i in found
            if i.startswith(("lauf_dvc.scheduler.claims", "lauf_dvc.scheduler.graphsync"))
        }


def test_the_store_holds_a_database_rather_than_being_one(tmp_path) -> None:
    from lauf_dvc.scheduler.database import Database
    from lauf_dvc.scheduler.store import Store

    assert not issubclass(Store, Database)
    assert isinstance(Store(f"sqlite:///{tmp_path}/s.sqlite").db, Database)
