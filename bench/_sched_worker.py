"""One benchmark worker process: lauf-dvc's or laufband 0.2.1's Graphband over no-op tasks.

Imports and builds the task list, announces it is ready, waits for the start signal,
then drains the graph and prints how many tasks it ran and when it finished.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path


def graph(shape: str, n: int) -> list[tuple[str, list[str]]]:
    if shape == "independent":
        return [(f"t{i}", []) for i in range(n)]
    if shape == "chain":
        return [(f"t{i}", [f"t{i - 1}"] if i else []) for i in range(n)]
    if shape == "random":  # 0-3 dependencies drawn from all earlier tasks
        rng = random.Random(11)
        return [(f"t{i}", [f"t{j}" for j in rng.sample(range(i), min(i, rng.randint(0, 3)))])
                for i in range(n)]  # fmt: skip
    rng = random.Random(7)  # layered: 10 wide, 2 dependencies in the layer above
    out = []
    for i in range(n):
        layer = i // 10
        prev = [f"t{j}" for j in range((layer - 1) * 10, layer * 10)] if layer else []
        out.append((f"t{i}", rng.sample(prev, 2) if prev else []))
    return out


def run_lauf(db: str, nodes: list[tuple[str, list[str]]]) -> int:
    from lauf_dvc import Graphband, Task

    if os.environ.get("LAUF_BENCH_COUNTED") == "1":  # every claim counts the host's usage
        tasks = [Task(i, dependencies=d, resources={"cpus": 1}) for i, d in nodes]
        return sum(1 for _ in Graphband(tasks, db=db, resources="cpus=1024"))
    tasks = [Task(i, dependencies=d) for i, d in nodes]
    return sum(1 for _ in Graphband(tasks, db=db))


def run_laufband(db: str, nodes: list[tuple[str, list[str]]]) -> int:
    from laufband import Graphband, Task

    tasks = [Task(id=i, dependencies=set(d)) for i, d in nodes]
    gb = Graphband(tasks, db=db, identifier=f"w{os.getpid()}", max_killed_retries=1,
                   max_failed_retries=1, tqdm_kwargs={"disable": True})  # fmt: skip
    count = 0
    while True:  # laufband's documented way to keep a worker until the graph is drained
        count += sum(1 for _ in gb)
        if not gb.has_more_jobs:
            return count


def main() -> None:
    impl, db, shape, n, workdir = sys.argv[1:6]
    work = Path(workdir)
    os.chdir(work)  # laufband puts its lock files in the working directory
    nodes = graph(shape, int(n))
    if impl == "lauf" and db.startswith("postgresql"):
        import psycopg  # noqa: F401 (process start-up: imported before the clock starts)
    (work / f"ready-{os.getpid()}").touch()
    go = work / "go"
    while not go.exists():
        time.sleep(0.001)
    count = (run_lauf if impl == "lauf" else run_laufband)(db, nodes)
    print(json.dumps({"count": count, "end": time.time()}))


if __name__ == "__main__":
    main()
