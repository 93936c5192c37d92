"""The bad-input matrix (issue 6, point 3): every way users get it wrong, one test each.

Each test breaks a real repository (git + DVC, one good ``lauf-dvc repro`` behind it,
so there is a dvc.lock, outputs, a cache and a database to lose), runs ``lauf-dvc`` as a
user does (``python -m lauf_dvc`` in a subprocess) and checks three things: the exact
one line on stderr (it names the file, key or stage, and what to do), the documented
exit code (docs/troubleshooting.md), and that nothing was lost or half written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_helpers import (  # noqa: F401 (fixture)
    DB,
    dvc_status,
    isolated,
    lauf,
    make_repo,
    snapshot,
)

from lauf_dvc.errors import ExitCode
from lauf_dvc.scheduler.schema import SCHEMA_VERSION

pytestmark = [
    pytest.mark.usefixtures("isolated"),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),  # pygtrie in DVC
]

DVC_YAML = """\
stages:
  prepare:
    cmd: mkdir -p out && cp data/raw.txt out/prepared.txt
    deps:
      - data/raw.txt
    outs:
      - out/prepared.txt
  train:
    cmd: cp out/prepared.txt out/model.txt
    deps:
      - out/prepared.txt
    outs:
      - out/model.txt
"""
FILES = {"dvc.yaml": DVC_YAML, "data/raw.txt": "raw\n"}
RUN_AND_JOIN = (("repro", "-j", "2"), ("worker",))
ERROR = "lauf-dvc: error: "


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository where `lauf-dvc repro` ran once, successfully."""
    root = make_repo(tmp_path / "repo", FILES)
    first = lauf(root, "repro", "-j", "2")
    assert first.code == 0, first.out + first.err
    assert (root / "dvc.lock").exists() and (root / DB).exists()
    return root


def edit(root: Path, path: str, change: Callable[[str], str]) -> None:
    file = root / path
    file.write_text(change(file.read_text()))


def assert_refused(
    root: Path, commands: tuple[tuple[str, ...], ...], code: ExitCode, message: str
) -> None:
    """Each command fails with ``code`` and exactly the one line ``message`` on stderr,
    prints nothing on stdout, and changes nothing (workspace, cache, database)."""
    before = snapshot(root)
    for command in commands:
        res = lauf(root, *command)
        assert (res.code, res.err_lines) == (code, [message]), (command, res.err)
        assert res.out == "", (command, res.out)
        assert snapshot(root) == before, command


# -- dvc.yaml ------------------------------------------------------------------------------


def test_malformed_yaml(repo: Path) -> None:
    bad = "      - data/raw.txt\n     - data/other.txt"  # one space short
    edit(repo, "dvc.yaml", lambda t: t.replace("      - data/raw.txt", bad))
    message = (
        f"{ERROR}dvc.yaml: invalid YAML: did not find expected key at line 6, column 6; "
        "fix the syntax"
    )
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.PIPELINE, message)


def test_unknown_stage_target(repo: Path) -> None:
    message = (
        f"{ERROR}unknown target 'trian': no stage 'trian' in dvc.yaml; run `dvc stage list "
        "--all` to see the stages"
    )
    commands = (("repro", "trian"), ("worker", "trian"), ("status", "trian"))
    assert_refused(repo, commands, ExitCode.PIPELINE, message)


def test_dependency_cycle(repo: Path) -> None:
    edit(repo, "dvc.yaml", lambda t: t.replace("      - data/raw.txt", "      - out/model.txt"))
    message = (
        f"{ERROR}dependency cycle between stages prepare, train: each needs, through its "
        "deps, an output of another; remove one of those deps to break the cycle"
    )
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.PIPELINE, message)


def test_missing_dependency_file(repo: Path) -> None:
    """As under ``dvc repro`` (issue 12): a warning up front, then the stage that needs
    the file fails when its turn comes (what does not need it still runs, with -k);
    dvc.lock and the cache lose nothing."""
    (repo / "data" / "raw.txt").unlink()
    status = lauf(repo, "status", "--json")  # status answers first: it is how one finds out
    assert status.code == 0, status.err
    assert "data/raw.txt deleted" in json.loads(status.out)[0]["reason"]
    warning = (
        "lauf-dvc: warning: stage 'prepare': dependency 'data/raw.txt' does not exist and no "
        "stage produces it: the stage will fail; restore it (git checkout, dvc pull, --pull) "
        "or fix its deps"
    )
    failed = (
        "lauf-dvc: stage prepare failed: No such file or directory: data/raw.txt; see its log "
        "above, fix it, then run `lauf-dvc repro` again"
    )
    lock, before = (repo / "dvc.lock").read_bytes(), snapshot(repo)["cache"]
    for command in (("repro", "-j", "2"), ("worker",)):
        res = lauf(repo, *command)
        assert res.code == ExitCode.STAGE_FAILED, (command, res.err)
        assert res.err_lines[0] == warning, res.err
        if command[0] == "repro":
            assert res.err_lines == [warning, failed], res.err
        assert (repo / "dvc.lock").read_bytes() == lock
        assert snapshot(repo)["cache"] == before
    dry = lauf(repo, "repro", "--dry")
    assert (dry.code, dry.err_lines) == (0, [warning]), dry.err


def test_output_declared_twice(repo: Path) -> None:
    edit(repo, "dvc.yaml", lambda t: t + "  copy:\n    cmd: cp x out/model.txt\n    outs:\n"
                                          "      - out/model.txt\n")  # fmt: skip
    message = (
        f"{ERROR}output 'out/model.txt' is declared by copy and train: an output may belong "
        "to one stage only, remove it from all but one"
    )
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.PIPELINE, message)


# -- lauf settings in dvc.yaml -------------------------------------------------------------


def test_unknown_lauf_key(repo: Path) -> None:
    edit(repo, "dvc.yaml", lambda t: "vars:\n  - lauf:\n      jbos: 2\n" + t)
    message = (
        f"{ERROR}dvc.yaml: unknown key 'lauf.jbos' in vars (known: jobs, db, fingerprint, "
        "failure_policy, heartbeat_interval, heartbeat_timeout, max_failed_retries, "
        "max_killed_retries, lock, disable_plugins, resources, groups)"
    )
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.CONFIG, message)


def test_an_error_keeps_its_exit_code_when_stderr_cannot_be_written(repo: Path) -> None:
    """A full disk under the log a worker's stderr goes to: the line is lost, its exit
    code is not (it was 70, an "internal error", when printing the error failed)."""
    edit(repo, "dvc.yaml", lambda t: "vars:\n  - lauf:\n      jbos: 2\n" + t)
    with open("/dev/full", "w") as full:  # every write: ENOSPC
        proc = subprocess.run([sys.executable, "-m", "lauf_dvc", "status"], cwd=repo,
                              stdout=subprocess.DEVNULL, stderr=full, timeout=120)  # fmt: skip
    assert proc.returncode == ExitCode.CONFIG


def test_lauf_key_of_the_wrong_type(repo: Path) -> None:
    edit(repo, "dvc.yaml", lambda t: "vars:\n  - lauf:\n      jobs: many\n" + t)
    message = (
        f"{ERROR}dvc.yaml: vars lauf.jobs: expected a number of workers >= 1 or auto, got 'many'"
    )
    # -j 2 overrides the value, but a broken file is an error all the same
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.CONFIG, message)


def test_unknown_stage_meta_lauf_key(repo: Path) -> None:
    edit(repo, "dvc.yaml", lambda t: t + "    meta:\n      lauf:\n        retry: 2\n")
    message = (
        f"{ERROR}dvc.yaml:train: unknown key 'meta.lauf.retry' (known: requires, "
        "max_workers, retries, priority, fingerprint, cpus, gpus, mem, resources, group)"
    )
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.CONFIG, message)


def test_max_workers_above_one_on_a_dvc_stage(repo: Path) -> None:
    """Issue 14, point 1: refused up front (it used to kill its own first run)."""
    edit(repo, "dvc.yaml", lambda t: t + "    meta:\n      lauf:\n        max_workers: 2\n")
    message = (
        f"{ERROR}dvc.yaml:train: meta.lauf.max_workers: a DVC stage runs its command once; "
        "remove the key (spread the work inside the command, or make several stages with "
        "foreach)"
    )
    assert_refused(repo, (*RUN_AND_JOIN, ("status",)), ExitCode.CONFIG, message)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LAUF_DVC_HEARTBEAT_TIMEOUT": "nan"},
            "environment variable LAUF_DVC_HEARTBEAT_TIMEOUT: expected a finite number, got 'nan'",
        ),
        (
            {"LAUF_DVC_HEARTBEAT_TIMEOUT": "1e308"},
            "heartbeat_timeout (1e+308) must be at most 604800 s (a week)",
        ),
        (
            {"LAUF_DVC_HEARTBEAT_INTERVAL": "nan"},
            "environment variable LAUF_DVC_HEARTBEAT_INTERVAL: expected a finite number, got 'nan'",
        ),
        (
            {"LAUF_DVC_HEARTBEAT_INTERVAL": "1e-9"},
            "heartbeat_interval (1e-09) must be at least 0.05 s",
        ),
        (
            {"LAUF_DVC_HEARTBEAT_INTERVAL": "40"},
            "heartbeat_interval (40.0) must be at most half of heartbeat_timeout (60.0)",
        ),
        (
            {"LAUF_DVC_MAX_IDLE": "inf"},
            "environment variable LAUF_DVC_MAX_IDLE: expected a finite number, got 'inf'",
        ),
    ],
    ids=[
        "timeout-nan",
        "timeout-huge",
        "interval-nan",
        "interval-tiny",
        "interval-close",
        "max-idle-inf",
    ],
)
def test_bad_numbers_are_one_line_exit_3(repo: Path, env, message) -> None:
    """Issue 14, point 5: they crashed every worker (exit 70) or burnt a core."""
    before = snapshot(repo)
    commands = [("worker",)] if "MAX_IDLE" in next(iter(env)) else [*RUN_AND_JOIN, ("status",)]
    for command in commands:
        res = lauf(repo, *command, env=env)
        assert (res.code, res.err_lines) == (ExitCode.CONFIG, [ERROR + message]), res.err
        assert snapshot(repo) == before


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("prune", "--keep", "0"), ExitCode.USAGE, "--keep: expected an integer >= 1, got '0'"),
        (("worker", "--max-tasks", "-1"), ExitCode.USAGE, "--max-tasks: expected an integer >= 1"),
        (("reset", "nosuch"), ExitCode.PIPELINE, "no stage 'nosuch' in the run recorded"),
        (("history", "nosuch"), ExitCode.PIPELINE, "no history for stage 'nosuch'"),
    ],
)
def test_bad_arguments_are_usage_or_unknown_stage_errors(repo: Path, args, code, words) -> None:
    res = lauf(repo, *args)
    assert res.code == code, res.err
    assert words in res.err_lines[-1], res.err


# -- the database ----------------------------------------------------------------------------


def test_unreachable_database_never_shows_the_password(repo: Path) -> None:
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    message = (
        f"{ERROR}cannot connect to database postgresql+psycopg://u:***@127.0.0.1:1/x: "
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection '
        "refused; check that the server is up and the URL is right (--db, LAUF_DVC_DB or "
        "vars lauf.db)"
    )
    commands = tuple(("--db", url, *c) for c in (*RUN_AND_JOIN, ("status",), ("watch", "--once")))
    assert_refused(repo, commands, ExitCode.STORE, message)
    res = lauf(repo, "repro", env={"LAUF_DVC_DB": url})
    assert (res.code, res.err_lines) == (ExitCode.STORE, [message])
    assert "secret" not in res.err


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make ``paths`` read-only: chmod, and for root (whom chmod does not stop) the
    immutable attribute; restored on exit."""
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & 0o555)
    immutable = os.geteuid() == 0
    if immutable:
        res = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True, text=True)
        if res.returncode != 0:
            for p in paths:
                p.chmod(modes[p])
        assert res.returncode == 0, f"as root, this check needs chattr +i: {res.stderr.strip()}"
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
        for p in paths:
            p.chmod(modes[p])


def test_read_only_database(repo: Path) -> None:
    (repo / "data" / "raw.txt").write_text("raw, changed: prepare and train must run\n")
    db = repo / DB
    # SQLite's words differ: a read-only file, or (root, immutable) no file it may create
    messages = [
        f"{ERROR}database sqlite:///{db}: {detail}; make the database file and its "
        "directory writable, or use another --db"
        for detail in ("attempt to write a readonly database", "unable to open database file")
    ]
    before = snapshot(repo)
    with read_only(db, db.parent):
        for command in RUN_AND_JOIN:
            res = lauf(repo, *command)
            assert res.code == ExitCode.STORE and len(res.err_lines) == 1, res.err
            assert res.err_lines[0] in messages and res.out == ""
    assert snapshot(repo) == before


def test_database_of_another_schema_version(repo: Path) -> None:
    db = repo / DB
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE lauf_meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    message = (
        f"{ERROR}database sqlite:///{db} has lauf-dvc schema version 99, this lauf-dvc "
        f"needs {SCHEMA_VERSION}: delete it or use another --db"
    )
    commands = (*RUN_AND_JOIN, ("status",), ("history", "train"), ("watch", "--once"))
    assert_refused(repo, commands, ExitCode.STORE, message)


def journal(db: Path) -> tuple[int, int]:
    """Bytes 18 and 19 of the SQLite file: (1, 1) a rollback journal, (2, 2) WAL."""
    head = db.read_bytes()[:20]
    return head[18], head[19]


def test_a_flufl_database_is_never_switched_to_wal(tmp_path: Path) -> None:
    """A database made by the job's workers (``LAUF_DVC_LOCK=flufl``, docs/slurm.md) and
    looked at from a login node without that setting: every command follows the mode
    recorded in the file (status once switched it to WAL, and the next flufl worker back,
    which corrupts a database on a network filesystem); one that insists on the other
    mode is refused with one line and changes nothing."""
    root = make_repo(tmp_path / "repo", FILES)
    first = lauf(root, "repro", "-j", "2", env={"LAUF_DVC_LOCK": "flufl"})
    assert first.code == 0, first.err
    db = root / DB
    assert journal(db) == (1, 1)
    (root / "data" / "raw.txt").write_text("raw, changed: prepare and train are stale\n")
    for command in (("status",), ("watch", "--once"), ("history", "train"), ("repro", "--dry")):
        res = lauf(root, *command)
        assert res.code == 0, (command, res.err)
        assert journal(db) == (1, 1), command
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists(), command
    assert "stale" in lauf(root, "status").out
    message = (
        f"{ERROR}database sqlite:///{db} was created with lock: flufl, this process has "
        "lock: wal: set lock: flufl or auto (which follows the database), or delete the file "
        "while no worker runs to start over in the other mode (only the run history is lost)"
    )
    before = snapshot(root)
    for command in (("status",), ("worker",), ("repro", "-j", "2")):
        res = lauf(root, *command, env={"LAUF_DVC_LOCK": "wal"})
        assert (res.code, res.err_lines, res.out) == (ExitCode.STORE, [message], ""), command
    assert snapshot(root) == before and journal(db) == (1, 1)
    res = lauf(root, "repro", "-j", "2")  # the default follows the database
    assert res.code == 0 and "2 stage(s): 2 ran" in res.out, res.out + res.err
    assert journal(db) == (1, 1) and dvc_status(root) == {}


# -- DVC's own locks ------------------------------------------------------------------------

STALE = ".dvc/tmp/lock .dvc/tmp/rwlock.lock"


def test_lock_file_left_from_before_core_hardlink_lock(repo: Path) -> None:
    """The repository was used with DVC's default lock, which leaves its files behind; then
    switched to the hard-link lock (docs/slurm.md), which would wait for them forever."""
    assert all((repo / p).stat().st_nlink == 1 for p in STALE.split())
    dvc_config(repo, "core.hardlink_lock", "true")
    (repo / "data" / "raw.txt").write_text("raw, changed: prepare and train must run\n")
    message = (
        f"{ERROR}{STALE}: left by DVC's default lock before core.hardlink_lock was switched "
        "on; DVC's hard-link lock would wait for it forever. When no dvc or lauf-dvc command "
        f"runs on this repository (on any machine), run `rm -f {STALE}` in {os.path.realpath(repo)}"
    )
    assert_refused(repo, RUN_AND_JOIN, ExitCode.LOCK, message)  # before: hung for good
    subprocess.run(["rm", "-f", *STALE.split()], cwd=repo, check=True)  # what it says
    res = lauf(repo, "repro", "-j", "2")
    assert res.code == 0 and "2 stage(s): 2 ran" in res.out, res.out + res.err
    assert dvc_status(repo) == {}
    assert not any((repo / p).exists() for p in STALE.split())  # hard-link locks go away


def test_a_held_hard_link_lock_is_not_stale(repo: Path) -> None:
    from dvc.lock import make_lock

    from lauf_dvc.dvc import repolock
    from lauf_dvc.dvc.load.pipeline import make_repo as dvc_repo

    dvc_config(repo, "core.hardlink_lock", "true")
    subprocess.run(["rm", "-f", *STALE.split()], cwd=repo, check=True)
    lock = make_lock(str(repo / ".dvc/tmp/lock"), tmp_dir=str(repo / ".dvc/tmp"),
                     hardlink_lock=True)  # fmt: skip
    lock.lock()  # as a running dvc command holds it
    try:
        repolock._checked.discard(os.path.realpath(repo))
        dvc_repo(repo).close()  # checked: not refused (lauf-dvc would wait for the holder)
    finally:
        lock.unlock()


def test_a_repository_on_a_network_filesystem_without_hardlink_lock_is_warned(
    repo: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvc.repo import Repo

    from lauf_dvc.dvc import repolock

    mounts = f"server:/export {os.path.realpath(repo)} nfs4 rw 0 0\n"
    for hardlink, warned in (("false", True), ("true", False)):
        monkeypatch.setattr(repolock, "_checked", set())
        dvc_config(repo, "core.hardlink_lock", hardlink)
        caplog.clear()
        with Repo(str(repo)) as dvc:
            repolock.check(dvc, mounts=mounts)
            repolock.check(dvc, mounts=mounts)  # once per process
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if warned:
            assert len(warnings) == 1 and "network filesystem (nfs4)" in warnings[0], warnings
            assert "dvc config core.hardlink_lock true" in warnings[0]
        else:
            assert warnings == []
        subprocess.run(["rm", "-f", *STALE.split()], cwd=repo, check=True)


def dvc_config(root: Path, key: str, value: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", "config", key, value], cwd=root, check=True)


# -- plugins -------------------------------------------------------------------------------

NOTIFIER = """\
from lauf_dvc.hookspecs import hookimpl


@hookimpl
def lauf_task_state_changed(task_id, new):
    raise RuntimeError(f"cannot tell anyone that {task_id} is {new}")
"""
FINGERPRINTER = """\
from lauf_dvc.hookspecs import hookimpl


class Broken:
    name = "broken"
    version = "1"

    def fingerprint(self, stage, ctx):
        raise RuntimeError("disk on fire")


@hookimpl
def lauf_fingerprinters():
    return [Broken()]
"""
UNLOADABLE = 'raise ImportError("needs libfoo 2")\n'


def install_plugin(tmp_path: Path, source: str) -> dict[str, str]:
    """Module ``source`` as distribution ``lauf-boom``, entry point ``boom`` of group
    ``lauf_dvc``, found by importlib.metadata through PYTHONPATH (no pip, no network).
    Returns the environment to run lauf-dvc with."""
    site = tmp_path / "site"
    info = site / "lauf_boom-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lauf-boom\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[lauf_dvc]\nboom = lauf_boom\n")
    (site / "lauf_boom.py").write_text(source)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_notification_plugin_that_raises_is_a_warning(repo: Path, tmp_path: Path) -> None:
    from cli_helpers import dvc_status

    env = install_plugin(tmp_path, NOTIFIER)
    (repo / "data" / "raw.txt").write_text("raw, changed\n")
    res = lauf(repo, "repro", "-j", "2", env=env)
    assert res.code == ExitCode.OK, res.out + res.err
    assert res.err_lines == [  # once per plugin and hook, not once per call
        "WARNING lauf_dvc.plugins: plugin 'boom' failed in lauf_task_state_changed: "
        "RuntimeError: cannot tell anyone that prepare is invalidated (ignored; lauf-dvc's "
        "state is unaffected)"
    ]
    assert "2 stage(s): 2 ran" in res.out
    assert dvc_status(repo) == {}


def test_fingerprinter_that_raises_is_a_plugin_error(repo: Path, tmp_path: Path) -> None:
    env = install_plugin(tmp_path, FINGERPRINTER)
    edit(repo, "dvc.yaml", lambda t: "vars:\n  - lauf:\n      fingerprint: broken\n" + t)
    message = (
        f"{ERROR}plugin 'boom': fingerprinter 'broken' failed on stage prepare: RuntimeError: "
        "disk on fire; fix or update the plugin, or choose another fingerprinter (vars "
        "lauf.fingerprint, meta.lauf.fingerprint)"
    )
    before = snapshot(repo)
    for command in (*RUN_AND_JOIN, ("status",)):
        res = lauf(repo, *command, env=env)
        assert (res.code, res.err_lines) == (ExitCode.PLUGIN, [message]), res.err
        assert snapshot(repo) == before, command


def test_plugin_that_fails_to_load(repo: Path, tmp_path: Path) -> None:
    env = install_plugin(tmp_path, UNLOADABLE)
    message = (
        f"{ERROR}plugin 'boom': cannot load it: ImportError: needs libfoo 2; fix or uninstall "
        "it, or block it with LAUF_DVC_DISABLE_PLUGINS=boom"
    )
    before = snapshot(repo)
    for command in (*RUN_AND_JOIN, ("plugins",)):
        res = lauf(repo, *command, env=env)
        assert (res.code, res.err_lines) == (ExitCode.PLUGIN, [message]), res.err
        assert snapshot(repo) == before, command
    blocked = lauf(repo, "plugins", env={**env, "LAUF_DVC_DISABLE_PLUGINS": "boom"})
    assert blocked.code == 0 and "boom" in blocked.out and "blocked" in blocked.out


# -- a stage's command -----------------------------------------------------------------------


def test_stage_command_not_found(repo: Path) -> None:
    lock = (repo / "dvc.lock").read_bytes()
    edit(repo, "dvc.yaml", lambda t: t.replace("cmd: cp out/", "cmd: no-such-tool out/"))
    res = lauf(repo, "repro", "-j", "2")
    assert res.code == ExitCode.STAGE_FAILED, res.out + res.err
    assert res.err_lines == [
        "lauf-dvc: stage train failed: exit code 127, command not found: install it, or fix "
        "the stage's cmd in dvc.yaml; then run `lauf-dvc repro` again"
    ]
    assert "no-such-tool: command not found" in res.out  # the log's tail, in the summary
    assert (repo / "dvc.lock").read_bytes() == lock  # train keeps its last good entry
    rows = {r["stage"]: r for r in json.loads(lauf(repo, "status", "--json").out)}
    assert rows["train"]["state"] == "failed"
    assert rows["train"]["reason"] == "failed with exit code 127"
    history = json.loads(lauf(repo, "history", "train", "--json").out)
    assert history[-1]["state"] == "failed" and history[-1]["reason"] == "exit code 127"
    worker = lauf(repo, "worker")  # a worker does not retry it: it failed for good
    assert worker.code == ExitCode.STAGE_FAILED
    assert worker.err_lines[-1].startswith("lauf-dvc: worker stopped: stopping")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql+psycopg2://u:pw@h/db",
            "database postgresql+psycopg2://u:***@h/db: the driver 'psycopg2' is not installed "
            "with lauf-dvc; use postgresql+psycopg://... (psycopg 3)",
        ),
        (
            "postgresql+asyncpg://h/db",
            "database postgresql+asyncpg://h/db: the driver 'asyncpg' is not installed with "
            "lauf-dvc; use postgresql+psycopg://... (psycopg 3)",
        ),
        (
            "sqlite://",
            "database sqlite:// is in memory: workers are separate processes and cannot share "
            "it; use a file, sqlite:///path/to/lauf.sqlite",
        ),
        (
            "sqlite:///:memory:",
            "database sqlite:///:memory: is in memory: workers are separate processes and cannot "
            "share it; use a file, sqlite:///path/to/lauf.sqlite",
        ),
    ],
    ids=["psycopg2", "asyncpg", "memory", "memory-named"],
)
def test_database_urls_lauf_cannot_use(repo: Path, url, message) -> None:
    """Issue 14, point 9: ModuleNotFoundError, or `no such table`, before."""
    before = snapshot(repo)
    res = lauf(repo, "--db", url, "repro", "-j", "2")
    assert (res.code, res.err_lines) == (ExitCode.STORE, [ERROR + message]), res.err
    assert snapshot(repo) == before


@pytest.mark.parametrize("content", [b"garbage\n", None], ids=["garbage", "truncated"])
def test_a_damaged_sqlite_file_says_what_to_delete(repo: Path, content) -> None:
    db = repo / DB
    db.write_bytes(content if content is not None else db.read_bytes()[:5000])
    res = lauf(repo, "status")
    assert res.code == ExitCode.STORE, res.err
    (line,) = res.err_lines
    assert "it is not a lauf-dvc database, or it is damaged; delete it" in line, line
    assert "check that the server is up" not in line


def test_a_relative_sqlite_path_is_relative_to_the_repository_root(repo: Path) -> None:
    """Issue 14, point 9: from a subfolder it made a second database."""
    (repo / "sub").mkdir()
    for where in (repo, repo / "sub"):
        res = subprocess.run([sys.executable, "-m", "lauf_dvc", "--db", "sqlite:///rel.sqlite",
                              "repro", "-P", "-j", "2"], cwd=where, capture_output=True, text=True,
                             env=os.environ, timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
    assert (repo / "rel.sqlite").exists() and not (repo / "sub" / "rel.sqlite").exists()


def test_a_missing_parameter_is_said_up_front_and_once(repo: Path) -> None:
    """Issue 14, point 9: the reason was doubled (`lauf-dvc: stage s failed: lauf-dvc:
    stage 's' failed: ...`) and nothing said it before the run."""
    (repo / "params.yaml").write_text("present: 1\n")
    outs = "      - out/model.txt\n"
    edit(repo, "dvc.yaml", lambda t: t.replace(outs, outs + "    params: [nokey]\n"))
    res = lauf(repo, "repro", "-j", "2")
    assert res.code == ExitCode.STAGE_FAILED, res.err
    assert res.err_lines == [
        "lauf-dvc: warning: stage 'train': parameter 'nokey' is not in params.yaml: the stage "
        "will fail; add it there or fix the stage's params",
        "lauf-dvc: stage train failed: Parameters 'nokey' are missing from 'params.yaml'; see "
        "its log above, fix it, then run `lauf-dvc repro` again",
    ], res.err


def test_status_of_a_never_run_stage_names_its_missing_dependency(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "fresh", FILES)
    (root / "data" / "raw.txt").unlink()
    res = lauf(root, "status", "--json")
    assert res.code == 0, res.err
    reason = json.loads(res.out)[0]["reason"]
    assert reason.startswith("never run") and "data/raw.txt deleted" in reason, reason
