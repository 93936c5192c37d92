"""Issue 14: a run never hangs in silence, signals are handled, secrets stay secret.
Real repositories, real ``lauf-dvc`` processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from pipelines import MARK, MARKS_ENV, SLEEP_ENV, dvc_yaml, stage
from repro_helpers import lauf

from lauf_dvc.errors import ExitCode
from lauf_dvc.states import TaskState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]


def gpu_pipeline() -> dict[str, str]:
    gpu = {**stage("out/g.txt", "out/a.txt"), "meta": {"lauf": {"requires": ["gpu"]}}}
    stages = {"a": stage("out/a.txt", "=a"), "g": gpu, "after": stage("out/c.txt", "out/g.txt")}
    return {"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)}


def test_a_stage_no_worker_may_take_is_said_at_once_and_does_not_hang(dvc_repo) -> None:
    root = dvc_repo(gpu_pipeline())
    res = lauf(root, "repro", "-j", "2", sleep="0")
    assert res.code == ExitCode.NO_WORKER, res.out + res.err
    assert set(res.ran) == {"a"}  # the rest ran
    warning, error = res.err.strip().splitlines()
    assert warning.startswith("lauf-dvc: warning: stage 'g': it requires label(s) gpu")
    assert error == (
        "lauf-dvc: error: 2 stage(s) not run: no worker could take them or what they wait "
        "for; start `lauf-dvc worker --labels gpu`"
    )
    assert "- g: not run: it requires label(s) gpu, which no worker had" in res.out
    assert "- after: not run: it waits for g" in res.out
    # a worker without the label says so and leaves; one with it finishes the run
    res = lauf(root, "worker", sleep="0")
    assert res.code == ExitCode.NO_WORKER, res.err
    assert "cannot take 1 stage(s), which require other labels: g" in res.err
    assert "2 stage(s) left that no live worker may take (they need label(s) gpu)" in res.err
    res = lauf(root, "worker", "--labels", "gpu", sleep="0")
    assert res.code == 0, res.err
    assert set(res.ran) == {"g", "after"}


def long_pipeline() -> dict[str, str]:
    stages = {"slow": stage("out/slow.txt", "=slow"), "other": stage("out/other.txt", "=o"),
              "after": stage("out/after.txt", "out/slow.txt")}  # fmt: skip
    return {"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)}


def started(marks: Path, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` stage commands have started (their marker files exist)."""
    deadline = time.monotonic() + timeout
    while len(list(marks.iterdir())) < count:
        assert time.monotonic() < deadline, "the stages never started"
        time.sleep(0.05)


def commands_left(root: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if "mark.py" in " ".join(proc.info["cmdline"]) and proc.info["cwd"] == str(root):
                found.append(proc)
    return found


@pytest.mark.parametrize("command", [("worker",), ("repro", "-j", "2")], ids=["worker", "repro"])
def test_sigterm_stops_the_command_and_gives_the_stage_back(dvc_repo, tmp_path, command):
    """Issue 14, point 3: what `timeout`, `scancel` and preemption send first."""
    root = dvc_repo(long_pipeline())
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, MARKS_ENV: str(marks), SLEEP_ENV: "60"}
    proc = subprocess.Popen([sys.executable, "-m", "lauf_dvc", *command], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    started(marks, 1 if command[0] == "worker" else 2)
    begin = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED, out + err
    assert time.monotonic() - begin < 15  # not the heartbeat timeout (60 s)
    assert "lauf-dvc: terminated (SIGTERM)" in err
    assert not commands_left(root)
    from lauf_dvc.scheduler.store import Store

    store = Store(f"sqlite:///{root / '.dvc/tmp/lauf/lauf.sqlite'}")
    rows = {r.id: r for r in store.task_rows()}
    assert TaskState.RUNNING not in {r.state for r in rows.values()}
    killed = [e for e in store.history("slow") if e.state == TaskState.KILLED]
    assert killed and killed[-1].reason.startswith("terminated (SIGTERM)")
    store.dispose()
    res = lauf(root, "repro", "-j", "2", sleep="0")  # taken again at once, and finished
    assert res.code == 0, res.err
    assert {"slow", "after"} <= set(res.ran)


def test_no_stage_command_sees_the_database_password(dvc_repo, pg_server, monkeypatch) -> None:
    """Issue 14, point 4, with a real PostgreSQL server: forked and spawned workers."""
    import uuid

    name, secret = f"t_{uuid.uuid4().hex[:12]}", "pw-" + uuid.uuid4().hex[:12]
    pg_server.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{secret}';")
    pg_server.psql(f"CREATE DATABASE {name} OWNER {name};")
    query = pg_server.get_uri().partition("?")[2]  # the server's socket directory
    pg_url = f"postgresql+psycopg://{name}:{secret}@/{name}?{query}"
    stages = {f"env{i}": {"cmd": f"env > env{i}.txt", "outs": [f"env{i}.txt"]} for i in range(2)}
    for spawn in ("0", "1"):
        root = dvc_repo({"dvc.yaml": dvc_yaml(stages)}, name=f"repo{spawn}")
        monkeypatch.setenv("LAUF_DVC_SPAWN", spawn)
        res = lauf(root, "--db", pg_url, "repro", "-j", "2")
        assert res.code == 0, res.err
        for i in range(2):
            env = (root / f"env{i}.txt").read_text()
            assert secret not in env and "LAUF_DVC_DB" not in env


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:hunter2secret@127.0.0.1:1/x",
        "postgresql+psycopg://u@127.0.0.1:1/x?password=hunter2secret",
    ],
    ids=["userinfo", "query"],
)
def test_a_password_is_masked_in_every_form(dvc_repo, url) -> None:
    root = dvc_repo({"dvc.yaml": dvc_yaml({"s": {"cmd": "true"}})})
    res = lauf(root, "--db", url, "repro")
    assert res.code == ExitCode.STORE, res.err
    assert "hunter2secret" not in res.err + res.out
    assert "***" in res.err


def test_a_frozen_stage_whose_output_is_missing_fails_as_under_dvc(dvc_repo, dvctools) -> None:
    """Issue 14, point 8: it was `up to date`, and the stage after it failed instead."""
    stages = {"source": {**stage("out/source.txt", "=s"), "frozen": True},
              "use": stage("out/use.txt", "out/source.txt")}  # fmt: skip
    root = dvc_repo({"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)})
    (root / "out").mkdir()
    (root / "out" / "source.txt").write_text("given\n")
    assert lauf(root, "repro", "-j", "2", sleep="0").code == 0  # verified and recorded
    (root / "out" / "source.txt").unlink()
    rows = {r["stage"]: r for r in json.loads(lauf(root, "status", "--json").out)}
    assert rows["source"]["stale"], rows  # as `dvc status`: its output is deleted
    assert dvctools.dvc_status(root)
    res = lauf(root, "repro", "-j", "2", sleep="0")
    assert res.code == ExitCode.STAGE_FAILED, res.out + res.err
    assert "lauf-dvc: stage source failed" in res.err and "out/source.txt" in res.err
    assert not res.ran  # `use` did not run on a missing input
    with pytest.raises(Exception, match="failed to reproduce 'source'"):
        dvctools.reproduce(root)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB filesystem (tmpfs: needs root, as CI runs; elsewhere this fails loudly
    rather than skip, so the full-disk case is never silently untested)."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)],
                             capture_output=True, text=True)  # fmt: skip
    assert mounted.returncode == 0, f"cannot mount a 3 MiB tmpfs: {mounted.stderr.strip()}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_one_line_exit_74_and_the_next_run_goes_on_at_once(small_disk, monkeypatch):
    """Issue 14, point 6: workers exited 5, repro reported "0 failed" and the stages
    stayed running until the dead workers' heartbeats expired."""
    from dvc_repos import init_repo

    big = {"a": {"cmd": "head -c 1200000 /dev/urandom > a.bin", "outs": ["a.bin"]},
           "b": {"cmd": "head -c 1200000 /dev/urandom > b.bin", "outs": ["b.bin"]}}  # fmt: skip
    root = init_repo(small_disk / "repo", {"dvc.yaml": dvc_yaml(big)})
    # heartbeats valid for an hour: the dead workers' stages must be reaped at once by
    # pid in the second run, which would otherwise wait for them and time out (180 s)
    monkeypatch.setenv("LAUF_DVC_HEARTBEAT_TIMEOUT", "3600")
    res = lauf(root, "repro", "-j", "2")
    assert res.code == ExitCode.OS_ERROR, res.out + res.err
    (line,) = res.err.strip().splitlines()
    assert "database or disk is full; free space on its disk" in line, line
    for name in ("a.bin", "b.bin"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / ".dvc" / "cache", ignore_errors=True)
    (root / "dvc.yaml").write_text(dvc_yaml(big).replace("1200000", "1000"))
    res = lauf(root, "repro", "-j", "2")  # the dead workers' stages: reaped at once
    assert res.code == 0, res.out + res.err
