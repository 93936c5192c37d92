"""``lauf-dvc status`` vs ``dvc status`` on a large generated pipeline, side by side.

The pipeline: N stages in chains of 10; each reads its own data file, one parameter and
the previous stage's output of its chain, and writes one output. It is reproduced once
(by lauf, with the ``xxhash`` fingerprinter, so fingerprints are recorded), then timed:

- nothing changed: ``dvc status``, ``lauf-dvc status`` with ``xxhash`` (fingerprints
  compared, unchanged files not re-read thanks to the stat cache) and with ``dvc`` (the
  default: DVC's own status, so at best as fast as ``dvc status``);
- one parameter changed (one chain of 10 stages stale): the same three.

With ``--params one-file`` (the default) every stage's parameter is a key of one
params.yaml, which DVC parses again for every stage it checks (its cost grows with the
square of the pipeline); ``--params per-stage`` gives each stage its own small file.

Usage: python bench/status.py [--stages 1000] [--repeat 3] [--params one-file|per-stage]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from _common import BIN, ENV, timed

HERE = Path(__file__).parent


def make_repo(root: Path, n: int, layout: str = "one-file") -> None:
    (root / "data").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "params").mkdir()
    stages, params = {}, {}
    for i in range(n):
        (root / "data" / f"d{i}.txt").write_text(f"data {i}\n" * 100)
        deps = [f"data/d{i}.txt"] + ([f"out/o{i - 1}.txt"] if i % 10 else [])
        if layout == "one-file":  # every stage's parameter in params.yaml
            params[f"s{i}"] = {"x": i}
            stage_params: list[Any] = [f"s{i}.x"]
        else:  # one small params file per stage
            (root / "params" / f"s{i}.yaml").write_text(json.dumps({"x": i}))
            stage_params = [{f"params/s{i}.yaml": ["x"]}]
        stages[f"s{i:04d}"] = {
            "cmd": f"cat {' '.join(deps)} > out/o{i}.txt",
            "deps": deps,
            "params": stage_params,
            "outs": [f"out/o{i}.txt"],
        }
    (root / "params.yaml").write_text(json.dumps(params, indent=1))
    (root / "dvc.yaml").write_text(json.dumps({"stages": stages}, indent=1))
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):  # fmt: skip
        subprocess.run(cmd, cwd=root, check=True, env=ENV, capture_output=True)


def measure(root: Path, repeat: int, walls_out: dict[str, list[float]]) -> dict[str, float]:
    """Median wall of each status command, interleaved so noise hits all alike (every
    wall goes to ``walls_out``: lauf's first run after a change fills its caches)."""
    cmds = {
        "dvc status": ([str(BIN / "dvc"), "status"], {}),
        "lauf-dvc status (xxhash)": (
            [str(BIN / "lauf-dvc"), "status"], {"LAUF_DVC_FINGERPRINT": "xxhash"}),
        "lauf-dvc status (dvc)": (
            [str(BIN / "lauf-dvc"), "status"], {"LAUF_DVC_FINGERPRINT": "dvc"}),
    }  # fmt: skip
    walls: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeat):
        for name, (cmd, env) in cmds.items():
            walls[name].append(timed(cmd, root, **env))
    walls_out.update({k: [round(w, 2) for w in v] for k, v in walls.items()})
    return {k: round(statistics.median(v), 2) for k, v in walls.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--params", choices=["one-file", "per-stage"], default="one-file",
                    help="all parameters in params.yaml (DVC re-parses it for every stage"
                    " it checks), or one small params file per stage")  # fmt: skip
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lauf-bench-status-") as tmp:
        root = Path(tmp) / "repo"
        make_repo(root, args.stages, args.params)
        setup = timed([str(BIN / "lauf-dvc"), "repro", "-j", str(args.jobs)], root,
                      LAUF_DVC_FINGERPRINT="xxhash")  # fmt: skip
        all_walls: dict[str, dict[str, list[float]]] = {"unchanged": {}, "changed": {}}
        unchanged = measure(root, args.repeat, all_walls["unchanged"])
        if args.params == "one-file":
            params = json.loads((root / "params.yaml").read_text())
            params["s0"]["x"] = -1  # s0000 .. s0009 become stale
            (root / "params.yaml").write_text(json.dumps(params, indent=1))
        else:
            (root / "params" / "s0.yaml").write_text(json.dumps({"x": -1}))
        changed = measure(root, args.repeat, all_walls["changed"])
    result = dict(date=datetime.date.today().isoformat(), stages=args.stages,
                  params=args.params,
                  cpus=os.cpu_count(), setup_repro_s=round(setup, 1),
                  unchanged=unchanged, one_param_changed=changed, walls=all_walls)  # fmt: skip
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = f"status-{result['date']}-{args.stages}-{args.params}.json"
    (out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    print(f"\n| {args.stages} stages, params {args.params} | " + " | ".join(unchanged) + " |")
    print("|---|" + "---|" * len(unchanged))
    for label, row in (("nothing changed", unchanged), ("one param changed", changed)):
        base = row["dvc status"]
        cells = [f"{v} s ({base / v:.1f}x)" if k != "dvc status" else f"{v} s"
                 for k, v in row.items()]  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
