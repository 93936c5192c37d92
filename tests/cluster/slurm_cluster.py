"""A single-node SLURM cluster started from nothing in one folder, and stopped again.

``with slurm_cluster(folder) as cluster:`` starts ``munged``, ``slurmctld`` and ``slurmd``
(Debian's ``slurm-wlm`` and ``munge``, run as root) with every file they use in
``folder``: the key, the sockets, the spool and state folders, the logs. Nothing is read
from or written to ``/etc/slurm``, ``/etc/munge`` or ``/run``; the ports are free ones
picked now, so a second cluster (or a real one) on the machine is not disturbed. On the
way out, also after a failure or Ctrl-C, every job is cancelled and every daemon and
every job process it started is stopped.

The daemons run in the foreground as children of this process, so their pids are ours
to stop; each is also asked (``PR_SET_PDEATHSIG``) to die with this process, should it
be killed without a chance to clean up.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

#: What the cluster needs on PATH, and the Debian packages that bring it.
COMMANDS = {
    "munged": "munge",
    "mungekey": "munge",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
    "sbatch": "slurm-wlm",
    "scontrol": "slurm-wlm",
}
#: Marks the environment of every process this module starts (and what they start:
#: slurmstepd and the job scripts inherit it), so stragglers can be found and stopped.
MARK = "LAUF_TEST_CLUSTER"
#: Array tasks that may share one core (partition ``OverSubscribe=FORCE:N``): eight
#: workers at once on a 2-core machine.
OVERSUBSCRIBE = 4
PARTITION = "lauf"
#: Job states after which an array task does not run again.
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def missing_commands() -> list[str]:
    """The Debian packages to install before a cluster can start (empty: none)."""
    return sorted({pkg for cmd, pkg in COMMANDS.items() if shutil.which(cmd) is None})


@dataclass
class Cluster:
    """A running cluster: its folder, and the environment its client commands need."""

    root: Path
    node: str
    env: dict[str, str]
    jobs: list[str] = field(default_factory=list)

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A SLURM client command (``sbatch``, ``scontrol``, ...) against this cluster."""
        proc = subprocess.run(
            args, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    def sbatch(
        self, script: Path, *args: str, cwd: Path, env: Mapping[str, str] | None = None
    ) -> str:
        """Submit ``script`` from ``cwd``; the job id. ``env``: the submitting shell's
        environment (the job gets it, as with ``sbatch``'s default ``--export=ALL``)."""
        out = subprocess.run(
            ["sbatch", "--parsable", *args, str(script)],
            cwd=cwd,
            env={**(env or os.environ), **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch exited {out.returncode}: {out.stderr}")
        job = out.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def tasks(self, job: str) -> dict[str, dict[str, str]]:
        """Every task of ``job`` (``"<job>_<i>"``, or ``"<job>"`` for a plain job) with the
        fields ``scontrol show job`` gives (JobState, ExitCode, NodeList, ...)."""
        out = self.run("scontrol", "--oneliner", "show", "job", job, check=False)
        if out.returncode != 0:
            return {}
        found = {}
        for line in out.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if not fields.get("JobId"):
                continue
            name = (
                f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
                if fields.get("ArrayTaskId")
                and "-" not in fields["ArrayTaskId"]
                and "," not in fields["ArrayTaskId"]
                else fields["JobId"]
            )
            found[name] = fields
        return found

    def wait(self, job: str, count: int, timeout: float) -> dict[str, dict[str, str]]:
        """Wait until ``count`` tasks of ``job`` are finished; their fields."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks(job)
            done = {k: v for k, v in tasks.items() if v.get("JobState") in FINISHED}
            if len(done) >= count and len(done) == len(tasks):
                return tasks
            if time.monotonic() > deadline:
                states = {k: v.get("JobState") for k, v in tasks.items()}
                raise TimeoutError(f"job {job} not finished after {timeout:.0f} s: {states}")
            time.sleep(0.2)

    def running_tasks(self, job: str) -> dict[str, str]:
        """``{task name: node}`` of the tasks of ``job`` now RUNNING."""
        return {
            k: v.get("NodeList", "")
            for k, v in self.tasks(job).items()
            if v.get("JobState") == "RUNNING"
        }

    def log(self, name: str) -> str:
        path = self.root / "log" / name
        return path.read_text(errors="replace") if path.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the test process dies (no orphan daemons)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def slurm_conf(root: Path, sockets: Path, node_line: str, ports: tuple[int, int]) -> str:
    """``slurm.conf`` for one node named as this host, every path inside ``root``."""
    node = re.match(r"NodeName=(\S+)", node_line)
    assert node, node_line
    ctld_port, slurmd_port = ports
    return f"""\
ClusterName=lauftest
SlurmctldHost={node[1]}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sockets}/munge.socket.2
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MinJobAge=3600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node[1]} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:{OVERSUBSCRIBE}
"""  # noqa: E501


@contextmanager
def slurm_cluster(root: Path, *, timeout: float = 30) -> Iterator[Cluster]:
    """Start a one-node cluster in ``root`` (created; must be empty or missing); yield it
    once its node is idle; stop everything on the way out."""
    missing = missing_commands()
    if missing:
        raise RuntimeError(f"SLURM is not installed: apt-get install {' '.join(missing)}")
    root = root.resolve()
    for sub, mode in (
        ("munge-key", 0o700),
        ("munge-lib", 0o700),
        ("state", 0o755),
        ("spool", 0o755),
        ("run", 0o755),
        ("log", 0o755),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).chmod(mode)
    key = root / "munge-key" / "munge.key"
    # munged wants every folder above its socket open to all (x for others), which a
    # test's tmp folder is not (0700), and a socket path is limited to ~100 characters:
    # the socket gets a short folder of its own.
    sockets = Path(tempfile.mkdtemp(prefix="lauf-munge-", dir="/tmp"))
    sockets.chmod(0o755)
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)
    node_line = subprocess.run(
        ["slurmd", "-C"], check=True, capture_output=True, text=True
    ).stdout.splitlines()[0]
    node = node_line.split()[0].split("=", 1)[1]
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, sockets, node_line, (_free_port(), _free_port())))
    env = {**os.environ, "SLURM_CONF": str(conf), MARK: str(root)}
    cluster = Cluster(root, node, {"SLURM_CONF": str(conf), MARK: str(root)})
    with ExitStack() as stack:
        daemons: list[subprocess.Popen[bytes]] = []
        stack.callback(shutil.rmtree, sockets, ignore_errors=True)
        stack.callback(_stop, cluster, daemons)

        def start(name: str, *args: str) -> None:
            out = open(root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 (closed by the stack)
            stack.callback(out.close)
            # A session of their own: a Ctrl-C at the terminal reaches the tests, whose
            # way out cancels the jobs first, and only then stops the daemons (killed
            # at once, they would leave the jobs' slurmstepd behind).
            daemons.append(
                subprocess.Popen(
                    args,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                    start_new_session=True,
                )
            )

        start(
            "munged",
            "munged",
            "--foreground",
            f"--socket={sockets}/munge.socket.2",
            f"--key-file={key}",
            f"--pid-file={root}/run/munged.pid",
            f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge-lib/munged.seed",
        )
        _wait_for(
            lambda: (sockets / "munge.socket.2").exists(), daemons, timeout, "munged's socket"
        )
        start("slurmctld", "slurmctld", "-D", "-f", str(conf))
        start("slurmd", "slurmd", "-D", "-N", node, "-f", str(conf))
        _wait_for(lambda: _node_state(cluster) == "IDLE", daemons, timeout, f"node {node} idle")
        yield cluster


def _node_state(cluster: Cluster) -> str:
    out = cluster.run(
        "sinfo", "--noheader", "--node", cluster.node, "--format=%T", check=False, timeout=10
    )
    return out.stdout.strip().upper().rstrip("*~#")


def _wait_for(ready, daemons: list[subprocess.Popen[bytes]], timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.args[0] for p in daemons if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(map(str, dead))} exited" if dead else f"not after {timeout:.0f} s"
            raise RuntimeError(f"SLURM test cluster: waiting for {what}: {why}")
        time.sleep(0.05)


def _stop(cluster: Cluster, daemons: list[subprocess.Popen[bytes]]) -> None:
    """Cancel the jobs, stop the daemons (newest first), then kill any process of the
    cluster still there (a job step that outlived its slurmd)."""
    if cluster.jobs and all(p.poll() is None for p in daemons):
        cluster.run("scancel", *cluster.jobs, check=False, timeout=20)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _unfinished(cluster):
            time.sleep(0.2)
    for proc in reversed(daemons):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for proc in marked_processes(str(cluster.root)):
        with suppress(psutil.NoSuchProcess):
            proc.kill()


def _unfinished(cluster: Cluster) -> bool:
    return any(
        v.get("JobState") not in FINISHED
        for job in cluster.jobs
        for v in cluster.tasks(job).values()
    )


def marked_processes(root: str) -> list[psutil.Process]:
    """Every process (not this one) of this cluster: its environment carries the mark
    (the daemons, the job scripts and what they start), or it holds a file of the
    cluster's folder open (``slurmstepd`` starts with an empty environment, but keeps
    slurmd's log open)."""
    found = []
    inside = root.rstrip("/") + "/"
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(MARK) == root or any(
                f.path.startswith(inside) for f in proc.open_files()
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found
