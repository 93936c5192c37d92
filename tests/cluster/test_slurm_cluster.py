"""docs/slurm.md on a real SLURM cluster (one node, started by ``slurm_cluster.py``).

The job script of docs/slurm.md, as the page prints it (only the lines it marks EDIT
filled in, and the array size and CPUs given on ``sbatch``'s command line, which wins
over ``#SBATCH`` lines), goes through ``sbatch --array``; eight array tasks run at once
on two cores (the partition oversubscribes). Then ``lauf-dvc submit`` writes and submits
its own script. Each run is checked for what the page promises:

- every stage ran exactly once (each stage's command appends to a log outside the
  repository), ``dvc status`` is clean, every ``dvc.lock`` equals the one ``dvc repro``
  writes on a copy, every array task is COMPLETED (exit 0:0);
- with ``scancel`` of the array task that runs the long stage, in the middle of it:
  the stage is ``killed`` with a reason naming that job's task (the worker got SIGTERM
  and gave it back), runs again on another task and completes; the run completes; no
  stage process is left behind.

Once on SQLite with the shared-filesystem setting (``LAUF_DVC_LOCK=flufl``, the page's
block (a)), SQLite WAL (neither block: a local disk), and PostgreSQL (block (b)).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from cli_helpers import dvc_status, isolated, lauf, make_repo  # noqa: F401 (fixture)
from slurm_cluster import Cluster

from lauf_dvc.errors import ExitCode

pytestmark = [
    pytest.mark.usefixtures("isolated"),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

DOC = Path(__file__).parents[2] / "docs" / "slurm.md"
EXAMPLE = Path(__file__).parents[2] / "examples" / "dvc_project"
DOC_REPO, DOC_VENV = "/shared/projects/my-pipeline", "/shared/envs/lauf"
DOC_FLUFL = "export LAUF_DVC_LOCK=flufl\n"
DOC_PG = re.compile(r'^# (export LAUF_DVC_DB=)"postgresql\+psycopg://[^"]*"$', re.M)
LOG_ENV, SLEEP_ENV = "LAUF_CLUSTER_STAGE_LOG", "LAUF_CLUSTER_SLEEP"

#: Each stage: log its start (with the array task it runs in), sleep, write its output
#: from its inputs (the same bytes wherever and however often it runs), log its end.
STAGE = r"""
import hashlib, json, os, sys, time
name, out, *deps = sys.argv[1:]
log = os.environ.get("LAUF_CLUSTER_STAGE_LOG")
task = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
def note(event):
    if log:
        line = json.dumps({"stage": name, "event": event, "pid": os.getpid(), "task": task})
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (line + "\n").encode())
        os.close(fd)
note("start")
sleep = dict(kv.split("=") for kv in os.environ.get("LAUF_CLUSTER_SLEEP", "").split(",") if kv)
time.sleep(float(sleep.get(name, sleep.get("*", 0))))
h = hashlib.sha256(name.encode())
for dep in deps:
    h.update(open(dep, "rb").read())
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
open(out, "w").write(h.hexdigest() + "\n")
note("end")
"""


def pipeline() -> dict[str, str]:
    """prepare -> six feat stages (foreach) -> train -> sub/dvc.yaml:report: eight
    stages can run at once, and the second dvc.yaml is only selected with -P."""
    feats = [f"f{i}" for i in range(6)]
    stages = {
        "prepare": {
            "cmd": "python3 stage.py prepare out/prepared.txt data.txt",
            "deps": ["data.txt", "stage.py"],
            "outs": ["out/prepared.txt"],
        },
        "feat": {
            "foreach": feats,
            "do": {
                "cmd": "python3 stage.py feat@${item} out/feat/${item}.txt out/prepared.txt",
                "deps": ["out/prepared.txt", "stage.py"],
                "outs": ["out/feat/${item}.txt"],
            },
        },
        "train": {
            "cmd": "python3 stage.py train out/model.txt "
            + " ".join(f"out/feat/{f}.txt" for f in feats),
            "deps": [f"out/feat/{f}.txt" for f in feats],
            "outs": ["out/model.txt"],
        },
    }
    fast = {"lauf": {"heartbeat_interval": 0.5, "heartbeat_timeout": 3}}
    report = {
        "report": {
            "cmd": "python3 ../stage.py sub/dvc.yaml:report summary.txt ../out/model.txt",
            "deps": ["../out/model.txt"],
            "outs": ["summary.txt"],
        }
    }
    return {
        "stage.py": STAGE,
        "data.txt": "raw data\n",
        "dvc.yaml": yaml.safe_dump({"vars": [fast], "stages": stages}, sort_keys=False),
        "sub/dvc.yaml": yaml.safe_dump({"stages": report}, sort_keys=False),
    }


STAGES = ["prepare", *(f"feat@f{i}" for i in range(6)), "train", "sub/dvc.yaml:report"]


def doc_script(root: Path, backend: str, pg: str | None) -> str:
    """Section 2's job script as printed, with its EDIT lines filled in, and ONE of its
    two database blocks kept (SQLite WAL: neither, the default on a local disk)."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    script = next(b for b in blocks if b.startswith("#!/bin/bash") and "#SBATCH --array" in b)
    assert DOC_REPO in script and DOC_VENV in script and DOC_FLUFL in script
    script = script.replace(DOC_REPO, str(root)).replace(DOC_VENV, sys.prefix)
    if backend != "sqlite-flufl":
        script = script.replace(DOC_FLUFL, f"# {DOC_FLUFL}")
    if backend == "postgresql":
        assert DOC_PG.search(script)
        script = DOC_PG.sub(lambda m: f'{m[1]}"{pg}"', script)
    return script


def reference_locks(root: Path, tmp_path: Path) -> dict[str, object]:
    """Every dvc.lock ``dvc repro -P`` writes on a copy of the freshly committed ``root``."""
    copy = tmp_path / "reference"
    shutil.copytree(root, copy, symlinks=True)
    env = {k: v for k, v in os.environ.items() if k not in (LOG_ENV, SLEEP_ENV)}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "-P", "-q"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return locks(copy)


def locks(root: Path) -> dict[str, object]:
    return {
        str(p.relative_to(root)): yaml.safe_load(p.read_text())
        for p in sorted(root.rglob("dvc.lock"))
        if ".dvc" not in p.parts
    }


def runs(log: Path) -> dict[str, list[dict[str, object]]]:
    """Per stage, its runs in order: {"task", "pid", "ended"}."""
    out: dict[str, list[dict[str, object]]] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        entry = json.loads(line)
        if entry["event"] == "start":
            out.setdefault(entry["stage"], []).append({**entry, "ended": False})
        else:
            mine = [r for r in out[entry["stage"]] if r["pid"] == entry["pid"]]
            mine[-1]["ended"] = True
    return out


def stage_processes(root: Path) -> list[psutil.Process]:
    """Live processes running a command of this repository's stages."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "cwd"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE or not info["cmdline"]:
            continue
        if "stage.py" in " ".join(info["cmdline"]) and str(root) in (info["cwd"] or ""):
            found.append(proc)
    return found


def job_env(backend: str, pg: str | None) -> dict[str, str]:
    """The login node's view of the job's database (the lock mode: the database's own)."""
    return {"LAUF_DVC_DB": pg} if backend == "postgresql" and pg else {}


def assert_done(
    root: Path, expected_locks: dict[str, object], backend: str, pg: str | None
) -> None:
    res = lauf(root, "status", "--json", env=job_env(backend, pg))
    assert res.code == 0, res.err
    rows = {r["stage"]: (r["state"], r["stale"]) for r in json.loads(res.out)}
    assert rows == {s: ("completed", False) for s in STAGES}, rows
    assert dvc_status(root) == {}
    assert locks(root) == expected_locks
    db = root / ".dvc" / "tmp" / "lauf" / "lauf.sqlite"
    if backend == "sqlite-flufl":  # a rollback journal all along (header bytes 18-19)
        assert db.read_bytes()[18:20] == b"\x01\x01" and not Path(f"{db}-wal").exists()
    elif backend == "sqlite-wal":
        assert db.read_bytes()[18:20] == b"\x02\x02"
    else:
        assert not db.exists()


@pytest.fixture(params=["sqlite-flufl", "sqlite-wal", "postgresql"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return request.param, pg


def submit_doc_job(
    cluster: Cluster, tmp_path: Path, backend: tuple[str, str | None], tasks: int, sleep: str
) -> tuple[Path, Path, str, dict[str, object]]:
    """A fresh repository prepared as section 1 says; the page's script submitted as an
    array of ``tasks``. (root, stage log, job id, the reference dvc.lock files)."""
    name, pg = backend
    root = make_repo(tmp_path / "repo", pipeline())
    expected = reference_locks(root, tmp_path)
    for command in (
        [sys.executable, "-m", "dvc", "config", "core.hardlink_lock", "true"],
        ["rm", "-f", ".dvc/tmp/lock", ".dvc/tmp/rwlock.lock"],
    ):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    script = tmp_path / "lauf-worker.sbatch"
    script.write_text(doc_script(root, name, pg))
    (root / "slurm-logs").mkdir()
    log = tmp_path / "stages.log"
    env = {**os.environ, LOG_ENV: str(log), SLEEP_ENV: sleep}
    job = cluster.sbatch(script, f"--array=0-{tasks - 1}", "--cpus-per-task=1", cwd=root, env=env)
    return root, log, job, expected


def task_logs(root: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n{p.read_text()}" for p in sorted((root / "slurm-logs").glob("*.out"))
    )


@pytest.mark.timeout(300)
def test_the_documented_job_script_runs_every_stage_once(cluster, backend, tmp_path):
    root, log, job, expected = submit_doc_job(cluster, tmp_path, backend, 8, "*=1")
    tasks = cluster.wait(job, 8, timeout=240)
    states = {t: (f["JobState"], f["ExitCode"]) for t, f in tasks.items()}
    assert states == {f"{job}_{i}": ("COMPLETED", "0:0") for i in range(8)}, task_logs(root)
    done = runs(log)
    assert {s: [r["ended"] for r in done.get(s, [])] for s in STAGES} == {
        s: [True] for s in STAGES
    }, done
    assert len({r[0]["task"] for r in done.values()}) > 1  # the stages were shared out
    assert_done(root, expected, *backend)


@pytest.mark.timeout(300)
def test_scancel_of_the_task_running_a_long_stage(cluster, backend, tmp_path):
    root, log, job, expected = submit_doc_job(cluster, tmp_path, backend, 4, "*=0.2,train=8")
    deadline = time.monotonic() + 180
    while not runs(log).get("train"):
        assert time.monotonic() < deadline, task_logs(root)
        time.sleep(0.1)
    time.sleep(1)  # in the middle of the stage's command
    first = runs(log)["train"][0]
    victim = str(first["task"])
    assert victim.startswith(f"{job}_") and psutil.pid_exists(int(first["pid"]))
    cluster.run("scancel", victim)
    tasks = cluster.wait(job, 4, timeout=240)
    states = {t: f["JobState"] for t, f in tasks.items()}
    assert states == {t: "CANCELLED" if t == victim else "COMPLETED" for t in tasks}, (
        states,
        task_logs(root),
    )
    assert len(states) == 4

    # train: killed, with the name of the cancelled task, then run again elsewhere
    history = lauf(root, "history", "train", "--json", env=job_env(*backend))
    assert history.code == 0, history.err
    events = json.loads(history.out)
    killed = [e for e in events if e["state"] == "killed"]
    dead = f"{victim}.0@{cluster.node}"  # the worker name the script gives each task
    # scancel sends SIGTERM first: the worker gives its stage back itself (docs/slurm.md 3)
    assert [e["reason"] for e in killed] == [f"terminated (SIGTERM) in worker {dead}"]
    assert [e["state"] for e in events].count("completed") == 1
    train = runs(log)["train"]
    assert [r["ended"] for r in train] == [False, True], train
    assert train[1]["task"] != victim
    done = runs(log)
    for stage in STAGES:
        assert [r["ended"] for r in done[stage]][-1] and sum(
            r["ended"] for r in done[stage]
        ) == 1, stage
    assert stage_processes(root) == []  # the cancelled task's command is gone
    assert (
        not psutil.pid_exists(int(first["pid"]))
        or psutil.Process(int(first["pid"])).status() == psutil.STATUS_ZOMBIE
    )
    assert_done(root, expected, *backend)


@pytest.mark.timeout(300)
def test_submit_runs_the_example_pipeline(cluster, tmp_path):
    """``lauf-dvc submit --workers 4`` in a copy of examples/dvc_project, as a user does:
    no script written by hand, every stage of both dvc.yaml files, `dvc status` clean."""
    root = tmp_path / "example"
    shutil.copytree(EXAMPLE, root)
    make_repo(root, {})
    subprocess.run(
        [sys.executable, "-m", "dvc", "config", "core.hardlink_lock", "true"], cwd=root, check=True
    )
    subprocess.run(["rm", "-f", ".dvc/tmp/lock", ".dvc/tmp/rwlock.lock"], cwd=root, check=True)
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = lauf(root, "submit", "--workers", "4", "--time", "00:10:00", env=env)
    assert res.code == 0, res.err
    found = re.fullmatch(
        r"submitted job (\d+): 4 worker\(s\); script (\S+), logs in (\S+)\n"
        r"follow it with: lauf-dvc watch\n",
        res.out,
    )
    assert found, res.out
    job, script, logs = found[1], Path(found[2]), Path(found[3])
    cluster.jobs.append(job)  # cancelled at the end should the test fail before it ends
    assert script.is_file() and "#SBATCH --array=1-4" in script.read_text()
    tasks = cluster.wait(job, 4, timeout=240)
    outs = "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    assert {t: f["JobState"] for t, f in tasks.items()} == {
        f"{job}_{i}": "COMPLETED" for i in range(1, 5)
    }, outs
    assert dvc_status(root) == {}
    status = json.loads(lauf(root, "status", "--json").out)
    assert len(status) == 8 and all(r["state"] == "completed" for r in status), status
    assert (root / "report" / "summary.md").is_file()


def test_a_job_sbatch_refuses_is_one_line_naming_the_script(cluster, tmp_path):
    """docs/troubleshooting.md's `sbatch refused` line, from a real sbatch."""
    root = make_repo(tmp_path / "repo", pipeline())
    res = lauf(root, "submit", "--workers", "2", "--partition", "nope", env=cluster.env)
    errors = [line for line in res.err_lines if not line.startswith("lauf-dvc: warning:")]
    assert res.code == ExitCode.SUBMIT and res.out == "", res.err
    (script,) = (root / ".dvc" / "tmp" / "lauf" / "slurm").glob("*.sbatch")
    assert errors == [
        "lauf-dvc: error: sbatch refused the job: sbatch: error: Batch job submission failed: "
        f"Invalid partition name specified; the script is {script}"
    ]


ENV_PROBE = r"""
import json, os, sys
keys = ("LAUF_DVC_CPUS", "OMP_NUM_THREADS", "SLURM_CPUS_ON_NODE", "SLURM_JOB_ID")
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
open(sys.argv[1], "w").write(json.dumps({k: os.environ.get(k) for k in keys}))
"""


@pytest.mark.timeout(300)
def test_stage_resources_come_from_each_jobs_allocation(cluster, tmp_path):
    """Stages that declare ``cpus: 2`` under `lauf-dvc submit --cpus-per-task 2`: each
    array task's worker detects its job's 2 CPUs (SLURM_CPUS_ON_NODE), counts them in a
    pool of its own (two jobs on one node do not share), and tells the command."""
    stages = {f"fit{i}": {"cmd": f"python probe.py out/fit{i}.json", "deps": ["probe.py"],
                          "outs": [f"out/fit{i}.json"], "meta": {"lauf": {"cpus": 2}}}
              for i in range(4)}  # fmt: skip
    files = {"probe.py": ENV_PROBE, "dvc.yaml": yaml.safe_dump({"stages": stages})}
    root = make_repo(tmp_path / "repo", files)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.hardlink_lock", "true"],
                   cwd=root, check=True)  # fmt: skip
    env = {**cluster.env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = lauf(root, "submit", "--workers", "2", "--cpus-per-task", "2", env=env)
    assert res.code == 0, res.err
    job = re.match(r"submitted job (\d+)", res.out)[1]
    cluster.jobs.append(job)
    tasks = cluster.wait(job, 2, timeout=240)
    assert {f["JobState"] for f in tasks.values()} == {"COMPLETED"}, tasks
    seen = [json.loads((root / "out" / f"fit{i}.json").read_text()) for i in range(4)]
    assert {(s["LAUF_DVC_CPUS"], s["OMP_NUM_THREADS"], s["SLURM_CPUS_ON_NODE"]) for s in seen} == {
        ("2", "2", "2")
    }
    db = root / ".dvc" / "tmp" / "lauf" / "lauf.sqlite"
    with sqlite3.connect(db) as conn:
        pools = dict(conn.execute("SELECT pool, capacity FROM lauf_workers").fetchall())
    assert all(":slurm-" in pool for pool in pools), pools
    assert {json.loads(cap)["cpus"] for cap in pools.values()} == {2}
    assert dvc_status(root) == {}
