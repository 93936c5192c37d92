"""Generated DVC pipelines for the command-line tests, and a way to see which stages ran.

Every stage command is ``python3 mark.py OUT INPUT...`` (``mark.py`` at the repository
root, see :data:`MARK`): it records the run in a marker file created with ``O_EXCL``
in ``$LAUF_TEST_MARKS`` (one per stage and run; a second run of a stage with the same
markers directory cannot create it, fails and leaves an ``.again`` file), then writes
OUT from its inputs, so that the outputs (and the ``dvc.lock`` entries) are the same
whoever runs the stage. Each :class:`Pipeline` knows its edges independently of DVC
and of lauf, so tests can check the order the stages ran in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

MARKS_ENV = "LAUF_TEST_MARKS"
SLEEP_ENV = "LAUF_TEST_SLEEP"

MARK = '''\
"""usage: mark.py OUT [INPUT ...]; INPUT is a path (its bytes go into OUT), @key (a value
of params.yaml, which these tests write as JSON), =text (a literal), or +tag (ignored:
it changes the command, not the output)."""
import hashlib, json, os, sys, time
from urllib.parse import quote

stage, marks = os.environ["DVC_STAGE"], os.environ.get("LAUF_TEST_MARKS")
start, fd = time.time(), None
if marks:
    path = os.path.join(marks, quote(stage, safe=""))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        open(f"{path}.again.{os.getpid()}", "w").close()
        sys.exit(f"{stage} ran twice")
time.sleep(float(os.environ.get("LAUF_TEST_SLEEP", "0")))
out, digest = sys.argv[1], hashlib.sha256()
for item in sys.argv[2:]:
    if item.startswith("+"):
        continue
    if item.startswith("@"):
        with open(os.path.join(os.environ["DVC_ROOT"], "params.yaml")) as fh:
            value = json.load(fh)
        for key in item[1:].split("."):
            value = value[key]
        digest.update(json.dumps(value).encode())
    elif item.startswith("="):
        digest.update(item.encode())
    else:
        with open(item, "rb") as fh:
            digest.update(fh.read())
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w") as fh:
    fh.write(f"{out} {digest.hexdigest()}\\n")
if fd is not None:
    os.write(fd, json.dumps({"stage": stage, "start": start, "end": time.time()}).encode())
    os.close(fd)
print(f"{stage}: wrote {out}")
'''


@dataclass
class Pipeline:
    """The files of a repository and the stage graph they define (address -> upstream)."""

    files: dict[str, str]
    upstream: dict[str, set[str]] = field(default_factory=dict)

    @property
    def stages(self) -> set[str]:
        return set(self.upstream)

    def downstream(self, *addresses: str) -> set[str]:
        """``addresses`` and every stage that depends on them, directly or not."""
        found = set(addresses)
        grew = True
        while grew:
            more = {s for s, ups in self.upstream.items() if ups & found} - found
            found |= more
            grew = bool(more)
        return found


def cmd(out: str, *inputs: str, wdir: str = ".") -> str:
    script = "mark.py" if wdir == "." else f"{'../' * len(Path(wdir).parts)}mark.py"
    return " ".join(["python3", script, out, *inputs])


def stage(out: str, *inputs: str, deps: Sequence[str] = (), params: Sequence[str] = ()) -> dict:
    """A dvc.yaml stage writing ``out``; path inputs are its dependencies."""
    entry: dict[str, Any] = {"cmd": cmd(out, *inputs)}
    paths = [i for i in inputs if i[0] not in "@=+"] + list(deps)
    if paths:
        entry["deps"] = paths
    if params:
        entry["params"] = list(params)
    entry["outs"] = [out]
    return entry


def dvc_yaml(stages: Mapping[str, Any], **top: Any) -> str:
    """A dvc.yaml (JSON is YAML; DVC reads it like any other)."""
    return json.dumps({**top, "stages": dict(stages)}, indent=2) + "\n"


def params_yaml(values: Mapping[str, Any]) -> str:
    return json.dumps(values, indent=2) + "\n"


def fan_out(width: int = 8) -> Pipeline:
    """source -> leaf_0 ... leaf_{width-1} -> gather."""
    leaves = {f"leaf_{i}": stage(f"out/leaf_{i}.txt", "out/source.txt", f"={i}")
              for i in range(width)}  # fmt: skip
    stages = {
        "source": stage("out/source.txt", "data/raw.txt"),
        **leaves,
        "gather": stage("out/gather.txt", *(f"out/{name}.txt" for name in leaves)),
    }
    upstream = {"source": set(), **{n: {"source"} for n in leaves}, "gather": set(leaves)}
    files = {"mark.py": MARK, "data/raw.txt": "raw\n", "dvc.yaml": dvc_yaml(stages)}
    return Pipeline(files, upstream)


def independent(count: int) -> Pipeline:
    """``count`` stages with no dependency between them."""
    stages = {f"s{i:03d}": stage(f"out/s{i:03d}.txt", f"={i}") for i in range(count)}
    files = {"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)}
    return Pipeline(files, {name: set() for name in stages})


def diamond() -> Pipeline:
    """top -> left, right -> bottom -> final, plus ``side`` on its own; params in params.yaml.

    ``left`` reads ``p.left``; ``top`` reads ``p.top``; nothing else reads a param.
    """
    stages = {
        "top": stage("out/top.txt", "data/raw.txt", "@p.top", params=["p.top"]),
        "left": stage("out/left.txt", "out/top.txt", "@p.left", params=["p.left"]),
        "right": stage("out/right.txt", "out/top.txt"),
        "bottom": stage("out/bottom.txt", "out/left.txt", "out/right.txt"),
        "final": stage("out/final.txt", "out/bottom.txt"),
        "side": stage("out/side.txt", "data/other.txt"),
    }
    upstream = {"top": set(), "left": {"top"}, "right": {"top"}, "bottom": {"left", "right"},
                "final": {"bottom"}, "side": set()}  # fmt: skip
    files = {
        "mark.py": MARK,
        "data/raw.txt": "raw\n",
        "data/other.txt": "other\n",
        "params.yaml": params_yaml({"p": {"top": 1, "left": 2}}),
        "dvc.yaml": dvc_yaml(stages),
    }
    return Pipeline(files, upstream)


def foreach_matrix() -> Pipeline:
    """A foreach and a matrix stage in dvc.yaml, and a sub/dvc.yaml between them and ``final``."""
    feat = {"cmd": cmd("feat/${item}.txt", "out/prep.txt", "=${item}"),
            "deps": ["out/prep.txt"], "outs": ["feat/${item}.txt"]}  # fmt: skip
    grid_out = "grid/${item.model}-${item.seed}.txt"
    grid = {
        "matrix": {"model": ["lin", "tree"], "seed": [1, 2]},
        "cmd": cmd(grid_out, "feat/a.txt", "=${item.model}", "=${item.seed}"),
        "deps": ["feat/a.txt"],
        "outs": [grid_out],
    }
    root = {
        "prep": stage("out/prep.txt", "data/raw.txt"),
        "feat": {"foreach": ["a", "b", "c"], "do": feat},
        "grid": grid,
        "final": stage("out/final.txt", "sub/collected.txt", "feat/b.txt"),
    }
    sub_inputs = ("../grid/lin-1.txt", "../grid/tree-2.txt", "../feat/c.txt")
    sub = {"collect": {"cmd": cmd("collected.txt", *sub_inputs, wdir="sub"),
                       "deps": list(sub_inputs), "outs": ["collected.txt"]}}  # fmt: skip
    grids = [f"grid@{m}-{s}" for m in ("lin", "tree") for s in (1, 2)]
    upstream = {
        "prep": set(),
        **{f"feat@{x}": {"prep"} for x in "abc"},
        **{g: {"feat@a"} for g in grids},
        "sub/dvc.yaml:collect": {"grid@lin-1", "grid@tree-2", "feat@c"},
        "final": {"sub/dvc.yaml:collect", "feat@b"},
    }
    files = {
        "mark.py": MARK,
        "data/raw.txt": "raw\n",
        "dvc.yaml": dvc_yaml(root),
        "sub/dvc.yaml": dvc_yaml(sub),
    }
    return Pipeline(files, upstream)


# -- what ran -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    stage: str
    start: float
    end: float


def runs(marks: Path) -> dict[str, Run]:
    """The stage runs recorded in ``marks``; a stage that ran twice there is an error."""
    again = sorted(p.name for p in marks.glob("*.again.*")) if marks.exists() else []
    assert not again, f"stages ran more than once: {[unquote(a) for a in again]}"
    out = {}
    for path in marks.iterdir() if marks.exists() else ():
        data = json.loads(path.read_text() or "{}")
        assert data, f"{unquote(path.name)} started but never finished its command"
        assert data["stage"] == unquote(path.name)
        out[data["stage"]] = Run(data["stage"], data["start"], data["end"])
    return out


def assert_in_order(pipeline: Pipeline, ran: Mapping[str, Run]) -> None:
    """No stage started before every upstream stage that ran had finished its command."""
    for name, run in ran.items():
        for up in pipeline.upstream[name] & set(ran):
            assert run.start >= ran[up].end, f"{name} started before its upstream {up} ended"
