"""Run one command line of a stage so that it never outlives its stage.

A worker may die at any instant (an OOM kill, a time limit, a vanished node, Ctrl-C
twice). Its command must not keep writing outputs once another worker runs the stage
again. Three layers, cheapest first:

1. The command runs in its own process group, and on Linux its first process gets
   ``PR_SET_PDEATHSIG``: the kernel SIGKILLs it the instant the worker dies. A simple
   command line (``python train.py``) is that process (the shell execs it), so it dies
   with the worker. The signal is set by util-linux's ``setpriv``, which then execs the
   shell (:func:`_with_death_signal`; a ``preexec_fn`` where it is missing). A worker
   that dies between the spawn and that instant leaves its command to layer 2.
2. Every process the command starts carries a token in its environment
   (``LAUF_DVC_RUN_TOKEN``), and a record of the running command (host, worker pid,
   token) lies in ``.dvc/tmp/lauf/commands/`` until the command ends. Before a stage
   runs again, the worker that takes it kills whatever still carries the token of a
   leftover record (a compound line's children: ``a && b``, loops, pipes), on the same
   host, and only then removes the outputs and runs the command.
3. A stage stopped on purpose (Ctrl-C, an error) gets SIGINT (SIGTERM for an error) on
   its process group, SIGKILL after :data:`STOP_GRACE` seconds, then everything still
   carrying its token is killed.

A leftover record from another host cannot be acted on (its processes are not
visible here); on clusters the batch system kills a job's processes with the job.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import psutil

from lauf_dvc.dvc.commit.atomic import write_json
from lauf_dvc.faults import fault

log = logging.getLogger(__name__)

TAIL_LINES = 20
TAIL_BYTES = 64 * 1024
CHUNK = 64 * 1024
STOP_GRACE = 5.0  # seconds a stopped command has to exit before SIGKILL
KILL_TIMEOUT = 10.0
TOKEN_ENV = "LAUF_DVC_RUN_TOKEN"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Output:
    """The stage's output: to its log file (bytes as they come), a stream, and a tail."""

    def __init__(self, path: Path | None, stream: TextIO | None) -> None:
        self._file: BinaryIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "wb")  # noqa: SIM115
        self._stream = stream
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = bytearray()

    def write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
            self._file.flush()
        if self._stream is not None:
            self._stream.write(self._decoder.decode(data))
            self._stream.flush()
        self._tail += data
        del self._tail[:-TAIL_BYTES]

    def write_text(self, text: str) -> None:
        self.write(text.encode())

    def tail(self, lines: int = TAIL_LINES) -> str:
        text = bytes(self._tail).decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def run_command(
    argv: str | list[str], kwargs: dict[str, Any], output: Output, *, address: str, records: Path
) -> int:
    """Run one command line; its stdout and stderr (merged) go to ``output``.

    stdin is /dev/null: several workers may run at once, none may read the terminal.
    On an exception (Ctrl-C) the command and everything it started are stopped before
    this returns. ``records`` is the folder of running-command records (see above).
    """
    token = uuid.uuid4().hex
    env = {**kwargs.get("env", os.environ), TOKEN_ENV: token}
    record = _write_record(records, address, token)
    try:
        argv, preexec = _with_death_signal(argv, env)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            process_group=0, preexec_fn=preexec, **{**kwargs, "env": env},
        )  # fmt: skip
    except BaseException:
        record.unlink(missing_ok=True)
        raise
    stream = proc.stdout
    assert isinstance(stream, io.BufferedReader)  # binary, buffered (Popen's default)
    try:
        started = False
        while chunk := stream.read1(CHUNK):
            output.write(chunk)
            if not started:
                started = True
                fault("during-command", address)
        return proc.wait()
    except BaseException as exc:
        stop(proc, token, signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
        raise
    finally:
        stream.close()
        record.unlink(missing_ok=True)


def stop(proc: subprocess.Popen[bytes], token: str, sig: int, grace: float = STOP_GRACE) -> None:
    """Stop the command's process group (``sig``, then SIGKILL after ``grace`` seconds or
    at a second Ctrl-C), then whatever it started that left the group."""
    try:
        if proc.poll() is None:  # not reaped yet, so its process group id is still ours
            _signal_group(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
    finally:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_token(token)


def kill_leftovers(records: Path, address: str) -> None:
    """Before ``address`` runs again: kill what a dead worker's run of it left running."""
    path = _record_path(records, address)
    if path.exists():
        _settle(path)


def kill_commands_of(records: Path, pids: Iterable[int]) -> None:
    """Kill the commands that the (dead) worker processes ``pids`` of this host started."""
    wanted = set(pids)
    for path in records.glob("*.json") if records.is_dir() else ():
        data = _read_record(path)
        if data is None or data.get("worker") in wanted:
            _settle(path, data, quiet=True)


def kill_token(token: str, timeout: float = KILL_TIMEOUT) -> int:
    """SIGKILL every process of this user carrying ``token``, until none is left."""
    deadline = time.monotonic() + timeout
    killed = 0
    while found := list(_carrying(token)):
        for proc in found:
            try:
                proc.kill()
                killed += 1
            except psutil.Error:
                pass
        if time.monotonic() > deadline:
            log.warning("processes of an old run survive SIGKILL: %s", [p.pid for p in found])
            break
        time.sleep(0.02)
    return killed


# -- helpers ------------------------------------------------------------------------------


def _settle(path: Path, data: dict[str, Any] | None = None, *, quiet: bool = False) -> None:
    """Kill the processes of a recorded command (if of this host) and drop the record."""
    data = data if data is not None else _read_record(path)
    if data is not None:
        stage, host = data.get("address"), data.get("host")
        if host == socket.gethostname():
            if killed := kill_token(str(data.get("token"))):
                level = logging.INFO if quiet else logging.WARNING
                log.log(level, "stage %s: killed %d process(es) of a dead worker", stage, killed)
        else:
            log.warning(
                "stage %s: a worker on %s died while running it; its command may still run "
                "there (this host cannot stop it)",
                stage,
                host,
            )
    path.unlink(missing_ok=True)


def _carrying(token: str) -> Iterator[psutil.Process]:
    uid = os.getuid()
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"].real == uid and proc.environ().get(TOKEN_ENV) == token:
                yield proc
        except (psutil.Error, AttributeError):  # gone, a zombie, or not ours to read
            continue


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _record_path(records: Path, address: str) -> Path:
    return records / f"{hashlib.sha1(address.encode()).hexdigest()[:20]}.json"


def _write_record(records: Path, address: str, token: str) -> Path:
    path = _record_path(records, address)
    data = dict(address=address, host=socket.gethostname(), worker=os.getpid(), token=token)
    write_json(path, data)  # a reader never sees half a record
    return path


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _with_death_signal(
    argv: str | list[str], env: dict[str, str]
) -> tuple[str | list[str], Callable[[], None] | None]:
    """``argv`` and the ``preexec_fn`` that make the kernel SIGKILL the command's first
    process when this worker dies.

    Through util-linux's ``setpriv --pdeathsig KILL`` where it works (it sets the signal
    and execs the command line, in the same process): a ``preexec_fn`` makes Python fork
    the whole worker instead of a vfork, about 10 ms and 5 ms of CPU per command for a
    worker of DVC's size, measured. Otherwise (no setpriv, an old one, a shell given as a
    string, a shell not found: Popen must raise as before) by the ``preexec_fn``."""
    launcher = _setpriv()
    if launcher is None or not isinstance(argv, list) or not argv:
        return argv, _die_with(os.getpid())
    if shutil.which(argv[0], path=env.get("PATH", os.defpath)) is None:
        return argv, _die_with(os.getpid())
    return [*launcher, *argv], None


@functools.cache
def _setpriv() -> list[str] | None:
    """``setpriv --pdeathsig KILL --`` if this machine's setpriv has the option (util-linux
    2.33 and later) and it runs, else None."""
    if not sys.platform.startswith("linux"):
        return None
    found = shutil.which("setpriv")
    if found is None:
        return None
    launcher = [found, "--pdeathsig", "KILL", "--"]
    try:
        done = subprocess.run([*launcher, "true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return launcher if done.returncode == 0 else None


def _die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when ``parent`` dies."""
    prctl = _prctl()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl: nobody would tell us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


@functools.cache
def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
