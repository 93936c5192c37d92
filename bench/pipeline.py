"""A DVC pipeline end to end: ``lauf-dvc repro -j 8`` vs ``dvc repro``, side by side.

The pipeline: 1 ``prepare`` stage (1 s) -> 32 independent stages (1 s each) -> 1
``aggregate`` stage (1 s). Two copies of one generated repository, one per tool, in
the same run. The ideal wall for 8 workers is 1 + 32/8 + 1 = 6 s of commands; the
rest is start-up and bookkeeping, which the audit trail lets us split per stage:
for each stage, (completed - running) minus the command's own duration (the
command stamps its start and end) is lauf's per-stage bookkeeping (DVC's locked
phases before and after the command). Usage:

    python bench/pipeline.py [--stages 32] [--jobs 8] [--sleep 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import BIN, ENV, timed

HERE = Path(__file__).parent

# The stage command: the bench's own interpreter (not a `python3` found on PATH, which
# may be a slow wrapper such as a pyenv shim: its start-up would count as bookkeeping).
STAMP = (
    shlex.quote(sys.executable) + ' -c "import sys,time; s=time.time(); time.sleep({sleep}); '
    "open(sys.argv[1],'w').write(sys.argv[2]); "
    "open(sys.argv[3],'w').write(f'{{s}} {{time.time()}}')\" "
)


def make_repo(root: Path, n: int, sleep: float) -> None:
    root.mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "raw.txt").write_text("raw\n")
    stages = {
        "prepare": {
            "cmd": STAMP.format(sleep=sleep) + "prepared.txt prepared .t/prepare",
            "deps": ["data/raw.txt"],
            "outs": ["prepared.txt"],
        }
    }
    for i in range(n):
        stages[f"work_{i:02d}"] = {
            "cmd": STAMP.format(sleep=sleep) + f"out/w{i:02d}.txt {i} .t/work_{i:02d}",
            "deps": ["prepared.txt"],
            "outs": [f"out/w{i:02d}.txt"],
        }
    stages["aggregate"] = {
        "cmd": STAMP.format(sleep=sleep) + "result.txt done .t/aggregate",
        "deps": [f"out/w{i:02d}.txt" for i in range(n)],
        "outs": ["result.txt"],
    }
    (root / "out").mkdir()
    (root / ".t").mkdir()
    (root / ".gitignore").write_text(".t/\n")
    (root / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=1))
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.autostage", "false"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, check=True, env=ENV, capture_output=True)


def bookkeeping(root: Path) -> list[float]:
    """Per stage: time between `running` and `completed` events not spent in the command."""
    from lauf_dvc.scheduler.store import Store
    from lauf_dvc.states import TaskState

    store = Store(f"sqlite:///{root / '.dvc/tmp/lauf/lauf.sqlite'}")
    out = []
    for row in store.task_rows():
        events = store.history(row.id)
        start = max(e.time for e in events if e.state == TaskState.RUNNING)
        end = max(e.time for e in events if e.state == TaskState.COMPLETED)
        c0, c1 = map(float, (root / ".t" / row.id).read_text().split())
        out.append((end - start) - (c1 - c0))
    store.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--sleep", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lauf-bench-pipeline-") as tmp:
        base = Path(tmp) / "base"
        make_repo(base, args.stages, args.sleep)
        lauf, dvc = Path(tmp) / "lauf", Path(tmp) / "dvc"
        shutil.copytree(base, lauf, symlinks=True)
        shutil.copytree(base, dvc, symlinks=True)
        lauf_wall = timed([str(BIN / "lauf-dvc"), "repro", "-j", str(args.jobs)], lauf)
        dvc_wall = timed([str(BIN / "dvc"), "repro"], dvc)
        overhead = bookkeeping(lauf)
        startup = timed([str(BIN / "lauf-dvc"), "--help"], lauf)
        python = min(timed([sys.executable, "-c", "pass"], lauf) for _ in range(3))
        same = (lauf / "dvc.lock").read_text() != "" and _locks_equal(lauf, dvc)
    commands = args.sleep * (2 + -(-args.stages // args.jobs))  # the critical path
    ideal = commands + startup  # the ideal: 1 + 4 + 1 s plus start-up
    result = dict(
        date=datetime.date.today().isoformat(), python=platform.python_version(),
        cpus=os.cpu_count(), stages=args.stages + 2, jobs=args.jobs, sleep=args.sleep,
        lauf_wall_s=round(lauf_wall, 2), dvc_wall_s=round(dvc_wall, 2),
        speedup=round(dvc_wall / lauf_wall, 2), commands_s=commands,
        ideal_s=round(ideal, 2), lauf_over_ideal=round(lauf_wall / ideal, 2),
        lauf_over_commands=round(lauf_wall / commands, 2),
        bookkeeping_ms_median=round(1000 * statistics.median(overhead), 1),
        bookkeeping_ms_max=round(1000 * max(overhead), 1),
        cli_startup_s=round(startup, 2), python_startup_ms=round(1000 * python, 1),
        dvc_lock_identical=same,
    )  # fmt: skip
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"pipeline-{result['date']}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    print("\n| stages | -j | dvc repro | lauf-dvc repro | speed-up | ideal (commands + "
          "start-up) | lauf / ideal | lauf / commands | bookkeeping per stage (median / max) "
          "| dvc.lock identical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    r = result
    print(f"| {r['stages']} | {r['jobs']} | {r['dvc_wall_s']} s | {r['lauf_wall_s']} s | "
          f"{r['speedup']}x | {r['commands_s']} + {r['cli_startup_s']} s | "
          f"{r['lauf_over_ideal']}x | {r['lauf_over_commands']}x | "
          f"{r['bookkeeping_ms_median']} / {r['bookkeeping_ms_max']} ms | {same} |")  # fmt: skip


def _locks_equal(a: Path, b: Path) -> bool:
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    la, lb = (yaml.load((p / "dvc.lock").read_text()) for p in (a, b))
    return la["stages"] == lb["stages"]


if __name__ == "__main__":
    main()
