"""Resources: what a task needs (cores, GPUs, memory, named counters, a group) and what
a host has. Pure values and arithmetic; the claim transaction
(:mod:`lauf_dvc.scheduler.claims`) uses them.

A task's needs are stored as one canonical string, its *shape* (``""``: one core and
nothing else, the default), so that the ready index can seek "ready tasks of this
shape" and a claim never looks past tasks that cannot fit the free capacity.

Memory is counted in MiB. A host's capacity is what its workers declared, else what
they detected (:func:`detect`); every worker on a host shares it: a claim counts what
the stages running on that host hold (their assignments), in the same transaction.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

CPUS, GPUS, MEM = "cpus", "gpus", "mem"
BUILTIN = (CPUS, GPUS, MEM)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_UNITS = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_mem(value: object) -> int:
    """MiB from ``16G``, ``512M``, ``1.5T``, ``2048`` (a bare number is MiB, as SLURM's
    ``--mem``). Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected an amount of memory such as 16G or 512M, got {value!r}")
    found = _MEM.match(str(value))
    if not found:
        raise ValueError(f"expected an amount of memory such as 16G or 512M, got {value!r}")
    mib = float(found[1]) * _UNITS[found[2].upper()]
    return max(1, round(mib)) if mib > 0 else 0


def parse_count(name: str, value: object) -> int:
    """A whole number >= 0 (``cpus``, ``gpus``, a named counter). Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name}: expected a whole number >= 0, got {value!r}")
    return number


def parse_amount(name: str, value: object) -> int:
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is no resource name (letters, digits, _ . -)")
    return parse_mem(value) if name == MEM else parse_count(name, value)


def show_amount(name: str, amount: int) -> str:
    if name != MEM:
        return f"{name}={amount}"
    for unit, size in (("T", 1024 * 1024), ("G", 1024)):
        if amount >= size and amount % size == 0:
            return f"mem={amount // size}{unit}"
    return f"mem={amount}M"


@dataclass(frozen=True)
class Demand:
    """What one running task holds. ``cpus`` defaults to 1; ``group``: at most the
    group's limit of its tasks run at once, across all hosts."""

    amounts: tuple[tuple[str, int], ...] = ()  # sorted; what the task declared
    group: str | None = None

    @classmethod
    def of(cls, amounts: Mapping[str, int] | None = None, group: str | None = None) -> Demand:
        """Only what was declared is kept (``cpus: 1`` and ``gpus: 0`` too: a stage that
        declares them gets ``OMP_NUM_THREADS`` and ``CUDA_VISIBLE_DEVICES`` set)."""
        return cls(tuple(sorted((k, int(v)) for k, v in (amounts or {}).items())), group or None)

    @property
    def shape(self) -> str:
        """The canonical stored form: ``cpus=2,gpus=1|group``; ``""`` is the default."""
        text = ",".join(f"{k}={v}" for k, v in self.amounts)
        return f"{text}|{self.group}" if self.group else text

    def get(self, name: str) -> int:
        return dict(self.amounts).get(name, 1 if name == CPUS else 0)

    def needs(self) -> dict[str, int]:
        """Every amount, ``cpus`` included."""
        return {CPUS: self.get(CPUS), **dict(self.amounts)}

    def describe(self) -> str:
        parts = [show_amount(k, v) for k, v in sorted(self.needs().items())]
        return ",".join(parts) + (f" in group {self.group}" if self.group else "")


@lru_cache(maxsize=4096)
def demand_of(shape: str) -> Demand:
    """The :class:`Demand` a stored shape stands for (the inverse of ``Demand.shape``)."""
    text, _, group = shape.partition("|")
    amounts = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        amounts[name] = int(value)
    return Demand.of(amounts, group or None)


@dataclass(frozen=True)
class Capacity:
    """What one host offers to the stages its workers run.

    ``cpus_declared`` False (detected): the host runs at least as many one-core stages
    at once as it has live workers (``repro -j 8`` on a 2-core laptop runs 8 one-core
    stages, as Snakemake's ``-j 8`` does); declared: exactly that many cores.
    ``mem`` None: memory is not counted. ``gpus``: device ids (CUDA_VISIBLE_DEVICES).
    """

    cpus: int = 1
    cpus_declared: bool = False
    gpus: tuple[str, ...] = ()
    mem: int | None = None
    counters: tuple[tuple[str, int], ...] = ()

    def amount(self, name: str, workers_here: int = 1) -> int | None:
        """How much of ``name`` the host has (None: not counted, unlimited)."""
        if name == CPUS:
            return self.cpus if self.cpus_declared else max(self.cpus, workers_here)
        if name == GPUS:
            return len(self.gpus)
        if name == MEM:
            return self.mem
        return dict(self.counters).get(name, 0)

    def to_json(self) -> str:
        d = dict(cpus=self.cpus, cpus_declared=self.cpus_declared, gpus=list(self.gpus),
                 mem=self.mem, counters=dict(self.counters))  # fmt: skip
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Capacity | None:
        if not text:
            return None
        d = json.loads(text)
        return cls(int(d["cpus"]), bool(d["cpus_declared"]), tuple(d["gpus"]), d["mem"],
                   tuple(sorted(d["counters"].items())))  # fmt: skip

    def describe(self) -> str:
        cpus = f"cpus={self.cpus}" + ("" if self.cpus_declared else " (detected)")
        parts = [cpus, f"gpus={len(self.gpus)}"]
        if self.gpus:
            parts[-1] += f" ({','.join(self.gpus)})"
        if self.mem is not None:
            parts.append(show_amount(MEM, self.mem))
        parts += [f"{k}={v}" for k, v in self.counters]
        return ", ".join(parts)


@dataclass
class Usage:
    """What the stages running on one host hold now."""

    amounts: Counter[str] = field(default_factory=Counter)
    devices: set[str] = field(default_factory=set)
    workers: int = 1  # live workers on the host

    def add(self, shape: str, devices: str | None) -> None:
        for name, amount in demand_of(shape).needs().items():
            self.amounts[name] += amount
        self.devices.update(filter(None, (devices or "").split(",")))


def fit(demand: Demand, capacity: Capacity, usage: Usage) -> tuple[str, ...] | None:
    """The GPU ids a claim of ``demand`` takes now (``()`` for none), or None: it does
    not fit what is free."""
    for name, amount in demand.needs().items():
        if name == GPUS:
            continue
        have = capacity.amount(name, usage.workers)
        if have is not None and usage.amounts[name] + amount > have:
            return None
    want = demand.get(GPUS)
    free = [g for g in capacity.gpus if g not in usage.devices]
    return tuple(free[:want]) if len(free) >= want else None


def shortfall(demand: Demand, capacity: Capacity, workers_here: int = 1) -> str | None:
    """Why ``demand`` can never fit ``capacity`` (even idle), or None if it can."""
    for name, amount in sorted(demand.needs().items()):
        have = capacity.amount(name, workers_here)
        if have is not None and amount > have:
            return f"needs {show_amount(name, amount)}, the host has {have}"
    return None


def never_fits(demand: Demand, capacities: Iterable[tuple[Capacity, int]]) -> str | None:
    """Why no host of ``capacities`` (each with its live workers) can ever run
    ``demand``: ``needs gpus=2, the most any worker has is 1``; None if one can."""
    caps = list(capacities)
    if not caps:
        return None
    for name, amount in sorted(demand.needs().items()):
        most = []
        for cap, n in caps:
            have = cap.amount(name, n)
            most.append(amount if have is None else have)
        if amount > max(most):
            shown = max(most) if name != MEM else show_amount(MEM, max(most))[4:]
            return f"needs {show_amount(name, amount)}, the most any worker has is {shown}"
    if all(shortfall(demand, cap, n) for cap, n in caps):
        return f"needs {demand.describe()}, which no worker's host has all at once"
    return None


# -- what a host has -------------------------------------------------------------------


def parse_resources(text: str | Mapping[str, object], *, where: str) -> dict[str, int]:
    """``cpus=32,gpus=4,mem=128G,licence=1`` (or a mapping) as amounts. ValueError, its
    message prefixed with ``where`` (if any)."""
    at = f"{where}: " if where else ""
    items: list[tuple[str, object]] = []
    if isinstance(text, Mapping):
        items = [(str(k), v) for k, v in text.items()]
    elif isinstance(text, str):
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, eq, value = part.partition("=")
            if not eq:
                raise ValueError(f"{at}expected NAME=AMOUNT, got {part!r}")
            items.append((name.strip(), value.strip()))
    else:
        raise ValueError(f"{at}expected NAME=AMOUNT,..., got {text!r}")
    out: dict[str, int] = {}
    for key, amount in items:
        try:
            out[key] = parse_amount(key, amount)
        except ValueError as exc:
            raise ValueError(f"{at}{exc}") from None
    return out


def detect(environ: Mapping[str, str] | None = None) -> Capacity:
    """This host's capacity: usable cores (CPU affinity, or SLURM_CPUS_ON_NODE), GPUs
    (SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``), memory (SLURM's
    SLURM_MEM_PER_NODE, else the machine's, from psutil)."""
    env = os.environ if environ is None else environ
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if env.get("SLURM_CPUS_ON_NODE", "").strip().isdigit():
        cpus = int(env["SLURM_CPUS_ON_NODE"])
    return Capacity(cpus=max(1, cpus or 1), gpus=_detect_gpus(env), mem=_detect_mem(env))


def _detect_gpus(env: Mapping[str, str]) -> tuple[str, ...]:
    for var in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        if var in env:
            ids = [g.strip() for g in env[var].split(",") if g.strip()]
            return tuple(g for g in ids if g != "-1" and g.lower() != "nodevfiles")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU "))


def _detect_mem(env: Mapping[str, str]) -> int:
    if env.get("SLURM_MEM_PER_NODE", "").strip().isdigit():
        return int(env["SLURM_MEM_PER_NODE"])  # MB, as SLURM counts
    import psutil

    return int(psutil.virtual_memory().total // 2**20)


def pool_name(host: str, environ: Mapping[str, str] | None = None) -> str:
    """Whose capacity a worker shares: its host's, or inside a SLURM job the job's
    allocation on that host (two jobs on one node have cores and GPUs of their own)."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID", "").strip()
    return f"{host}:slurm-{job}" if job else host


def declare(detected: Capacity, declared: Mapping[str, int]) -> Capacity:
    """``detected`` with what was declared (``--resources``) in its place. ``gpus=N``
    takes the first N detected device ids, or ``0..N-1`` if fewer were detected."""
    cap = detected
    if CPUS in declared:
        cap = replace(cap, cpus=declared[CPUS], cpus_declared=True)
    if GPUS in declared:
        n = declared[GPUS]
        ids = cap.gpus[:n] if len(cap.gpus) >= n else tuple(str(i) for i in range(n))
        cap = replace(cap, gpus=ids)
    if MEM in declared:
        cap = replace(cap, mem=declared[MEM])
    counters = {k: v for k, v in declared.items() if k not in BUILTIN}
    return replace(cap, counters=tuple(sorted(counters.items())))


def command_env(
    demand: Demand, devices: tuple[str, ...], environ: Mapping[str, str]
) -> dict[str, str]:
    """What a stage's command gets: ``LAUF_DVC_CPUS`` (its cores); if it declares
    ``gpus`` (0 too), ``CUDA_VISIBLE_DEVICES`` with the ids it holds; if it declares
    ``cpus``, ``OMP_NUM_THREADS`` unless the user set it. A stage that declares neither
    keeps the environment it had (it may use every GPU and core: declare what it uses)."""
    declared = dict(demand.amounts)
    env = {"LAUF_DVC_CPUS": str(demand.get(CPUS))}
    if GPUS in declared:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    if CPUS in declared and "OMP_NUM_THREADS" not in environ and declared[CPUS] > 0:
        env["OMP_NUM_THREADS"] = str(declared[CPUS])
    return env
