"""Scheduler overhead: per-task milliseconds for no-op tasks, on SQLite and PostgreSQL,
and against laufband 0.2.1 (SQLite only).

Everything runs side by side in one run (the machine is shared and noisy: compare
ratios). Workers start behind a barrier, so process start-up is not counted; graph
registration (sync) is. PostgreSQL is a server this script starts itself (pgserver, in a
temporary directory, over a unix socket), with a fresh database per measurement. Usage:

    python bench/scheduler.py [--quick] [--backend sqlite,postgresql] [--workers 1,4,8,16]
                              [--shapes independent,layered,chain] [--n 500,2000,10000]
                              [--pg-n 10000] [--no-laufband] [--max-laufband-n 2000]
                              [--counted]   (tasks declare cpus: 1: every claim counts)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
WORKER = HERE / "_sched_worker.py"


class Postgres:
    """A throwaway PostgreSQL server; :meth:`database` makes an empty database."""

    def __init__(self) -> None:
        import pgserver  # the test/bench extra: binaries from pip, no root

        self.root = tempfile.mkdtemp(prefix="lauf-bench-pg-")  # short: a socket lives there
        self.server = pgserver.get_server(self.root, cleanup_mode="stop")

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        name = f"b_{uuid.uuid4().hex[:10]}"
        self.server.psql(f"CREATE DATABASE {name};")
        prefix, _, query = self.server.get_uri().partition("?")
        prefix = prefix.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        try:
            yield f"{prefix}/{name}?{query}"
        finally:
            self.server.psql(f"DROP DATABASE {name} WITH (FORCE);")

    def close(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def sqlite_database(work: Path) -> Iterator[str]:
    yield f"sqlite:///{work / 'db.sqlite'}"


def run(impl: str, backend: str, pg: Postgres | None, shape: str, n: int, w: int,
        timeout: float) -> dict:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lauf-bench-") as tmp:
        work = Path(tmp)
        db_cm = pg.database() if backend == "postgresql" and pg else sqlite_database(work)
        with db_cm as db:
            r = measure(impl, db, work, shape, n, w, timeout)
        return dict(backend=backend, impl=impl, shape=shape, n=n, w=w, **r)


def measure(impl: str, db: str, work: Path, shape: str, n: int, w: int, timeout: float) -> dict:
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
        if any(p.poll() is not None for p in procs):
            break
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
    return dict(wall_s=round(wall, 3), done=done, ms_per_task=round(1000 * wall / n, 3),
                status=status)  # fmt: skip


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N in {500, 2000}, PostgreSQL 2000")
    ap.add_argument("--backend", default="sqlite,postgresql")
    ap.add_argument("--workers", type=ints, default=[1, 4, 8, 16])
    ap.add_argument("--shapes", default="independent,layered,chain")
    ap.add_argument("--n", type=ints, default=None, help="SQLite task counts")
    ap.add_argument("--pg-n", type=ints, default=None, help="PostgreSQL task counts")
    ap.add_argument("--no-laufband", action="store_true")
    ap.add_argument("--max-laufband-n", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--counted", action="store_true",
                    help="lauf's tasks declare resources (cpus: 1) and its workers a "
                         "capacity: every claim counts what the host holds")  # fmt: skip
    args = ap.parse_args()
    if args.counted:
        os.environ["LAUF_BENCH_COUNTED"] = "1"  # the worker processes inherit it
    backends = [b for b in args.backend.split(",") if b]
    ns = {
        "sqlite": args.n or ([500, 2000] if args.quick else [500, 2000, 10000]),
        "postgresql": args.pg_n or ([2000] if args.quick else [10000]),
    }
    pg = Postgres() if "postgresql" in backends else None
    rows = []
    try:
        for backend in backends:
            for shape in args.shapes.split(","):
                for n in ns[backend]:
                    for w in args.workers:
                        impls = ["lauf"]
                        laufband = backend == "sqlite" and n <= args.max_laufband_n
                        if laufband and not args.no_laufband:
                            impls.append("laufband")
                        for impl in impls:
                            r = run(impl, backend, pg, shape, n, w, args.timeout)
                            rows.append(r)
                            print(json.dumps(r), flush=True)
    finally:
        if pg is not None:
            pg.close()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    meta = dict(date=stamp, python=platform.python_version(), machine=platform.machine(),
                cpus=os.cpu_count(), load=os.getloadavg())  # fmt: skip
    path = out / f"scheduler-{stamp}.json"
    path.write_text(json.dumps(dict(meta=meta, argv=sys.argv[1:], rows=rows), indent=1))
    print_table(rows)


def cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["status"] == "ok" and r["done"] >= r["n"]:
        return str(r["ms_per_task"])
    return f"{r['ms_per_task']} ({r['status']}, {r['done']}/{r['n']} done)"


def print_table(rows: list[dict]) -> None:
    """Per-task ms; "x W=1": that cost over the same backend/shape/N with one worker."""
    head = "backend | shape | N | W | lauf ms/task | x W=1 | laufband ms/task | laufband / lauf"
    print(f"\n| {head} |\n" + "|---" * 8 + "|")
    lauf = {(r["backend"], r["shape"], r["n"], r["w"]): r for r in rows if r["impl"] == "lauf"}
    band = {(r["backend"], r["shape"], r["n"], r["w"]): r for r in rows if r["impl"] != "lauf"}
    for key, r in lauf.items():
        one = lauf.get((*key[:3], 1))
        growth = f"{r['ms_per_task'] / one['ms_per_task']:.2f}" if one else "-"
        b = band.get(key)
        ok = b is not None and b["status"] == "ok"
        ratio = f"{b['ms_per_task'] / r['ms_per_task']:.0f}x" if ok else "-"
        print(f"| {' | '.join(map(str, key))} | {cell(r)} | {growth} | {cell(b)} | {ratio} |")


if __name__ == "__main__":
    main()
