"""Kill a worker at any instant and lose nothing; Ctrl-C stops a run cleanly (issue 6).

Each kill test runs ``lauf-dvc repro -j 3`` on a small pipeline while one worker SIGKILLs
itself at one fault-injection point (``LAUF_DVC_FAULT``, see lauf_dvc/faults.py) on
stage ``b2``; the other workers go on, reap the dead one after the (short) heartbeat
timeout, and retry its stage. Then: dvc.lock parses and holds every stage, ``dvc status``
is clean (every entry matches its outputs, all in the cache), ``lauf-dvc status --json``
agrees (all completed, none stale), every output is complete and is the result of the
last run of its stage that finished, each stage completed exactly once in the database,
and no command of a dead worker is still alive. Each point is run ROUNDS times in a row
in one test (the same repository, a new parameter value each round, so every stage runs
again); the soak test kills random workers of a 120-stage run.

``LAUF_TEST_CRASH_ROUNDS`` (default 4) sets the rounds per point: each round is about
7 s of a 2-core machine, so ``make test`` keeps to 4; ``LAUF_TEST_CRASH_ROUNDS=25 make
test`` is the long run, worth doing after any change to the runner or the scheduler.

Stage commands are ``crash.py`` (written into each repository): it appends ``start`` and
``end`` lines (run id, pid, time) to ``$LAUF_TEST_MARKS/<stage>.runs`` and writes each
output in two parts, the last line ``END <run id>``, so a torn or stale output shows.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import psutil
import pytest
from pipelines import dvc_yaml, params_yaml

from lauf_dvc.cli import main as lauf_main
from lauf_dvc.errors import ExitCode
from lauf_dvc.scheduler.store import Store
from lauf_dvc.states import TaskState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

ROUNDS = int(os.environ.get("LAUF_TEST_CRASH_ROUNDS", "4"))
MARKS_ENV = "LAUF_TEST_MARKS"
SLOW_ENV = "LAUF_TEST_SLOW"  # "<stage>=<seconds>": the stage's first run sleeps that long
LAUF_DB = Path(".dvc") / "tmp" / "lauf" / "lauf.sqlite"
# Dead workers are noticed after 2 s; a live one proves itself every 0.5 s. Retry
# budgets are not renewed when a stage completes (only by `lauf-dvc reset`), and every
# round kills b2 once more: without a large budget round 3 would give up on it.
FAST = {
    "LAUF_DVC_HEARTBEAT_TIMEOUT": "2",
    "LAUF_DVC_HEARTBEAT_INTERVAL": "0.5",
    "LAUF_DVC_MAX_KILLED_RETRIES": "100",
}

CRASH = '''\
"""usage: crash.py OUT... -- INPUT...; INPUT is a path or =text."""
import hashlib, os, sys, time, uuid
from urllib.parse import quote

stage = os.environ["DVC_STAGE"]
runs = os.path.join(os.environ["LAUF_TEST_MARKS"], quote(stage, safe="") + ".runs")
run = uuid.uuid4().hex[:12]

def note(what):
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{what} {run} {os.getpid()} {time.time()}\\n".encode())
    os.close(fd)

first = not os.path.exists(runs)
note("start")
print(f"{stage}: started", flush=True)
slow, _, seconds = os.environ.get("LAUF_TEST_SLOW", "").partition("=")
if first and slow == stage:
    time.sleep(float(seconds))
split = sys.argv.index("--")
digest = hashlib.sha256()
for item in sys.argv[split + 1:]:
    if item.startswith("="):
        digest.update(item.encode())
    else:
        with open(item, "rb") as fh:
            digest.update(fh.read())
for out in sys.argv[1:split]:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        fh.write(f"{out} {digest.hexdigest()} run={run}\\n")
        fh.flush()
        time.sleep(0.01)
        fh.write(f"END {run}\\n")
note("end")
'''


def crash_stage(
    outs: list[str], inputs: list[str], script: str = "crash.py", **extra: Any
) -> dict[str, Any]:
    entry: dict[str, Any] = {"cmd": " ".join(["python3", script, *outs, "--", *inputs])}
    deps = [i for i in inputs if not i.startswith("=")]
    if deps:
        entry["deps"] = deps
    return {**entry, **extra, "outs": outs}


def small_pipeline(compound_b2: bool = False) -> dict[str, str]:
    """a -> b1, b2 (two outputs), b3 -> c; ``a`` reads the parameter ``round``."""
    b2 = crash_stage(["out/b2.txt", "out/b2.extra"], ["out/a.txt"])
    if compound_b2:  # the shell forks the command: PDEATHSIG reaches only the shell
        b2["cmd"] += " && echo done"
    stages = {
        "a": crash_stage(["out/a.txt"], ["=a"], params=["round"]),
        "b1": crash_stage(["out/b1.txt"], ["out/a.txt", "=1"]),
        "b2": b2,
        "b3": crash_stage(["out/b3.txt"], ["out/a.txt", "=3"]),
        "c": crash_stage(["out/c.txt"], ["out/b1.txt", "out/b2.txt", "out/b3.txt"]),
    }
    return {"crash.py": CRASH, "params.yaml": params_yaml({"round": 0}),
            "dvc.yaml": dvc_yaml(stages)}  # fmt: skip


# -- what a run left behind ---------------------------------------------------------------


@dataclass
class Run:
    run: str
    pid: int
    start: float
    end: float | None = None


def read_runs(marks: Path) -> dict[str, list[Run]]:
    """Every run of every stage recorded in ``marks``, in start order."""
    out: dict[str, list[Run]] = {}
    for path in marks.glob("*.runs"):
        by_id: dict[str, Run] = {}
        for line in path.read_text().splitlines():
            what, run, pid, when = line.split()
            if what == "start":
                by_id[run] = Run(run, int(pid), float(when))
            else:
                by_id[run].end = float(when)
        out[unquote(path.name.removesuffix(".runs"))] = sorted(by_id.values(),
                                                                key=lambda r: r.start)  # fmt: skip
    return out


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def lauf_status(root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """``lauf-dvc status --json`` (in this process: the CLI's own code path), by stage."""
    old = os.getcwd()
    os.chdir(root)
    try:
        capsys.readouterr()
        assert lauf_main(["status", "--json"]) == 0
        return {row["stage"]: row for row in json.loads(capsys.readouterr().out)}
    finally:
        os.chdir(old)


def completions(root: Path, stages: list[str], since: float) -> dict[str, list[TaskState]]:
    """The states each stage went through since ``since``, from the audit trail."""
    store = Store(f"sqlite:///{root / LAUF_DB}")
    try:
        return {s: [e.state for e in store.history(s) if e.time >= since] for s in stages}
    finally:
        store.dispose()


def assert_consistent(
    root: Path, dvctools: Any, capsys: pytest.CaptureFixture[str], marks: Path,
    outs: Mapping[str, list[str]], since: float,
) -> dict[str, list[Run]]:  # fmt: skip
    """Everything the issue asks of a run a worker died in; returns the runs by stage."""
    stages = sorted(outs)
    recorded = []  # every dvc.lock parses, and holds an entry for each of its stages
    for path, lock in dvctools.read_locks(root).items():
        prefix = "" if path == "dvc.lock" else path.replace("dvc.lock", "dvc.yaml:")
        recorded += [prefix + name for name in lock["stages"]]
    assert sorted(recorded) == stages
    assert dvctools.dvc_status(root) == {}  # every entry matches its outputs, in the cache
    rows = lauf_status(root, capsys)
    assert {s: (r["state"], r["stale"]) for s, r in rows.items()} == {
        s: ("completed", False) for s in stages
    }, rows
    events = completions(root, stages, since)
    for stage in stages:
        assert events[stage].count(TaskState.COMPLETED) == 1, (stage, events[stage])
    runs = read_runs(marks)
    for stage, paths in outs.items():
        ended = [r for r in runs[stage] if r.end is not None]
        assert ended, f"{stage}: no run finished"
        final = ended[-1].run  # what the last finished run wrote is what is committed
        for path in paths:
            lines = (root / path).read_text().splitlines()
            assert lines[0].endswith(f"run={final}") and lines[-1] == f"END {final}", (
                stage, path, lines, runs[stage])  # fmt: skip
        for run in runs[stage]:
            if run.end is None:  # a killed run: nothing of it may still be running
                assert not alive(run.pid), f"{stage}: run {run.run} (pid {run.pid}) survived"
    assert not list((root / ".dvc/tmp/lauf/commands").glob("*.json")), "command records left"
    return runs


# -- one worker dies at each point ----------------------------------------------------------

OUTS = {
    "a": ["out/a.txt"],
    "b1": ["out/b1.txt"],
    "b2": ["out/b2.txt", "out/b2.extra"],
    "b3": ["out/b3.txt"],
    "c": ["out/c.txt"],
}
# How often b2's command runs in a round: a kill before the command or after the outputs
# reached the cache costs nothing (the retry restores b2 from DVC's run cache, or finds
# it up to date); a kill between the command's start and the commit runs it again.
B2_RUNS = {
    "before-command": 1,
    "during-command": 2,
    "before-commit": 2,
    "during-save": 2,
    "during-dump": 1,
    "after-dump": 1,
}


@pytest.mark.timeout(600)  # ten rounds of ~4 s; much more on a loaded machine
@pytest.mark.parametrize("point", list(B2_RUNS))
def test_a_worker_killed_at_any_point_loses_nothing(point, dvc_repo, dvctools, capsys, tmp_path):
    root = dvc_repo(small_pipeline(), name="crash")
    for n in range(ROUNDS):
        if point == "during-command":  # every other round, a command the shell forks
            dvctools.write_files(root, {"dvc.yaml": small_pipeline(n % 2 == 1)["dvc.yaml"]})
        dvctools.write_files(root, {"params.yaml": params_yaml({"round": n})})
        marks, once = tmp_path / f"marks-{n}", tmp_path / f"once-{n}"
        marks.mkdir()
        env = {**os.environ, **FAST, MARKS_ENV: str(marks), "LAUF_DVC_FAULT": f"{point}@b2",
               "LAUF_DVC_FAULT_ONCE": str(once)}  # fmt: skip
        if point == "during-command":  # still running when the stage is retried
            env[SLOW_ENV] = "b2=30"
        since = time.time()
        res = subprocess.run(
            [sys.executable, "-m", "lauf_dvc", "repro", "-j", "3"],
            cwd=root, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        context = f"round {n}: {res.stdout}{res.stderr}"
        assert res.returncode == 0, context
        assert (once / quote(f"{point}@b2", safe="")).exists(), f"never fired: {context}"
        assert "was killed by SIGKILL" in res.stderr, context  # and the run went on
        runs = assert_consistent(root, dvctools, capsys, marks, OUTS, since)
        assert len(runs["b2"]) == B2_RUNS[point], (context, runs["b2"])
        assert all(len(runs[s]) == 1 for s in OUTS if s != "b2"), runs
        states = completions(root, ["b2"], since)["b2"]
        assert TaskState.KILLED in states, states  # reaped, then retried


@pytest.mark.timeout(300)
def test_a_worker_killed_holding_dvcs_hard_link_lock_does_not_stop_the_others(
    dvc_repo, dvctools, capsys, tmp_path
):
    """With core.hardlink_lock (docs/slurm.md) DVC's repository lock outlives its holder:
    the others break it (repolock.held) instead of waiting for it forever."""
    root = dvc_repo(small_pipeline(), name="hardlink")
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.hardlink_lock", "true"],
                   cwd=root, check=True)  # fmt: skip
    for n in range(3):
        dvctools.write_files(root, {"params.yaml": params_yaml({"round": n})})
        marks, once = tmp_path / f"marks-{n}", tmp_path / f"once-{n}"
        marks.mkdir()
        env = {**os.environ, **FAST, MARKS_ENV: str(marks), "LAUF_DVC_FAULT": "during-dump@b2",
               "LAUF_DVC_FAULT_ONCE": str(once)}  # fmt: skip
        since = time.time()
        res = subprocess.run([sys.executable, "-m", "lauf_dvc", "repro", "-j", "3"], cwd=root,
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        context = f"round {n}: {res.stdout}{res.stderr}"
        assert res.returncode == 0 and "was killed by SIGKILL" in res.stderr, context
        logs = "".join(p.read_text() for p in (root / ".dvc/tmp/lauf/workers").glob("*.log"))
        broke = r"broke DVC's lock \S+/\.dvc/tmp/lock: its holder .* has exited"
        assert re.search(broke, logs), logs
        assert_consistent(root, dvctools, capsys, marks, OUTS, since)
        assert sorted(p.name for p in (root / ".dvc/tmp").iterdir()) == ["btime", "lauf",
                                                                         "rwlock"]  # fmt: skip


def test_fault_points_are_checked(monkeypatch) -> None:
    from lauf_dvc.errors import ConfigError
    from lauf_dvc.faults import armed, fault

    monkeypatch.delenv("LAUF_DVC_FAULT", raising=False)
    fault("during-dump", "x")  # unset: nothing happens
    monkeypatch.setenv("LAUF_DVC_FAULT", "during-dump@x, after-dump")
    assert armed("during-dump", "x") and not armed("during-dump", "y")
    assert armed("after-dump", "y") and not armed("before-command", "x")
    monkeypatch.setenv("LAUF_DVC_FAULT", "during-dumb")
    with pytest.raises(ConfigError, match=r"LAUF_DVC_FAULT.*during-dumb.*known: before-command"):
        armed("during-dump")


# -- soak: random workers killed all along -------------------------------------------------


def soak_pipeline(count: int = 200, files: int = 10) -> tuple[dict[str, str], dict[str, list]]:
    """``count`` stages in ``files`` dvc.yaml files (p0/ ... p9/), the files and the outputs
    by stage. Stage s{i} of p{k} reads the output of s{i - count/files} of p{k-1}: chains
    of ``files`` stages, each across every file.

    Several files, not one: DVC validates a whole dvc.yaml each time it loads one of its
    stages (0.25 s for 200 stages), and a 200-stage file would make this test about DVC's
    loading speed rather than about killed workers.
    """
    per = count // files
    tree: dict[str, str] = {"crash.py": CRASH}
    outs: dict[str, list] = {}
    for k in range(files):
        stages = {}
        for i in range(k * per, (k + 1) * per):
            inputs = [f"=s{i}"] + ([f"../p{k - 1}/s{i - per:03d}.txt"] if k else [])
            stages[f"s{i:03d}"] = crash_stage([f"s{i:03d}.txt"], inputs, "../crash.py")
            outs[f"p{k}/dvc.yaml:s{i:03d}"] = [f"p{k}/s{i:03d}.txt"]
        tree[f"p{k}/dvc.yaml"] = dvc_yaml(stages)
    return tree, outs


MAX_SOAK_KILLS = 40


@pytest.mark.timeout(600)
def test_soak_random_workers_killed_and_restarted(dvc_repo, dvctools, capsys, tmp_path):
    files, outs = soak_pipeline(count=120)
    root = dvc_repo(files, name="soak")
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, **FAST, MARKS_ENV: str(marks)}
    cmd = [sys.executable, "-m", "lauf_dvc", "worker", "--no-sync"]
    logs = tmp_path / "logs"
    logs.mkdir()
    logs_of: dict[int, Path] = {}

    def start() -> subprocess.Popen[bytes]:
        with open(logs / f"worker-{time.monotonic_ns()}.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
            logs_of[proc.pid] = Path(log.name)
            return proc

    rng = random.Random(6)
    since = time.time()
    workers = [start() for _ in range(8)]
    # not a timing: a bound so that a run that can never finish fails rather than hang
    kills, deadline = 0, time.monotonic() + 480
    while any(w.poll() is None for w in workers):
        assert time.monotonic() < deadline, "the soak run did not finish"
        time.sleep(rng.uniform(1.0, 3.0))
        running = [w for w in workers if w.poll() is None]
        # A bounded number of kills: kills come at a wall-clock rate, and on a loaded
        # machine (a worker's start-up alone taking seconds) an unbounded rate would
        # outpace the progress any correct scheduler can make.
        if running and kills < MAX_SOAK_KILLS:
            victim = rng.choice(running)  # killed, or terminated as scancel does first
            victim.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
            victim.wait()
            kills += 1
            workers.append(start())
    # 143: terminated, its stage given back; -SIGTERM: terminated while it still started
    # (before lauf-dvc's handler is in place there is nothing to give back)
    ended = (0, -signal.SIGKILL, 143, -signal.SIGTERM)
    bad = [(w.pid, w.returncode, logs_of[w.pid].read_text()[-600:])  # why, if it failed
           for w in workers if w.returncode not in ended]  # fmt: skip
    assert not bad, bad
    assert kills >= 5
    assert_consistent(root, dvctools, capsys, marks, outs, since)
    reaped = [s for s, states in completions(root, list(outs), since).items()
              if TaskState.KILLED in states]  # fmt: skip
    assert reaped, "no worker was killed while it ran a stage"
    print(f"soak: {kills} workers killed, {len(reaped)} stages reaped and retried")


# -- Ctrl-C -----------------------------------------------------------------------------------


def interrupt_pipeline(ignore_sigint: bool = False) -> dict[str, str]:
    """quick; slow -> after. ``slow``'s first run takes long (and may ignore Ctrl-C)."""
    slow = crash_stage(["out/slow.txt"], ["=slow"])
    if ignore_sigint:
        slow["cmd"] = f"trap '' INT; {slow['cmd']} && echo done"  # the shell forks it
    stages = {"quick": crash_stage(["out/quick.txt"], ["=q"]), "slow": slow,
              "after": crash_stage(["out/after.txt"], ["out/slow.txt"])}  # fmt: skip
    return {"crash.py": CRASH, "dvc.yaml": dvc_yaml(stages)}


def start_repro(root: Path, marks: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **FAST, MARKS_ENV: str(marks), SLOW_ENV: "slow=60"}
    return subprocess.Popen(
        [sys.executable, "-m", "lauf_dvc", *(args or ("repro", "-j", "2"))],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def _default_sigint() -> None:
    """As at a terminal: a test suite started in the background (`make test &`, some CI
    runners) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_slow_and_quick(root: Path, marks: Path, proc: subprocess.Popen[str]) -> Run:
    """Until ``slow``'s command runs and ``quick`` is completed; returns slow's run."""
    deadline = time.monotonic() + 60
    while True:
        runs = read_runs(marks)
        if runs.get("slow") and completions(root, ["quick"], 0)["quick"][-1:] == [
            TaskState.COMPLETED
        ]:
            return runs["slow"][0]
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def assert_interrupted(
    root: Path, proc: subprocess.Popen[str], slow: Run, dvctools, capsys, only: bool = True
) -> None:
    """Exit 130, "lauf-dvc: interrupted" on stderr (its only line unless a worker's own
    events went there too), slow's command gone, slow failed with reason "interrupted"."""
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, out + err
    lines = err.strip().splitlines()
    assert (lines if only else lines[-1:]) == ["lauf-dvc: interrupted"], err
    assert "Traceback" not in err
    assert not alive(slow.pid)
    rows = lauf_status(root, capsys)
    assert (rows["slow"]["state"], rows["slow"]["reason"]) == ("failed", "interrupted"), rows
    assert (rows["quick"]["state"], rows["after"]["state"]) == ("completed", "upstream_failed")
    assert sorted(dvctools.read_locks(root)["dvc.lock"]["stages"]) == ["quick"]
    assert not list((root / ".dvc/tmp/lauf/commands").glob("*.json"))


def test_ctrl_c_fails_running_stages_as_interrupted_and_exits_130(
    dvc_repo, dvctools, capsys, tmp_path
) -> None:
    root = dvc_repo(interrupt_pipeline())
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = start_repro(root, marks)
    slow = wait_for_slow_and_quick(root, marks, proc)
    os.kill(proc.pid, signal.SIGINT)
    assert_interrupted(root, proc, slow, dvctools, capsys)
    assert read_runs(marks)["slow"][0].end is None

    again = start_repro(root, marks)  # the next run picks up where this one stopped
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, out + err
    assert dvctools.dvc_status(root) == {}
    assert {r["state"] for r in lauf_status(root, capsys).values()} == {"completed"}


def test_a_second_ctrl_c_kills_at_once(dvc_repo, dvctools, capsys, tmp_path) -> None:
    root = dvc_repo(interrupt_pipeline(ignore_sigint=True))
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = start_repro(root, marks)
    slow = wait_for_slow_and_quick(root, marks, proc)
    os.kill(proc.pid, signal.SIGINT)  # the command ignores it: its worker waits for it...
    time.sleep(1.0)
    assert proc.poll() is None and alive(slow.pid)
    os.kill(proc.pid, signal.SIGINT)  # ...until the second Ctrl-C kills everything
    assert_interrupted(root, proc, slow, dvctools, capsys)


def test_ctrl_c_twice_on_a_worker_kills_its_command_at_once(
    dvc_repo, dvctools, capsys, tmp_path
) -> None:
    root = dvc_repo(interrupt_pipeline(ignore_sigint=True))
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = start_repro(root, marks, "worker")  # one `lauf-dvc worker`: quick, then slow
    slow = wait_for_slow_and_quick(root, marks, proc)
    os.kill(proc.pid, signal.SIGINT)  # the worker asks its command to stop, and waits...
    time.sleep(1.0)
    assert proc.poll() is None and alive(slow.pid)
    os.kill(proc.pid, signal.SIGINT)  # ...until Ctrl-C again: SIGKILL, fail, exit
    assert_interrupted(root, proc, slow, dvctools, capsys, only=False)


# -- layer 1: the command dies with its worker ---------------------------------------------

_DRIVER = """
import sys
from pathlib import Path
from lauf_dvc.dvc.run import command
if sys.argv[1] == "preexec":
    command._setpriv = lambda: None  # the fallback: a preexec_fn sets the signal
argv = [sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"]
out = command.Output(Path(sys.argv[2]), None)
command.run_command(argv, {}, out, address="s", records=Path(sys.argv[3]))
"""


def _death_signal_ways() -> list[str]:
    """How this machine sets the parent-death signal: the preexec_fn always (on Linux),
    setpriv where util-linux has its --pdeathsig."""
    from lauf_dvc.dvc.run import command

    return ["preexec"] + (["setpriv"] if command._setpriv() is not None else [])


@pytest.mark.parametrize("how", _death_signal_ways())
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_simple_command_dies_the_instant_its_worker_does(how, tmp_path) -> None:
    """SIGKILL a process running a command: the kernel kills the command at once (no
    other worker has to come and find it), with setpriv and with the preexec_fn."""
    log = tmp_path / "out.log"
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, how, str(log), str(tmp_path / "rec")])
    deadline = time.monotonic() + 60
    while not (log.is_file() and log.read_text().strip()):
        assert time.monotonic() < deadline and driver.poll() is None, "the command never started"
        time.sleep(0.05)
    pid = int(log.read_text().split()[0])
    assert alive(pid)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, f"command {pid} outlived its worker ({how})"
        time.sleep(0.05)
