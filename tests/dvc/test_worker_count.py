"""``repro -j N`` never starts more workers than stages that could run at once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pipelines import MARK, dvc_yaml, fan_out, stage
from repro_helpers import lauf

from lauf_dvc.dvc.repro import at_once

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")


def rows(edges: dict[str, tuple[str, ...]]) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=k, dependencies=v) for k, v in edges.items()]


@pytest.mark.parametrize(
    ("edges", "bound"),
    [
        ({}, 0),
        ({"a": ()}, 1),
        ({"a": (), "b": ("a",), "c": ("b",)}, 1),  # a chain
        ({"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}, 2),  # a diamond
        ({"a": (), "b1": ("a",), "b2": ("a",), "b3": ("a",), "c": ()}, 4),  # c beside b1..b3
        ({"x": (), "y": (), "z": ()}, 3),
        ({"b": ("a",), "c": ("b",)}, 1),  # "a" is done: not a task to run
    ],
)
def test_an_upper_bound_of_what_can_run_at_once(edges, bound) -> None:
    assert at_once(rows(edges)) == bound


def test_a_long_chain_needs_no_recursion() -> None:
    chain = {str(i): (str(i - 1),) if i else () for i in range(20_000)}
    assert at_once(rows(chain)) == 1


def test_forty_jobs_on_a_chain_start_one_worker(dvc_repo) -> None:
    chain = {"one": stage("out/1", "=1"), "two": stage("out/2", "out/1"),
             "three": stage("out/3", "out/2")}  # fmt: skip
    root = dvc_repo({"mark.py": MARK, "dvc.yaml": dvc_yaml(chain)})
    res = lauf(root, "repro", "-j", "40", sleep="0")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (root / ".dvc/tmp/lauf/workers").iterdir()) == ["worker-0.log"]
    wide = fan_out(6)
    root = dvc_repo(wide.files, name="wide")
    assert lauf(root, "repro", "-j", "40", sleep="0").code == 0
    assert len(list((root / ".dvc/tmp/lauf/workers").iterdir())) == 6
