"""Errors raised by lauf-dvc and the exit codes the command line maps them to.

A stage whose command fails is *data* (a task in state ``failed``), never one of
these exceptions: these mean the tool itself could not do what was asked.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Documented exit codes of ``lauf-dvc`` (see docs/troubleshooting.md)."""

    OK = 0
    STAGE_FAILED = 1  # the tool worked, but at least one selected stage did not complete
    USAGE = 2  # bad command line
    CONFIG = 3  # unknown/invalid lauf setting (dvc.yaml vars/meta, env var)
    PIPELINE = 4  # broken dvc.yaml, cycle, unknown target, missing dependency
    STORE = 5  # database unreachable, read-only, or of another schema version
    PLUGIN = 6  # a plugin failed to load or raised
    LOCK = 7  # a lock could not be acquired in time
    WORKER_CRASHED = 8  # a worker process died of an error (not a stage's): see its log
    SUBMIT = 9  # `submit`: sbatch is missing or refused the job
    NO_WORKER = 10  # stages left that no worker may take (labels, resources), nor what needs them
    INTERNAL = 70  # a bug in lauf-dvc (EX_SOFTWARE)
    OS_ERROR = 74  # the system refused: a file could not be read or written (EX_IOERR)
    HANGUP = 129  # SIGHUP (a closed terminal): stopped as for SIGTERM
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM (timeout, scancel, preemption, a CI cancel)


class LaufError(Exception):
    """Root of every error lauf-dvc raises on purpose.

    ``str(err)`` is one line that names what is wrong and what to do.
    """

    exit_code: ExitCode = ExitCode.INTERNAL


class ConfigError(LaufError):
    exit_code = ExitCode.CONFIG


class PipelineError(LaufError):
    exit_code = ExitCode.PIPELINE


class StoreError(LaufError):
    exit_code = ExitCode.STORE


class StorageFull(StoreError):
    """The disk holding the database is full: an I/O error (74), not a bad database."""

    exit_code = ExitCode.OS_ERROR


class SchemaVersionError(StoreError):
    """The database was created by another lauf-dvc schema version."""


class PluginError(LaufError):
    exit_code = ExitCode.PLUGIN

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class IllegalTransition(LaufError):
    """A task state change that the state machine does not allow, or a lost race."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, task_id: str, current: str | None, new: str, detail: str = "") -> None:
        msg = f"task {task_id!r}: illegal transition {current} -> {new}"
        super().__init__(f"{msg} ({detail})" if detail else msg)
        self.task_id = task_id
        self.current = current
        self.new = new


class LockTimeout(LaufError):
    exit_code = ExitCode.LOCK


class WorkerCrashed(LaufError):
    """A worker process died of an error of its own (not a stage's) and the run could not
    finish; the message names its exception and its log."""

    exit_code = ExitCode.WORKER_CRASHED


class SubmitError(LaufError):
    """``lauf-dvc submit`` could not hand the job to SLURM (no ``sbatch``, or it refused)."""

    exit_code = ExitCode.SUBMIT


class FailurePolicyStop(LaufError):
    """Raised by a Graphband iterator with ``failure_policy="stop"`` once a task failed for good."""

    exit_code = ExitCode.STAGE_FAILED

    def __init__(self, failed: list[str]) -> None:
        shown = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
        super().__init__(
            f"stopping (failure_policy=stop): {len(failed)} task(s) failed: {shown}; "
            "fix them and run `lauf-dvc reset --failed`"
        )
        self.failed = failed
