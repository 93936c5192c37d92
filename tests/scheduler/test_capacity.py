"""Resources in the claim transaction (SQLite and PostgreSQL), and the pure arithmetic."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from lauf_dvc import Graphband, Task
from lauf_dvc.resources import (
    Capacity,
    Demand,
    Usage,
    declare,
    demand_of,
    detect,
    fit,
    never_fits,
    parse_mem,
    parse_resources,
    pool_name,
)
from lauf_dvc.scheduler.store import Room, Store, TaskSpec
from lauf_dvc.states import TaskState

GPU = Demand.of({"gpus": 1}).shape
TWO_CORES = Demand.of({"cpus": 2}).shape


def room(capacity: Capacity, *shapes: str, host: str = "h1") -> Room:
    return Room(tuple(sorted({"", *shapes})), host, capacity)


def register(store: Store, names: list[str], capacity: Capacity, host: str = "h1", **kw) -> None:
    for name in names:
        store.register_worker(name, host=host, pid=1, labels="", timeout=60,
                              capacity=capacity, **kw)  # fmt: skip


def test_claims_take_free_gpus_and_give_them_back(db_url) -> None:
    store = Store(db_url)
    store.sync_graph([TaskSpec(f"g{i}", shape=GPU) for i in range(4)], worker=None)
    cap = Capacity(cpus=8, gpus=("0", "1"))
    names = ["w1", "w2", "w3"]
    register(store, names, cap)
    got = [store.claim(w, allowed=[""], room=room(cap, GPU)) for w in names]
    assert [c.devices for c in got[:2]] == [("0",), ("1",)] and got[2] is None
    store.complete(got[0].id, "w1", fingerprint=None)
    again = store.claim("w3", allowed=[""], room=room(cap, GPU))
    assert again is not None and again.devices == ("0",)
    store.dispose()


def test_a_dead_workers_gpu_is_free_once_its_heartbeat_expired(db_url) -> None:
    clock = [1000.0]
    store = Store(db_url, clock=lambda: clock[0])
    store.sync_graph([TaskSpec("a", shape=GPU), TaskSpec("b", shape=GPU)], worker=None)
    cap = Capacity(cpus=8, gpus=("0",))
    register(store, ["dead", "live"], cap)
    assert store.claim("dead", allowed=[""], room=room(cap, GPU)).devices == ("0",)
    assert store.claim("live", allowed=[""], room=room(cap, GPU)) is None  # GPU 0 is held
    clock[0] += 30
    store.heartbeat("live", timeout=60)
    assert store.reap(reaper="live", max_killed_retries=2) == []  # not expired yet
    clock[0] += 40  # dead's heartbeat (at 1000, for 60 s) has expired; live's has not
    assert store.reap(reaper="live", max_killed_retries=2) == ["a"]
    claimed = store.claim("live", allowed=[""], room=room(cap, GPU))
    assert claimed is not None and claimed.devices == ("0",)
    store.dispose()


def test_concurrent_claims_of_one_host_never_oversubscribe(db_url) -> None:
    """Eight workers of one host claim at once, each in its own connection pool: two
    GPUs, so exactly two claims succeed, with distinct devices."""
    setup = Store(db_url)
    setup.sync_graph([TaskSpec(f"g{i}", shape=GPU) for i in range(8)], worker=None)
    cap = Capacity(cpus=16, gpus=("0", "1"))
    names = [f"w{i}" for i in range(8)]
    register(setup, names, cap)
    setup.dispose()
    barrier = threading.Barrier(len(names))
    results: dict[str, object] = {}

    def claim(name: str) -> None:
        store = Store(db_url)
        store.engine  # noqa: B018 (connect before the race)
        barrier.wait()
        results[name] = store.claim(name, allowed=[""], room=room(cap, GPU))
        store.dispose()

    threads = [threading.Thread(target=claim, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [c for c in results.values() if c is not None]
    assert sorted(c.devices for c in won) == [("0",), ("1",)]


def test_a_group_limits_claims_across_hosts(db_url) -> None:
    store = Store(db_url)
    shape = Demand.of({}, "licence").shape
    store.sync_graph([TaskSpec(f"t{i}", shape=shape) for i in range(3)], worker=None,
                     limits={"licence": 2})  # fmt: skip
    cap = Capacity(cpus=4)
    for i in range(3):
        register(store, [f"w{i}"], cap, host=f"host{i}")
    got = [store.claim(f"w{i}", allowed=[""], room=room(cap, shape, host=f"host{i}"))
           for i in range(3)]  # fmt: skip
    assert [c is not None for c in got] == [True, True, False]
    store.dispose()


def test_declared_cores_are_strict_detected_ones_stretch_to_the_workers(sqlite_url) -> None:
    store = Store(sqlite_url)
    store.sync_graph([TaskSpec(f"t{i}") for i in range(4)], worker=None)
    detected, declared = Capacity(cpus=1), Capacity(cpus=1, cpus_declared=True)
    register(store, ["a", "b"], detected)
    assert all(store.claim(w, allowed=[""], room=room(detected)) for w in ("a", "b"))
    register(store, ["c", "d"], declared, host="h2")
    got = [store.claim(w, allowed=[""], room=room(declared, host="h2")) for w in ("c", "d")]
    assert [c is not None for c in got] == [True, False]
    store.dispose()


def test_two_core_tasks_and_one_core_tasks_share_the_cores(sqlite_url) -> None:
    store = Store(sqlite_url)
    specs = [TaskSpec("big", shape=TWO_CORES, priority=1), TaskSpec("s1"), TaskSpec("s2")]
    store.sync_graph(specs, worker=None)
    cap = Capacity(cpus=3, cpus_declared=True)
    register(store, ["a", "b", "c"], cap)
    r = room(cap, TWO_CORES)
    assert [store.claim(w, allowed=[""], room=r).id for w in ("a", "b")] == ["big", "s1"]
    assert store.claim("c", allowed=[""], room=r) is None  # 2 + 1 of 3 cores held
    store.dispose()


def test_an_old_database_is_upgraded_in_place_with_its_history(tmp_path) -> None:
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript((Path(__file__).parent / "data" / "schema_v1.sql").read_text())
    store = Store(f"sqlite:///{path}")
    assert store.counts() == {TaskState.COMPLETED: 1, TaskState.PENDING: 1}
    assert [e.state for e in store.history("a")][-1] == TaskState.COMPLETED
    store.register_worker("w2", host="h", pid=2, labels="", timeout=60)
    assert store.claim("w2", allowed=[""]).id == "b"
    store.dispose()


def test_graphband_tasks_hold_their_resources(tmp_path) -> None:
    """The core API: tasks declare resources, the Graphband declares its host."""
    db = f"sqlite:///{tmp_path / 'g.sqlite'}"
    tasks = [Task(f"t{i}", resources={"gpus": 1, "mem": "1G"}) for i in range(2)]
    band = Graphband(tasks, db=db, resources="gpus=1,mem=4G")
    seen = []
    for task in band:
        seen.append((task.id, band._worker.current.devices))
    assert seen == [("t0", ("0",)), ("t1", ("0",))]


# -- the arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        ("16G", 16384),
        ("512M", 512),
        ("1.5G", 1536),
        ("2048", 2048),
        ("1T", 1048576),
        ("4GiB", 4096),
        ("64K", 1),
        ("0", 0),
    ],
)
def test_memory_amounts(text, mib) -> None:
    assert parse_mem(text) == mib


@pytest.mark.parametrize("bad", ["lots", "-1G", "1X", "", True, None])
def test_bad_memory_amounts(bad) -> None:
    with pytest.raises(ValueError, match="expected an amount of memory"):
        parse_mem(bad)


def test_shapes_round_trip_and_the_default_is_empty() -> None:
    d = Demand.of({"gpus": 2, "cpus": 4, "licence": 1}, "api")
    assert d.shape == "cpus=4,gpus=2,licence=1|api"
    assert demand_of(d.shape) == d
    assert Demand.of({}).shape == "" and demand_of("").needs() == {"cpus": 1}


def test_fit_takes_free_devices_and_counts_everything() -> None:
    cap = Capacity(cpus=4, cpus_declared=True, gpus=("2", "5"), mem=8192,
                   counters=(("licence", 1),))  # fmt: skip
    usage = Usage(workers=3)
    usage.add("gpus=1", "2")
    assert fit(Demand.of({"gpus": 1}), cap, usage) == ("5",)
    assert fit(Demand.of({"gpus": 2}), cap, usage) is None
    assert fit(Demand.of({"mem": 8192}), cap, usage) == ()
    usage.add("mem=4096,licence=1", None)
    assert fit(Demand.of({"mem": 8192}), cap, usage) is None
    assert fit(Demand.of({"licence": 1}), cap, usage) is None
    assert fit(Demand.of({"cpus": 2}), cap, usage) == ()  # 2 held (two tasks), 2 free
    assert fit(Demand.of({"cpus": 3}), cap, usage) is None


def test_never_fits_names_the_most_any_worker_has() -> None:
    caps = [(Capacity(cpus=8, gpus=("0",)), 1), (Capacity(cpus=2, gpus=()), 1)]
    assert never_fits(Demand.of({"gpus": 2}), caps) == (
        "needs gpus=2, the most any worker has is 1"
    )
    assert never_fits(Demand.of({"gpus": 1, "cpus": 8}), caps) is None
    both = never_fits(
        Demand.of({"gpus": 1, "cpus": 4}),
        [(Capacity(cpus=8), 1), (Capacity(cpus=2, gpus=("0",)), 1)],
    )
    assert both == "needs cpus=4,gpus=1, which no worker's host has all at once"


def test_detection_reads_slurm_and_cuda_variables() -> None:
    env = {"SLURM_CPUS_ON_NODE": "12", "SLURM_JOB_GPUS": "1,3", "SLURM_MEM_PER_NODE": "64000",
           "CUDA_VISIBLE_DEVICES": "0"}  # fmt: skip
    cap = detect(env)
    assert (cap.cpus, cap.gpus, cap.mem, cap.cpus_declared) == (12, ("1", "3"), 64000, False)
    assert detect({"CUDA_VISIBLE_DEVICES": ""}).gpus == ()
    declared = declare(cap, parse_resources("cpus=4,gpus=1,licence=2", where="--resources"))
    assert (declared.cpus, declared.cpus_declared, declared.gpus) == (4, True, ("1",))
    assert declared.counters == (("licence", 2),)
    assert declare(Capacity(cpus=1), {"gpus": 2}).gpus == ("0", "1")


def test_two_slurm_jobs_on_one_node_have_capacities_of_their_own(sqlite_url) -> None:
    store = Store(sqlite_url)
    store.sync_graph([TaskSpec(f"g{i}", shape=GPU) for i in range(3)], worker=None)
    pools = [pool_name("node7", {"SLURM_JOB_ID": job}) for job in ("101", "102")]
    assert pools == ["node7:slurm-101", "node7:slurm-102"] and pool_name("node7", {}) == "node7"
    caps = [Capacity(cpus=4, gpus=("0",)), Capacity(cpus=4, gpus=("1",))]
    for name, pool, cap in zip(("a", "b"), pools, caps, strict=True):
        register(store, [name], cap, host="node7", pool=pool)
    got = [store.claim(n, allowed=[""], room=room(c, GPU, host=p))
           for n, p, c in zip(("a", "b"), pools, caps, strict=True)]  # fmt: skip
    assert [c.devices for c in got] == [("0",), ("1",)]
    store.dispose()
