"""Stage resources with real workers: GPUs, cores, groups, counters, on SQLite and
PostgreSQL. Each stage's command logs when it starts and ends and what it was given
(``CUDA_VISIBLE_DEVICES``, ``LAUF_DVC_CPUS``, ``OMP_NUM_THREADS``); overlaps are
computed from those timestamps."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc_repos import init_repo

from lauf_dvc.errors import ExitCode

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

PROBE = """\
import json, os, sys, time
name, seconds = sys.argv[1], float(sys.argv[2])
log = os.environ["PROBE_LOG"]
keys = ("CUDA_VISIBLE_DEVICES", "LAUF_DVC_CPUS", "OMP_NUM_THREADS")
env = {k: os.environ.get(k) for k in keys}
def note(what):
    with open(log, "a") as f:
        f.write(json.dumps(dict(stage=name, what=what, t=time.time(), **env)) + "\\n")
note("start")
time.sleep(seconds)
os.makedirs("out", exist_ok=True)
open(f"out/{name}", "w").write(name)
note("end")
"""


def pipeline(stages: dict[str, dict[str, Any]], seconds: float = 0.6, **lauf: Any) -> str:
    """A dvc.yaml of independent probe stages; ``stages``: name -> its meta.lauf."""
    doc: dict[str, Any] = {"stages": {}}
    if lauf:
        doc["vars"] = [{"lauf": lauf}]
    for name, meta in stages.items():
        stage = {"cmd": f"python probe.py {name} {seconds}", "deps": ["probe.py"],
                 "outs": [f"out/{name}"]}  # fmt: skip
        if meta:
            stage["meta"] = {"lauf": meta}
        doc["stages"][name] = stage
    return yaml.safe_dump(doc, sort_keys=False)


def lauf_dvc(root: Path, *args: str, log: Path, env: dict[str, str] | None = None):
    full = {**os.environ, "PROBE_LOG": str(log), **(env or {})}
    return subprocess.run([sys.executable, "-m", "lauf_dvc", *args], cwd=root, env=full,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


def intervals(log: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["stage"], dict(rec)).update({rec["what"]: rec["t"]})
    return out


def most_at_once(runs: dict[str, dict[str, Any]], members: set[str] | None = None) -> int:
    """The most stages (of ``members``) whose [start, end] overlap at one instant."""
    points = []
    for name, r in runs.items():
        if members is None or name in members:
            points += [(r["start"], 1), (r["end"], -1)]
    now = most = 0
    for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start
        now += step
        most = max(most, now)
    return most


def overlapping(runs: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    names = sorted(runs)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if runs[a]["start"] < runs[b]["end"] and runs[b]["start"] < runs[a]["end"]]  # fmt: skip


@pytest.fixture
def db_env(request, tmp_path) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"LAUF_DVC_DB": request.getfixturevalue("pg_url")}


@pytest.mark.parametrize("db_env", ["sqlite", "postgresql"], indirect=True)
def test_gpu_stages_share_two_gpus_with_distinct_devices(tmp_path, db_env) -> None:
    stages = {f"train{i}": {"gpus": 1} for i in range(8)}
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": pipeline(stages)})
    log = tmp_path / "probe.log"
    res = lauf_dvc(root, "repro", "-j", "8", "--resources", "gpus=2", log=log, env=db_env)
    assert res.returncode == 0, res.stderr
    runs = intervals(log)
    assert sorted(runs) == sorted(stages)
    assert all("end" in r for r in runs.values())
    assert most_at_once(runs) == 2  # never more than 2 (and the two GPUs were used)
    assert {r["CUDA_VISIBLE_DEVICES"] for r in runs.values()} <= {"0", "1"}
    for a, b in overlapping(runs):
        assert runs[a]["CUDA_VISIBLE_DEVICES"] != runs[b]["CUDA_VISIBLE_DEVICES"], (a, b)
    assert lauf_dvc(root, "status", "--json", log=log, env=db_env).returncode == 0


@pytest.mark.parametrize("db_env", ["sqlite", "postgresql"], indirect=True)
def test_a_group_of_limit_one_never_runs_two_members_at_once(tmp_path, db_env) -> None:
    stages = {f"api{i}": {"group": "api"} for i in range(4)}
    stages |= {f"quota{i}": {"group": "quota"} for i in range(4)}
    stages |= {"free": {}}
    text = pipeline(stages, seconds=0.5, groups={"quota": 2})  # api: no limit given, so 1
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": text})
    log = tmp_path / "probe.log"
    res = lauf_dvc(root, "repro", "-j", "4", log=log, env=db_env)
    assert res.returncode == 0, res.stderr
    runs = intervals(log)
    assert sorted(runs) == sorted(stages)
    assert most_at_once(runs, {f"api{i}" for i in range(4)}) == 1
    assert most_at_once(runs, {f"quota{i}" for i in range(4)}) <= 2
    # an undeclared stage is no group member: the env is the one the worker had
    assert runs["free"]["CUDA_VISIBLE_DEVICES"] == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_two_core_stages_on_a_four_core_host(tmp_path) -> None:
    stages = {f"fit{i}": {"cpus": 2} for i in range(6)}
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": pipeline(stages)})
    log = tmp_path / "probe.log"
    env = {"LAUF_DVC_RESOURCES": "cpus=4"}
    res = lauf_dvc(root, "repro", "-j", "8", log=log, env=env)
    assert res.returncode == 0, res.stderr
    runs = intervals(log)
    assert sorted(runs) == sorted(stages)
    assert most_at_once(runs) == 2
    assert {(r["LAUF_DVC_CPUS"], r["OMP_NUM_THREADS"]) for r in runs.values()} == {("2", "2")}
    # -j 8 but 6 stages, 2 at once: never more workers than could have work
    assert len(list((root / ".dvc/tmp/lauf/workers").iterdir())) == 6


def test_jobs_auto_starts_as_many_workers_as_the_capacity_keeps_busy(tmp_path) -> None:
    stages = {f"s{i}": {} for i in range(6)}
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": pipeline(stages, 0.1)})
    log = tmp_path / "probe.log"
    res = lauf_dvc(root, "repro", "-j", "auto", "--resources", "cpus=3", log=log)
    assert res.returncode == 0, res.stderr
    assert len(list((root / ".dvc/tmp/lauf/workers").iterdir())) == 3
    assert most_at_once(intervals(log)) <= 3


def test_a_stage_no_host_can_hold_is_said_at_once_and_exits_10(tmp_path) -> None:
    stages = {"big": {"gpus": 2}, "small": {"gpus": 1}, "plain": {}}
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": pipeline(stages, 0.1)})
    log = tmp_path / "probe.log"
    res = lauf_dvc(root, "repro", "-j", "2", "--resources", "gpus=1", log=log)
    assert res.returncode == ExitCode.NO_WORKER == 10, res.stderr
    assert sorted(intervals(log)) == ["plain", "small"]
    warning = [line for line in res.stderr.splitlines() if "'big'" in line]
    assert warning and "needs gpus=2, the host has 1" in warning[0]
    assert "- big: not run: it needs gpus=2, the host has 1" in res.stdout
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("lauf-dvc: error: 1 stage(s) not run"), res.stderr


def test_a_lone_worker_says_what_the_stage_it_cannot_take_needs(tmp_path) -> None:
    stages = {"big": {"gpus": 2}, "plain": {}}
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": pipeline(stages, 0.1)})
    log = tmp_path / "probe.log"
    res = lauf_dvc(root, "worker", "--resources", "gpus=1", log=log)
    assert res.returncode == ExitCode.NO_WORKER, res.stderr
    assert "big waits: needs gpus=2, the most any worker has is 1" in res.stderr


@pytest.mark.parametrize(
    ("meta", "args", "message"),
    [
        ({"mem": "lots"}, (), "meta.lauf.mem: expected an amount of memory"),
        ({"gpus": -1}, (), "meta.lauf.gpus: gpus: expected a whole number >= 0"),
        ({"resources": {"cpus": 2}}, (), "cpus is a key of meta.lauf itself"),
        ({}, ("--resources", "gpus=x"), "gpus: expected a whole number >= 0"),
        ({}, ("--resources", "gpus"), "expected NAME=AMOUNT"),
    ],
)
def test_bad_resources_are_one_line_and_exit_3(tmp_path, meta, args, message) -> None:
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE,
                                         "dvc.yaml": pipeline({"s": meta}, 0.1)})  # fmt: skip
    res = lauf_dvc(root, "repro", *args, log=tmp_path / "probe.log")
    assert res.returncode == ExitCode.CONFIG == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "probe.log").exists()


def test_a_killed_worker_gives_its_gpu_back_when_its_heartbeat_expires(tmp_path) -> None:
    """Two workers of one host, one GPU: the one holding it is killed (SIGKILL, its
    command with it) while the other waits; once the dead one's heartbeat expires, the
    other reaps it, runs the stage again and gets the GPU."""
    stages = {"first": {"gpus": 1}, "second": {"gpus": 1}}
    root = init_repo(tmp_path / "repo", {"probe.py": PROBE, "dvc.yaml": pipeline(stages, 1.5)})
    log = tmp_path / "probe.log"
    env = {**os.environ, "PROBE_LOG": str(log), "LAUF_DVC_RESOURCES": "gpus=1",
           "LAUF_DVC_HEARTBEAT_INTERVAL": "0.5", "LAUF_DVC_HEARTBEAT_TIMEOUT": "2"}  # fmt: skip
    cmd = [sys.executable, "-m", "lauf_dvc", "worker"]
    workers = [subprocess.Popen([*cmd, "--identifier", f"w{i}"], cwd=root, env=env,
                                start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in (1, 2)]  # fmt: skip
    db = root / ".dvc" / "tmp" / "lauf" / "lauf.sqlite"
    holder = None
    deadline = time.time() + 90
    while holder is None:  # the worker holding the GPU, once both are registered
        assert time.time() < deadline, "no stage started"
        time.sleep(0.05)
        if not db.exists():
            continue
        try:
            with sqlite3.connect(db) as conn:
                registered = conn.execute("SELECT count(*) FROM lauf_workers").fetchone()[0]
                held = conn.execute("SELECT worker, devices FROM lauf_assignments").fetchall()
        except sqlite3.OperationalError:  # the first worker is creating the tables
            continue
        if registered == 2 and held:
            ((holder, devices),) = held
            assert devices == "0"
    doomed = next(p for p, name in zip(workers, ("w1", "w2"), strict=True) if name == holder)
    os.killpg(doomed.pid, signal.SIGKILL)  # the worker and its stage's command
    doomed.wait()
    survivor = next(p for p in workers if p is not doomed)
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    runs = intervals(log)
    assert sorted(runs) == ["first", "second"] and all("end" in r for r in runs.values())
    assert {r["CUDA_VISIBLE_DEVICES"] for r in runs.values()} == {"0"}
    with sqlite3.connect(db) as conn:
        killed = conn.execute(
            "SELECT task_id, reason FROM lauf_events WHERE state = 'killed'"
        ).fetchall()
        states = dict(conn.execute("SELECT id, state FROM lauf_tasks").fetchall())
    assert len(killed) == 1 and f"worker {holder} stopped sending heartbeats" in killed[0][1]
    assert len(states) == 2 and set(states.values()) == {"completed"}, states
