"""A worker process for the multi-process tests: `python proc_worker.py DB SHAPE N DIR`.

Options pass Graphband settings (``--lock flufl``, ``--max-idle``, heartbeats).

Each task creates its marker file with O_EXCL (a second run of a task fails loudly),
so "exactly once" is a property of the file system, not of our bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

from lauf_dvc import Graphband, Task


def layered(n: int, width: int = 10, fan_in: int = 2, seed: int = 7) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        layer = i // width
        prev = [f"t{j}" for j in range((layer - 1) * width, layer * width)] if layer else []
        deps = rng.sample(prev, min(fan_in, len(prev)))
        tasks.append(Task(f"t{i}", dependencies=deps))
    return tasks


def random_dag(n: int, max_deps: int = 3, seed: int = 11) -> list[Task]:
    """Each task depends on up to ``max_deps`` tasks drawn from all earlier ones."""
    rng = random.Random(seed)
    return [
        Task(f"t{i}", dependencies=[f"t{j}" for j in rng.sample(range(i), min(i, k))])
        for i, k in ((i, rng.randint(0, max_deps)) for i in range(n))
    ]


def chain(n: int) -> list[Task]:
    return [Task(f"t{i}", dependencies=[f"t{i - 1}"] if i else []) for i in range(n)]


def independent(n: int) -> list[Task]:
    return [Task(f"t{i}") for i in range(n)]


SHAPES = {"layered": layered, "random": random_dag, "chain": chain, "independent": independent}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("db")
    p.add_argument("shape", choices=[*SHAPES, "slow"])
    p.add_argument("n", type=int)
    p.add_argument("dir", type=Path)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--heartbeat-interval", type=float, default=None)
    p.add_argument("--heartbeat-timeout", type=float, default=None)
    p.add_argument("--lock", choices=["auto", "wal", "flufl"], default=None)
    p.add_argument("--max-idle", type=float, default=None)
    args = p.parse_args()
    markers = args.dir / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    tasks = [Task("slow")] if args.shape == "slow" else SHAPES[args.shape](args.n)
    gb = Graphband(
        tasks,
        db=args.db,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        lock=args.lock,
        max_idle=args.max_idle,
    )
    for task in gb:
        if args.shape == "slow":
            run_slow(markers)
            continue
        fd = os.open(markers / task.id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, f"{gb.identifier}\n".encode())
        os.close(fd)
        time.sleep(args.sleep)
    (args.dir / f"exit-{os.getpid()}").write_text(repr(time.time()))
    return 0


def run_slow(markers: Path) -> None:
    """First attempt announces itself and hangs (to be killed); the retry is quick."""
    first = markers / "slow.first"
    if not first.exists():
        first.write_text(str(os.getpid()))
        time.sleep(120)
    (markers / "slow.done").write_text(str(os.getpid()))


if __name__ == "__main__":
    sys.exit(main())
