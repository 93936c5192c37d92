"""Scheduler overhead: per-task milliseconds for no-op tasks, lauf-dvc vs laufband 0.2.1.

Both run the same workloads side by side in one run (the machine is shared and noisy:
compare ratios). Workers start behind a barrier, so process start-up is not counted;
graph registration (sync) is. Usage:

    python bench/scheduler.py [--quick] [--no-laufband] [--max-laufband-n 2000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
WORKER = HERE / "_sched_worker.py"


def run(impl: str, shape: str, n: int, w: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="lauf-bench-") as tmp:
        work = Path(tmp)
        db = f"sqlite:///{work / 'db.sqlite'}"
        procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), impl, db, shape, str(n), str(work)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(w)
        ]
        while len(list(work.glob("ready-*"))) < w:
            time.sleep(0.005)
        start = time.time()
        (work / "go").touch()
        results, status = [], "ok"
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1.0, start + timeout - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                status = "timeout"
                continue
            if p.returncode != 0:
                status = f"exit {p.returncode}: {err.strip().splitlines()[-1:]}"
                continue
            results.append(json.loads(out.strip().splitlines()[-1]))
        end = max((r["end"] for r in results), default=time.time())
        done = sum(r["count"] for r in results)
        wall = end - start
        return dict(impl=impl, shape=shape, n=n, w=w, wall_s=round(wall, 3), done=done,
                    ms_per_task=round(1000 * wall / n, 3), status=status)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N in {500, 2000} only")
    ap.add_argument("--no-laufband", action="store_true")
    ap.add_argument("--max-laufband-n", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    ns = [500, 2000] if args.quick else [500, 2000, 10000]
    rows = []
    for shape in ("independent", "layered", "chain"):
        for n in ns:
            for w in (1, 2, 4, 8):
                impls = ["lauf"]
                if not args.no_laufband and n <= args.max_laufband_n:
                    impls.append("laufband")
                for impl in impls:
                    r = run(impl, shape, n, w, args.timeout)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    meta = dict(date=stamp, python=platform.python_version(), machine=platform.machine(),
                cpus=__import__("os").cpu_count())  # fmt: skip
    (out / f"scheduler-{stamp}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print_table(rows)


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok" and r["done"] >= r["n"]:
        return str(r["ms_per_task"])
    return f"{r['ms_per_task']} ({r['status']}, {r['done']}/{r['n']} done)"


def print_table(rows: list[dict]) -> None:
    print("\n| shape | N | W | lauf ms/task | laufband ms/task | laufband / lauf |")
    print("|---|---|---|---|---|---|")
    lauf = {(r["shape"], r["n"], r["w"]): r for r in rows if r["impl"] == "lauf"}
    band = {(r["shape"], r["n"], r["w"]): r for r in rows if r["impl"] == "laufband"}
    for key, r in lauf.items():
        b = band.get(key)
        ok = b is not None and b["status"] == "ok"
        ratio = f"{b['ms_per_task'] / r['ms_per_task']:.0f}x" if ok else "-"
        print(f"| {key[0]} | {key[1]} | {key[2]} | {cell(r)} | {cell(b)} | {ratio} |")


if __name__ == "__main__":
    main()
