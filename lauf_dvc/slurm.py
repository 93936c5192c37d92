"""``lauf-dvc submit``: the array job script of docs/slurm.md for one repository, and
``sbatch``.

:func:`job_script` is a pure function of a :class:`Job`; :func:`plan_job` reads what the
script needs from the project (where it is, which database and lock its workers must
use) and :func:`submit` hands the script to ``sbatch``. Nothing here talks to the
scheduler database.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from lauf_dvc.config import ProjectSettings
from lauf_dvc.errors import SubmitError

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.plan import Selection

#: Where ``submit`` keeps its scripts and where the array tasks write their output:
#: inside the repository (every node sees it) and ignored by git and DVC.
SLURM_DIR = Path(".dvc") / "tmp" / "lauf" / "slurm"
#: The worker name of docs/slurm.md: readable in ``lauf-dvc status``, unique per array
#: task, and again after SLURM requeues the task.
IDENTIFIER = (
    '"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.${SLURM_RESTART_COUNT:-0}@$(hostname -s)"'
)


@dataclass(frozen=True)
class Job:
    """Everything the job script says. ``extra``: ``#SBATCH`` options passed through as
    given (``--qos=long``); ``worker``: the arguments of ``lauf-dvc worker``."""

    root: Path
    workdir: Path
    log_dir: Path
    workers: int
    time: str = "12:00:00"
    job_name: str = "lauf-dvc"
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    extra: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    activate: str | None = None  # a venv's bin/activate; else `lauf` names the program
    lauf: str = "lauf-dvc"
    worker: tuple[str, ...] = ("--all-pipelines",)
    targets: tuple[str, ...] = ()
    labels: str = ""
    max_idle: float | None = 600.0
    notes: list[str] = field(default_factory=list, compare=False)


def job_script(job: Job) -> str:
    """The array job script (bash): docs/slurm.md's, filled in for ``job``."""
    sbatch = [
        f"--job-name={job.job_name}",
        f"--array=1-{job.workers}",
        "--nodes=1",
        "--ntasks=1",
        *([f"--cpus-per-task={job.cpus_per_task}"] if job.cpus_per_task else []),
        *([f"--mem={job.mem}"] if job.mem else []),
        f"--time={job.time}",
        f"--output={job.log_dir}/%x-%A_%a.out",
        *([f"--partition={job.partition}"] if job.partition else []),
        *([f"--account={job.account}"] if job.account else []),
        *job.extra,
    ]
    lines = [
        "#!/bin/bash",
        "# Written by `lauf-dvc submit`; submit it again with `sbatch` to add workers.",
    ]
    lines += [f"#SBATCH {option}" for option in sbatch]
    lines += ["set -euo pipefail", "", f"cd {shlex.quote(str(job.workdir))}"]
    if job.activate:
        lines.append(f"source {shlex.quote(job.activate)}")
    lines += ["", f"export LAUF_DVC_IDENTIFIER={IDENTIFIER}"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in job.env]
    worker = [*job.worker]
    if job.labels:
        worker += ["--labels", job.labels]
    if job.max_idle is not None:
        worker += ["--max-idle", f"{job.max_idle:g}"]
    if job.targets:
        worker += ["--", *job.targets]
    lines += ["", f"exec {job.lauf} worker {shlex.join(worker)}", ""]
    return "\n".join(lines)


def worker_options(args: argparse.Namespace, options: argparse.ArgumentParser) -> list[str]:
    """The ``lauf-dvc worker`` options that repeat the ``dvc repro`` options given to
    ``submit`` (``options``: a parser holding just those). Without a target or
    ``-p``/``-P``/``-R``: ``--all-pipelines``, which is what a cluster job is for."""
    out: list[str] = []
    for action in options._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        flag = max(action.option_strings, key=len)
        # store_true is a store_const of True: either way the flag sets its constant
        if isinstance(action, argparse._StoreConstAction) and value == action.const:
            out.append(flag)
    if not args.targets and not (args.pipeline or args.all_pipelines or args.recursive):
        out.insert(0, "--all-pipelines")
    return out


def program() -> tuple[str | None, str]:
    """(the venv's ``activate`` script or None, how to call lauf-dvc): the lauf-dvc of
    this process, so the workers run the version that wrote the script."""
    bindir = Path(sys.executable).parent
    activate = bindir / "activate"
    entry = bindir / "lauf-dvc"
    if activate.is_file() and entry.is_file():
        return str(activate), "lauf-dvc"
    return None, f"{shlex.quote(sys.executable)} -m lauf_dvc"


def job_environment(
    settings: ProjectSettings,
    from_yaml: ProjectSettings,
    db_url: str,
    lock: str | None,
    notes: list[str],
) -> tuple[tuple[str, str], ...]:
    """What the script exports: the database (``db_url``, as the project resolved it) if
    it was given outside dvc.yaml (which the workers read themselves), without its
    password; and a SQLite database's lock mode."""
    env: list[tuple[str, str]] = []
    if settings.db and settings.db != from_yaml.db:
        url = make_url(db_url)
        if url.password:
            notes.append(
                "the database password is not written into the job script: "
                "the workers read it from ~/.pgpass"
            )
            url = url._replace(password=None)  # URL.set(password=None) keeps it
        env.append(("LAUF_DVC_DB", url.render_as_string(hide_password=False)))
    if lock is not None:
        env.append(("LAUF_DVC_LOCK", lock))
    return tuple(env)


def plan_job(
    args: argparse.Namespace, options: argparse.ArgumentParser, selection: Selection
) -> Job:
    """The job ``lauf-dvc submit ARGS`` asks for, in the repository around the cwd
    (``selection``: the stages its targets and options name). The pipeline is loaded
    first, so a wrong target fails here, not in every array task."""
    from lauf_dvc.dvc.project import open_project, read_lauf_vars
    from lauf_dvc.netfs import network_filesystem
    from lauf_dvc.scheduler.engine import sqlite_lock_mode

    worker = worker_options(args, options)
    if "--all-pipelines" in worker:
        selection = replace(selection, all_pipelines=True)
    project = open_project(cli={"db": args.db}, selection=selection)
    notes: list[str] = []
    from_yaml = ProjectSettings.resolve(None, read_lauf_vars(project.root), environ={})
    lock = sqlite_lock_mode(project.db_url, project.settings.lock)
    env = job_environment(project.settings, from_yaml, project.db_url, lock, notes)
    if network_filesystem(project.root) is None:
        notes.append(
            f"{project.root} is on a local filesystem: only array tasks on this "
            "machine can see it (a cluster needs it on a shared one)"
        )
    activate, lauf = program()
    return Job(
        root=project.root,
        workdir=Path(selection.cwd or os.getcwd()),
        log_dir=project.root / SLURM_DIR,
        workers=args.workers,
        time=args.time,
        job_name=args.job_name,
        cpus_per_task=args.cpus_per_task,
        mem=args.mem,
        partition=args.partition,
        account=args.account,
        extra=tuple(args.sbatch),
        env=env,
        activate=activate,
        lauf=lauf,
        worker=tuple(worker),
        targets=tuple(args.targets),
        labels=args.labels,
        max_idle=args.max_idle,
        notes=notes,
    )


def write_script(job: Job) -> Path:
    """The script, in the repository's ``SLURM_DIR`` (with the folder for its logs)."""
    folder = job.root / SLURM_DIR
    job.log_dir.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{job.job_name}-{stamp}-{os.getpid()}.sbatch"
    path.write_text(job_script(job))
    return path


def submit(script: Path, cwd: Path, sbatch: str = "sbatch") -> str:
    """``sbatch`` the script from ``cwd``; the job id, or :class:`SubmitError`."""
    program_path = shutil.which(sbatch)
    if program_path is None:
        raise SubmitError(
            f"{sbatch} not found: run lauf-dvc submit where SLURM's commands are (a login "
            "node), or write the script with --print and submit it yourself"
        )
    try:
        proc = subprocess.run(
            [program_path, "--parsable", str(script)],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise SubmitError(f"sbatch did not answer in 120 s; the script is {script}") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise SubmitError(f"sbatch refused the job: {why}; the script is {script}")
    return proc.stdout.strip().split(";")[0]


def watch_command(env: Sequence[tuple[str, str]]) -> str:
    """How to follow the job from here (the database, if the script names one)."""
    db = dict(env).get("LAUF_DVC_DB")
    return f"lauf-dvc --db {shlex.quote(db)} watch" if db else "lauf-dvc watch"
