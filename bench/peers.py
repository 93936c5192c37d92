"""lauf-dvc against ``dvc repro`` and Snakemake on the same generated pipelines.

Every workload is generated twice from one description: as a DVC pipeline (``dvc.yaml``)
and as the equivalent Snakefile (one rule per stage, the same shell commands, the same
inputs and outputs). Each repetition runs every tool on a fresh copy, in a rotated order
(machines here are shared and noisy: compare within a repetition, take medians), and
checks the result after every run: ``dvc status`` clean and one ``dvc.lock`` entry per
stage for lauf and DVC, ``snakemake -n`` with nothing to do for Snakemake. CPU is the
user + system time of the tool and everything it started (``RUSAGE_CHILDREN``).

Workloads (``--workloads``, comma-separated; default all but ``flat10k``):

- ``fanout8`` / ``fanout2``: 1 -> 32 x ``sleep 1`` -> 1, at -j 8 / -j 2;
- ``trivial200`` / ``trivial1000``: N trivial stages (``cat`` of the inputs) in groups of
  100 (a root, then 9 layers of 11 stages each reading the whole layer before), -j 4;
- ``noop1000``: the 1000-stage pipeline again with nothing changed;
- ``onechanged1000``: one root's data changed, its 100 stages stale;
- ``flat10k``: 10,000 trivial stages, to see whether the per-stage cost stays flat.

``dvc repro`` runs the fan-outs, ``trivial200`` and ``noop1000``; its runs of the other
1000-stage workloads take 5-15 minutes each (its cost per stage grows with the
pipeline), so they are lauf and Snakemake only, as is ``flat10k``.

Snakemake comes from ``SNAKEMAKE`` (default: ``.venv-peers/bin/snakemake``, which
``make bench`` creates); without it the Snakemake columns are left out with a note.

Usage: python bench/peers.py [--repeat 3] [--workloads fanout8,trivial200,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import BIN, ENV

HERE = Path(__file__).parent
ROOT = HERE.parent
SNAKEMAKE = os.environ.get("SNAKEMAKE", str(ROOT / ".venv-peers" / "bin" / "snakemake"))


@dataclass
class Workload:
    name: str
    stages: dict[str, dict[str, object]]  # name -> {cmd, deps, outs}
    data: dict[str, str]  # the source files
    jobs: int
    tools: tuple[str, ...] = ("lauf", "dvc", "snakemake")
    before: str = "none"  # none | reproduced | reproduced+change
    change: str | None = None  # the data file changed after the first run
    per_stage: bool = True  # report ms per stage that ran
    ran: int = 0  # how many stages the timed run must run
    notes: list[str] = field(default_factory=list)


def fanout(jobs: int) -> Workload:
    sleep = "sleep 1 && "
    stages: dict[str, dict[str, object]] = {
        "prepare": {"cmd": sleep + "cat data/raw.txt > out/prepared.txt",
                    "deps": ["data/raw.txt"], "outs": ["out/prepared.txt"]},
    }  # fmt: skip
    for i in range(32):
        stages[f"work_{i:02d}"] = {"cmd": sleep + f"echo {i} | cat out/prepared.txt - > "
                                   f"out/w{i:02d}.txt", "deps": ["out/prepared.txt"],
                                   "outs": [f"out/w{i:02d}.txt"]}  # fmt: skip
    works = [f"out/w{i:02d}.txt" for i in range(32)]
    stages["aggregate"] = {"cmd": sleep + "cat " + " ".join(works) + " > out/result.txt",
                           "deps": works, "outs": ["out/result.txt"]}  # fmt: skip
    return Workload(f"fanout{jobs}", stages, {"data/raw.txt": "raw\n"}, jobs,
                    per_stage=False, ran=34)  # fmt: skip


def layered(n: int) -> tuple[dict[str, dict[str, object]], dict[str, str]]:
    """``n`` stages (a multiple of 100) in groups of 100: a root reading its data file,
    then 9 layers of 11 stages, each reading two outputs of the layer before (stage k:
    k and k + 1), so that every stage of a group is downstream of its root."""
    stages: dict[str, dict[str, object]] = {}
    data: dict[str, str] = {}
    for g in range(n // 100):
        data[f"data/g{g}.txt"] = f"group {g}\n"
        before = [f"out/g{g}_root.txt"]
        stages[f"g{g}_root"] = {"cmd": f"cat data/g{g}.txt > {before[0]}",
                                "deps": [f"data/g{g}.txt"], "outs": before}  # fmt: skip
        for layer in range(1, 10):
            outs = []
            for k in range(11):
                out = f"out/g{g}_l{layer}_{k}.txt"
                deps = sorted({before[k % len(before)], before[(k + 1) % len(before)]})
                stages[f"g{g}_l{layer}_{k}"] = {
                    "cmd": f"cat {' '.join(deps)} > {out}",
                    "deps": deps,
                    "outs": [out],
                }
                outs.append(out)
            before = outs
    return stages, data


def trivial(n: int, tools: tuple[str, ...] = ("lauf", "dvc", "snakemake")) -> Workload:
    stages, data = layered(n)
    name = f"trivial{n}" if n < 10_000 else "flat10k"
    return Workload(name, stages, data, 4, tools=tools, ran=n)


def noop(n: int) -> Workload:
    stages, data = layered(n)
    return Workload(f"noop{n}", stages, data, 4, before="reproduced", per_stage=False, ran=0)


def one_changed(n: int) -> Workload:
    stages, data = layered(n)
    return Workload(f"onechanged{n}", stages, data, 4, before="reproduced",
                    change="data/g0.txt", ran=100, tools=("lauf", "snakemake"))  # fmt: skip


WORKLOADS = {
    "fanout8": lambda: fanout(8),
    "fanout2": lambda: fanout(2),
    "trivial200": lambda: trivial(200),
    "trivial1000": lambda: trivial(1000, tools=("lauf", "snakemake")),
    "noop1000": lambda: noop(1000),
    "onechanged1000": lambda: one_changed(1000),
    "flat10k": lambda: trivial(10_000, tools=("lauf", "snakemake")),
}


# -- generating ------------------------------------------------------------------------


def write_base(root: Path, w: Workload) -> None:
    """The DVC repository (git + dvc init, committed) and the Snakefile, side by side."""
    root.mkdir(parents=True)
    (root / "out").mkdir()
    for rel, text in w.data.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "dvc.yaml").write_text(json.dumps({"stages": w.stages}, indent=1))
    (root / "Snakefile").write_text(snakefile(w))
    (root / ".gitignore").write_text(".snakemake/\n")
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.autostage", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, check=True, env=ENV, capture_output=True)


def snakefile(w: Workload) -> str:
    finals = sorted({o for s in w.stages.values() for o in s["outs"]})  # type: ignore[attr-defined]
    lines = ["rule all:", f"    input: {finals!r}", ""]
    for name, s in w.stages.items():
        lines += [f"rule {name}:", f"    input: {list(s['deps'])!r}",  # type: ignore[call-overload]
                  f"    output: {list(s['outs'])!r}",  # type: ignore[call-overload]
                  f"    shell: {s['cmd']!r}", ""]  # fmt: skip
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------


def command(tool: str, w: Workload) -> list[str]:
    if tool == "lauf":
        return [str(BIN / "lauf-dvc"), "repro", "-j", str(w.jobs)]
    if tool == "dvc":
        return [str(BIN / "dvc"), "repro"]
    return [SNAKEMAKE, "all", "--cores", str(w.jobs), "--quiet"]


def run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``cmd`` and its children; exits with its output if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        kept = _keep(cwd)
        sys.exit(f"{shlex.join(cmd)} failed ({proc.returncode}); its repository, logs and "
                 f"all, kept in {kept}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")  # fmt: skip
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def start_points(base: Path, w: Workload, tools: list[str]) -> dict[str, Path]:
    """Each tool's starting point, made once (untimed): the fresh repository, or for the
    workloads that start from a reproduced pipeline, one reproduced copy per kind: for
    lauf and DVC by lauf (its dvc.lock, .gitignore files and cache are DVC's own:
    tests/dvc check it; ``dvc repro`` would take 15 minutes for 1000 stages), for
    Snakemake by Snakemake."""
    if w.before == "none":
        return {t: base for t in tools}
    points: dict[str, Path] = {}
    for kind in sorted({"snakemake" if t == "snakemake" else "lauf" for t in tools}):
        dest = base.parent / f"start-{kind}"
        shutil.copytree(base, dest, symlinks=True)
        run(command(kind, w), dest)
        check(kind, dest, w)
        points.update({t: dest for t in tools if (t == "snakemake") == (kind == "snakemake")})
    return points


AGE = 2.5  # seconds: older than lauf's distrust of fresh files (RACY, 2 s)


def prepare(tool: str, start: Path, dest: Path, w: Workload) -> None:
    """A fresh copy of ``start`` for ``tool``, brought to the workload's starting point
    untimed: the change made; what the tool keeps between runs made valid again for the
    copy (new inodes and ctimes) by one status, as it is after the run that reproduced
    it: ``dvc status`` (DVC's hash cache), ``lauf-dvc status`` (that and lauf's pipeline
    snapshot and stored verdicts). The status waits until the copy's files are
    :data:`AGE` old: lauf trusts nothing it keeps about a file changed within the last
    2 s, and a copy's files all have a new ctime (a repository's files, minutes or
    days after the run that made them, are older than that)."""
    shutil.copytree(start, dest, symlinks=True)
    if w.before == "none":
        return
    time.sleep(AGE)  # for every tool alike (untimed)
    if tool != "snakemake":
        status = [str(BIN / ("lauf-dvc" if tool == "lauf" else "dvc")), "status"]
        run(status + (["-q"] if tool == "dvc" else []), dest)
    if w.change:
        (dest / w.change).write_text("changed\n")
        if tool == "snakemake":  # Snakemake goes by mtimes: make the change newer
            later = time.time() + 1
            os.utime(dest / w.change, (later, later))


def _keep(root: Path) -> Path:
    """Move a failed run's directory out of the bench's temporary one (removed on exit),
    so its logs can be read."""
    kept = Path(tempfile.mkdtemp(prefix="lauf-bench-failed-")) / root.name
    shutil.move(root, kept)
    return kept


def check(tool: str, root: Path, w: Workload) -> None:
    """The run left a finished pipeline, or the bench stops."""
    if tool == "snakemake":
        dry = subprocess.run([SNAKEMAKE, "all", "-n", "--cores", "1"], cwd=root,
                             env=ENV, capture_output=True, text=True)  # fmt: skip
        if dry.returncode != 0 or "Nothing to be done" not in dry.stdout + dry.stderr:
            kept = _keep(root)
            sys.exit(f"snakemake left work in {kept}:\n{dry.stdout[-2000:]}{dry.stderr[-2000:]}")
        return
    from ruamel.yaml import YAML

    status = subprocess.run([str(BIN / "dvc"), "status", "-q"], cwd=root, env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    if status.returncode != 0:
        sys.exit(f"{tool}: dvc status not clean in {_keep(root)}")
    lock = YAML(typ="safe").load((root / "dvc.lock").read_text())
    if set(lock["stages"]) != set(w.stages):
        sys.exit(f"{tool}: dvc.lock in {_keep(root)} has {len(lock['stages'])} entries, "
                 f"not {len(w.stages)}")  # fmt: skip


def bench(w: Workload, repeat: int, tmp: Path) -> dict[str, dict[str, float]]:
    base = tmp / w.name / "base"
    write_base(base, w)
    tools = [t for t in w.tools if t != "snakemake" or Path(SNAKEMAKE).exists()]
    if len(tools) < len(w.tools):
        w.notes.append(f"no Snakemake at {SNAKEMAKE}")
    starts = start_points(base, w, tools)
    walls: dict[str, list[float]] = {t: [] for t in tools}
    cpus: dict[str, list[float]] = {t: [] for t in tools}
    for rep in range(repeat):
        order = tools[rep % len(tools) :] + tools[: rep % len(tools)]  # rotated
        for tool in order:
            dest = tmp / w.name / f"{tool}-{rep}"
            prepare(tool, starts[tool], dest, w)
            wall, cpu = run(command(tool, w), dest)
            check(tool, dest, w)
            walls[tool].append(wall)
            cpus[tool].append(cpu)
            shutil.rmtree(dest, ignore_errors=True)
            print(f"  {w.name} {tool} #{rep}: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    out: dict[str, dict[str, float]] = {}
    for tool in tools:
        wall, cpu = statistics.median(walls[tool]), statistics.median(cpus[tool])
        row = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        if w.per_stage and w.ran:
            row["ms_per_stage"] = round(1000 * wall / w.ran, 1)
            row["cpu_ms_per_stage"] = round(1000 * cpu / w.ran, 1)
        out[tool] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    default = [k for k in WORKLOADS if k != "flat10k"]
    ap.add_argument("--workloads", default=",".join(default))
    ap.add_argument("--tools", default="lauf,dvc,snakemake", help="a subset, comma-separated")
    args = ap.parse_args()
    names = [n for n in args.workloads.split(",") if n]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workload {unknown[0]!r} (known: {', '.join(WORKLOADS)})")
    results = {}
    with tempfile.TemporaryDirectory(prefix="lauf-bench-peers-") as tmp:
        for name in names:
            w = WORKLOADS[name]()
            w.tools = tuple(t for t in w.tools if t in args.tools.split(","))
            print(f"{name}: {len(w.stages)} stages, -j {w.jobs}", flush=True)
            tools = bench(w, args.repeat, Path(tmp))
            results[name] = {"stages": len(w.stages), "jobs": w.jobs, "tools": tools,
                             "notes": w.notes}  # fmt: skip
    date = datetime.date.today().isoformat()
    record = {"date": date, "cpus": os.cpu_count(), "repeat": args.repeat, "results": results}
    folder = HERE / "results"
    folder.mkdir(exist_ok=True)
    (folder / f"peers-{date}.json").write_text(json.dumps(record, indent=1))
    print(table(results))


def _cell(t: dict[str, float] | None) -> str:
    if t is None:
        return "-"
    if "ms_per_stage" in t:
        return f"{t['ms_per_stage']} ms/stage ({t['wall_s']} s)"
    return f"{t['wall_s']} s"


def _ratio(tools: dict[str, dict[str, float]], key: str) -> str:
    a, b = tools.get("lauf"), tools.get("snakemake")
    return f"{a[key] / b[key]:.2f}x" if a and b and b[key] else "-"


def table(results: dict[str, dict[str, object]]) -> str:
    lines = ["| workload | lauf | dvc repro | Snakemake | lauf / Snakemake "
             "| CPU lauf / Snakemake |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        tools: dict[str, dict[str, float]] = r["tools"]  # type: ignore[assignment]
        cells = " | ".join(_cell(tools.get(t)) for t in ("lauf", "dvc", "snakemake"))
        lines.append(f"| {name} | {cells} | {_ratio(tools, 'wall_s')} | "
                     f"{_ratio(tools, 'cpu_s')} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
