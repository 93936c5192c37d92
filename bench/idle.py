"""What idle workers cost where every poll takes the shared lock file (``lock: flufl``).

W workers share a chain of K tasks that each take S seconds, so at any time one worker
works and W - 1 wait. Measured for lauf's idle pause as it is (its longest pause grows
with the live workers, ``IDLE_POLL_BUDGET``) and with that limit off (every idle worker
polls at least every 0.2 s, the code before), side by side in one run: the idle polls
per second of all workers together, the flufl lock acquisitions they caused, their CPU
time, and the run's wall time over the work itself (the latency a waiting stage pays).
The database is on the local disk here; on NFS each lock costs a few round trips to
the file server, which is what the budget is for. Usage:

    python bench/idle.py [--workers 8,24,36] [--tasks 6] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(db: str, k: int, seconds: float, budget: str, work: Path) -> None:
    from lauf_dvc import Graphband, Task
    from lauf_dvc.scheduler import locks, store, worker

    if budget == "off":
        worker.IDLE_POLL_BUDGET["flufl"] = None
    polls = acquisitions = 0
    poll, acquire = store.Store.poll, locks.TransactionLock._acquire

    def counted_poll(self, *a, **kw):  # type: ignore[no-untyped-def]
        nonlocal polls
        polls += 1
        return poll(self, *a, **kw)

    def counted_acquire(self):  # type: ignore[no-untyped-def]
        nonlocal acquisitions
        acquisitions += 1
        return acquire(self)

    store.Store.poll = counted_poll  # type: ignore[method-assign]
    locks.TransactionLock._acquire = counted_acquire  # type: ignore[method-assign]
    tasks = [Task(f"t{i}", dependencies=[f"t{i - 1}"] if i else []) for i in range(k)]
    (work / f"ready-{os.getpid()}").touch()
    while not (work / "go").exists():
        time.sleep(0.001)
    ran = 0
    for _ in Graphband(tasks, db=db, lock="flufl"):
        time.sleep(seconds)
        ran += 1
    print(json.dumps(dict(ran=ran, polls=polls, locks=acquisitions, end=time.time())))


def measure(w: int, k: int, seconds: float, budget: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="lauf-idle-") as tmp:
        work = Path(tmp)
        db = f"sqlite:///{work / 'db.sqlite'}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        args = [str(k), str(seconds), budget, str(work)]
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", db, *args],
                                  stdout=subprocess.PIPE, text=True) for _ in range(w)]  # fmt: skip
        while len(list(work.glob("ready-*"))) < w:
            time.sleep(0.01)
        start = time.time()
        (work / "go").touch()
        rows = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = max(r["end"] for r in rows) - start
    assert sum(r["ran"] for r in rows) == k, rows
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    polls, acquisitions = sum(r["polls"] for r in rows), sum(r["locks"] for r in rows)
    return dict(w=w, budget=budget, wall_s=round(wall, 2), work_s=k * seconds,
                polls_per_s=round(polls / wall, 1), locks_per_s=round(acquisitions / wall, 1),
                cpu_s=round(cpu, 2))  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        db, k, seconds, budget, work = sys.argv[2:7]
        worker(db, int(k), float(seconds), budget, Path(work))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="8,24,36")
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    rows = []
    for w in (int(x) for x in args.workers.split(",")):
        for budget in ("on", "off"):
            row = measure(w, args.tasks, args.seconds, budget)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| W | idle pause limit | wall / work | idle polls/s | lock acquisitions/s | CPU s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        limit = "grows with W (now)" if r["budget"] == "on" else "0.2 s (before)"
        print(f"| {r['w']} | {limit} | {r['wall_s']} / {r['work_s']} s | {r['polls_per_s']} "
              f"| {r['locks_per_s']} | {r['cpu_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
