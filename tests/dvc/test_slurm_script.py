"""docs/slurm.md's job script, run the way SLURM runs an array of it, on this machine.

There is no batch system here. What SLURM does with an array job is start the script
once per array task, with ``SLURM_ARRAY_JOB_ID``/``SLURM_ARRAY_TASK_ID`` (and after a
requeue ``SLURM_RESTART_COUNT``) in its environment, on whatever node; when a node dies
(or at the time limit) every process of the task is killed. This test does exactly that
with ``bash``: the preparation commands of section 1 and the job script of section 2
are taken from the document as they are, except the lines the document marks ``EDIT``
(the checkout and the venv; for PostgreSQL, the database block the script says to keep).

Three array tasks run a pipeline; the task running stage ``b2`` is killed with its whole
process group in the middle of the command (a node failure); the other two reap it after
the heartbeat timeout and one of them runs ``b2`` again; the killed task is requeued
and joins. Everything must end as the document promises: every stage completed once,
``dvc.lock`` complete, ``dvc status`` clean, the kill in the audit trail under the
worker name the script sets, every surviving task exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from pipelines import dvc_yaml
from test_crash import CRASH, MARKS_ENV, SLOW_ENV, alive, crash_stage, read_runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

DOC = Path(__file__).parents[2] / "docs" / "slurm.md"
DOC_REPO, DOC_VENV = "/shared/projects/my-pipeline", "/shared/envs/lauf"
DOC_PG = re.compile(r'^# (export LAUF_DVC_DB=)"postgresql\+psycopg://[^"]*"$', re.M)
JOB_ID = "4242"


def doc_blocks() -> tuple[str, str]:
    """(section 1's preparation commands, section 2's job script), as in the document."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    prepare = next(b for b in blocks if "core.hardlink_lock" in b)
    script = next(b for b in blocks if b.startswith("#!/bin/bash") and "#SBATCH" in b)
    return prepare, script


def edited(text: str, root: Path, venv: Path) -> str:
    """The document's text with the lines it marks EDIT filled in for this machine."""
    assert DOC_REPO in text and DOC_VENV in text
    return text.replace(DOC_REPO, str(root)).replace(DOC_VENV, str(venv))


def venv_dir(tmp_path: Path) -> Path:
    """This test's venv (``bin/activate`` puts lauf-dvc and dvc on PATH), or, when the
    tests run without one, a stand-in whose ``activate`` does just that."""
    prefix = Path(sys.prefix)
    if (prefix / "bin" / "activate").is_file() and (prefix / "bin" / "lauf-dvc").is_file():
        return prefix
    shim = tmp_path / "venv"
    (shim / "bin").mkdir(parents=True)
    (shim / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    return shim


def pipeline() -> dict[str, str]:
    """a -> b1, b2, b3 -> c; b2's first run sleeps (the node dies under it). The short
    heartbeat settings are the `vars: lauf:` keys docs/slurm.md section 3 shows."""
    stages = {
        "a": crash_stage(["out/a.txt"], ["=a"]),
        "b1": crash_stage(["out/b1.txt"], ["out/a.txt", "=1"]),
        "b2": crash_stage(["out/b2.txt"], ["out/a.txt", "=2"]),
        "b3": crash_stage(["out/b3.txt"], ["out/a.txt", "=3"]),
        "c": crash_stage(["out/c.txt"], ["out/b1.txt", "out/b2.txt", "out/b3.txt"]),
    }
    fast = {"lauf": {"heartbeat_interval": 0.5, "heartbeat_timeout": 3}}
    return {"crash.py": CRASH, "dvc.yaml": dvc_yaml(stages, vars=[fast])}


def array_task(script: Path, task: int, env: dict[str, str], logs: Path,
               restart: int = 0) -> subprocess.Popen[bytes]:  # fmt: skip
    """One array task as SLURM starts it: its own session (killed as a whole), output to
    the file the script's ``--output`` names."""
    task_env = {**env, "SLURM_ARRAY_JOB_ID": JOB_ID, "SLURM_ARRAY_TASK_ID": str(task),
                "SLURM_JOB_ID": f"{JOB_ID}{task}", "SLURM_RESTART_COUNT": str(restart)}  # fmt: skip
    with open(logs / f"lauf-dvc-{JOB_ID}_{task}.{restart}.out", "wb") as out:
        return subprocess.Popen(["bash", str(script)], env=task_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def owner(pid: int, tasks: dict[int, subprocess.Popen[bytes]]) -> int:
    """The array task whose process tree holds ``pid``."""
    by_pid = {p.pid: t for t, p in tasks.items()}
    for proc in [psutil.Process(pid), *psutil.Process(pid).parents()]:
        if proc.pid in by_pid:
            # the script ends in `exec lauf-dvc worker`: the task's process is the worker
            assert "worker" in proc.cmdline(), proc.cmdline()
            return by_pid[proc.pid]
    raise AssertionError(f"stage process {pid} belongs to no array task")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["sqlite-flufl", "postgresql"])
def test_the_documented_array_job_survives_a_dead_node(backend, request, dvc_repo, dvctools,
                                                        tmp_path):  # fmt: skip
    root = dvc_repo(pipeline(), name="pipeline")
    venv = venv_dir(tmp_path)
    prepare, script = (edited(b, root, venv) for b in doc_blocks())
    if backend == "postgresql":  # "keep ONE of the two blocks"
        url = request.getfixturevalue("pg_url")
        assert "export LAUF_DVC_LOCK=flufl\n" in script and DOC_PG.search(script)
        script = script.replace("export LAUF_DVC_LOCK=flufl\n", "# export LAUF_DVC_LOCK=flufl\n")
        script = DOC_PG.sub(lambda m: f'{m[1]}"{url}"', script)
    job = tmp_path / "lauf-worker.sbatch"
    job.write_text(script)
    marks, logs = tmp_path / "marks", root / "slurm-logs"
    marks.mkdir()
    logs.mkdir()
    env = {**os.environ, MARKS_ENV: str(marks), SLOW_ENV: "b2=120"}
    for key in ("LAUF_DVC_DB", "LAUF_DVC_LOCK", "LAUF_DVC_IDENTIFIER"):
        env.pop(key, None)

    # 1. Prepare the repository (once), on the login node.
    leftovers = [root / ".dvc" / "tmp" / name for name in ("lock", "rwlock.lock")]
    for path in leftovers:  # what DVC's default lock (zc.lockfile) leaves after a command
        path.write_text(f" {os.getpid()}\n")
    prep = subprocess.run(["bash", "-euo", "pipefail", "-c", prepare], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert prep.returncode == 0, prep.stdout + prep.stderr
    assert "b2" in prep.stdout  # `lauf-dvc status` lists the stages
    assert not any(path.exists() for path in leftovers)
    dvc_config = [sys.executable, "-m", "dvc", "config", "core.hardlink_lock"]
    config = subprocess.run(dvc_config, cwd=root, env=env, capture_output=True, text=True)
    assert config.stdout.strip() == "true"

    # 2. sbatch --array=1-3; 3. the node running b2 dies; the task is requeued.
    tasks = {t: array_task(job, t, env, logs) for t in (1, 2, 3)}
    deadline = time.monotonic() + 90
    while not read_runs(marks).get("b2"):
        assert time.monotonic() < deadline, "b2 never started"
        assert all(p.poll() is None for p in tasks.values()), (logs, list(logs.iterdir()))
        time.sleep(0.05)
    first = read_runs(marks)["b2"][0]
    victim = owner(first.pid, tasks)
    os.killpg(tasks[victim].pid, signal.SIGKILL)
    assert tasks[victim].wait(timeout=10) == -signal.SIGKILL
    survivors = [p for t, p in tasks.items() if t != victim]
    requeued = array_task(job, victim, env, logs, restart=1)
    for proc in [*survivors, requeued]:
        assert proc.wait(timeout=120) == 0, [f.read_text() for f in logs.iterdir()]

    # What the document promises.
    host = socket.gethostname().split(".")[0]
    job_env = {**env}
    if backend == "postgresql":
        job_env["LAUF_DVC_DB"] = url
    else:
        job_env["LAUF_DVC_LOCK"] = "flufl"
    events = json.loads(lauf_cli(root, job_env, "history", "b2", "--json"))
    states = [e["state"] for e in events]
    killed = [e for e in events if e["state"] == "killed"]
    assert len(killed) == 1 and states.count("completed") == 1, events
    dead = f"{JOB_ID}_{victim}.0@{host}"  # the name the script gives the killed task
    assert killed[0]["reason"] == f"worker {dead} stopped sending heartbeats", killed
    finisher = next(e["worker"] for e in events if e["state"] == "completed")
    assert finisher != dead and re.fullmatch(rf"{JOB_ID}_[123]\.[01]@{host}", finisher)
    rows = json.loads(lauf_cli(root, job_env, "status", "--json"))
    assert {r["stage"]: (r["state"], r["stale"]) for r in rows} == {
        s: ("completed", False) for s in ("a", "b1", "b2", "b3", "c")
    }, rows
    for stage in ("a", "b1", "b3", "c"):
        assert states_of(root, job_env, stage).count("completed") == 1, stage
    runs = read_runs(marks)
    assert [r.end is None for r in runs["b2"]] == [True, False], runs["b2"]
    assert not alive(first.pid)  # the dead node's command is gone
    assert sorted(dvctools.read_locks(root)["dvc.lock"]["stages"]) == ["a", "b1", "b2", "b3", "c"]
    assert dvctools.dvc_status(root) == {}
    if backend == "sqlite-flufl":  # the NFS-safe mode: a rollback journal, no WAL files
        db = root / ".dvc" / "tmp" / "lauf" / "lauf.sqlite"
        assert db.exists() and not Path(f"{db}-wal").exists()


def lauf_cli(root: Path, env: dict[str, str], *args: str) -> str:
    """``lauf-dvc ARGS`` from the login node, with the job's database settings."""
    proc = subprocess.run([sys.executable, "-m", "lauf_dvc", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def states_of(root: Path, env: dict[str, str], stage: str) -> list[str]:
    return [e["state"] for e in json.loads(lauf_cli(root, env, "history", stage, "--json"))]
