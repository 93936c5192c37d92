"""Settings: command line > ``LAUF_DVC_*`` environment > dvc.yaml > defaults.

Everything here is read at call time, never at import time, and passed down explicitly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from lauf_dvc.errors import ConfigError
from lauf_dvc.resources import Capacity, declare, detect, parse_amount, parse_resources

T = TypeVar("T")

ENV_PREFIX = "LAUF_DVC_"
#: What a task that failed for good does to the rest: ``stop`` (claim nothing new, like
#: ``dvc repro``), ``continue`` (run what does not depend on it: ``--keep-going``),
#: ``ignore`` (it counts as done, its dependents run too: ``--ignore-errors``).
FAILURE_POLICIES = ("continue", "stop", "ignore")
#: How SQLite databases are locked: ``wal`` (local disk), ``flufl`` (rollback journal and
#: an NFS-safe lock file around every transaction), ``auto`` (flufl on a network
#: filesystem, else wal).
LOCK_MODES = ("auto", "wal", "flufl")
MIN_HEARTBEAT_INTERVAL = 0.05  # seconds
MAX_HEARTBEAT_TIMEOUT = 7 * 24 * 3600.0  # seconds


def worker_identifier() -> str | None:
    """``LAUF_DVC_IDENTIFIER``: the name a worker registers with (None: make one)."""
    return os.environ.get(ENV_PREFIX + "IDENTIFIER") or None


def spawn_workers() -> bool:
    """``LAUF_DVC_SPAWN=1``: ``repro`` starts new worker processes instead of forking."""
    return os.environ.get(ENV_PREFIX + "SPAWN") == "1"


def compat_broken() -> set[str]:
    """``LAUF_DVC_COMPAT_BREAK=name,...``: DVC-seam probes to fail (tests of the fallbacks)."""
    raw = os.environ.get(ENV_PREFIX + "COMPAT_BREAK", "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {text!r}")


def parse_failure_policy(text: str) -> str:
    if text not in FAILURE_POLICIES:
        raise ValueError(f"expected one of {', '.join(FAILURE_POLICIES)}, got {text!r}")
    return text


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):  # nan, inf: every comparison below would lie
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def parse_positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise ValueError(f"expected a number > 0, got {text!r}")
    return value


def parse_non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {text!r}")
    return value


def parse_lock_mode(text: str) -> str:
    if text not in LOCK_MODES:
        raise ValueError(f"expected one of {', '.join(LOCK_MODES)}, got {text!r}")
    return text


def parse_non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {text!r}")
    return value


def resolve(
    name: str,
    explicit: T | None,
    parse: Callable[[str], T],
    default: T,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Return ``explicit`` if given, else ``LAUF_DVC_<NAME>`` parsed, else ``default``.

    A malformed environment value is a :class:`ConfigError` naming the variable.
    """
    if explicit is not None:
        return explicit
    env = os.environ if environ is None else environ
    var = ENV_PREFIX + name.upper()
    raw = env.get(var)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {var}: {exc}") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "enable_fingerprints": parse_bool,
    "failure_policy": parse_failure_policy,
    "heartbeat_interval": parse_positive_float,
    "heartbeat_timeout": parse_positive_float,
    "max_failed_retries": parse_non_negative_int,
    "max_killed_retries": parse_non_negative_int,
}


@dataclass(frozen=True)
class SchedulerSettings:
    """What a worker needs to know about scheduling; resolved once per worker."""

    enable_fingerprints: bool = False
    failure_policy: str = "continue"
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 60.0
    max_failed_retries: int = 0
    max_killed_retries: int = 2

    @classmethod
    def resolve(
        cls, environ: Mapping[str, str] | None = None, **explicit: Any
    ) -> SchedulerSettings:
        """Build settings from explicit values (``None`` = not given), then env, then defaults."""
        unknown = set(explicit) - set(_PARSERS)
        if unknown:
            raise ConfigError(f"unknown scheduler setting(s): {', '.join(sorted(unknown))}")
        defaults = cls()
        values = {
            name: resolve(name, explicit.get(name), parse, getattr(defaults, name), environ)
            for name, parse in _PARSERS.items()
        }
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values no parser can catch alone."""
        if self.failure_policy not in FAILURE_POLICIES:
            raise ConfigError(
                f"failure_policy must be one of {', '.join(FAILURE_POLICIES)}, "
                f"got {self.failure_policy!r}"
            )
        for name in ("heartbeat_interval", "heartbeat_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number of seconds, got {value}")
        if self.heartbeat_interval < MIN_HEARTBEAT_INTERVAL:  # a thread polling in a loop
            raise ConfigError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be at least "
                f"{MIN_HEARTBEAT_INTERVAL} s"
            )
        if self.heartbeat_timeout > MAX_HEARTBEAT_TIMEOUT:
            raise ConfigError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be at most "
                f"{MAX_HEARTBEAT_TIMEOUT:g} s (a week)"
            )
        if self.heartbeat_interval * 2 > self.heartbeat_timeout:  # one late beat is no death
            raise ConfigError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be at most half of "
                f"heartbeat_timeout ({self.heartbeat_timeout})"
            )


def host_capacity(
    declared: Mapping[str, Any] | str | None,
    *,
    environ: Mapping[str, str] | None = None,
    where: str = "resources",
    always: bool = False,
) -> Capacity | None:
    """This host's capacity: what is detected, with ``declared`` (else
    ``LAUF_DVC_RESOURCES``) in its place. None when nothing is declared and not
    ``always`` (the worker detects it if a task needs it)."""
    env = os.environ if environ is None else environ
    var = ENV_PREFIX + "RESOURCES"
    if declared is None and var in env:
        declared, where = env[var], f"environment variable {var}"
    if declared is None and not always:
        return None
    try:
        amounts = parse_resources(declared or {}, where=where)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return declare(detect(env), amounts)


# -- lauf-dvc settings in dvc.yaml -------------------------------------------------------


def _as_int(minimum: int | None) -> Callable[[Any], int]:
    def coerce(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
        return number

    return coerce


def _as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    return parse_positive_float(str(value))


def _as_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _as_choice(*choices: str) -> Callable[[Any], str]:
    def coerce(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return coerce


def _as_labels(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of labels, got {value!r}")
    return tuple(sorted({v.strip() for v in value}))


def _as_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of names, got {value!r}")
    return tuple(v.strip() for v in value)


def _as_jobs(value: Any) -> int | str:
    """A number of workers >= 1, or ``auto`` (as many as the host's capacity keeps busy)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _as_int(1)(value)
    except ValueError:
        raise ValueError(f"expected a number of workers >= 1 or auto, got {value!r}") from None


def _as_resources(value: Any) -> tuple[tuple[str, int], ...]:
    """``cpus=32,gpus=4,mem=128G,licence=1`` or a mapping: a host's capacity."""
    return tuple(sorted(parse_resources(value, where="").items()))  # where: the caller's


def _as_groups(value: Any) -> tuple[tuple[str, int], ...]:
    """``{api: 2, db: 1}`` (or ``api=2,db=1``): how many stages of a group run at once."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not eq for _, eq, _ in pairs):
            raise ValueError(f"expected NAME=LIMIT,..., got {value!r}")
        value = {k.strip(): v.strip() for k, _, v in pairs}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of group names to limits, got {value!r}")
    out = {}
    for name, limit in value.items():
        try:
            out[str(name)] = _as_int(1)(limit)
        except ValueError as exc:
            raise ValueError(f"group {name}: {exc}") from None
    return tuple(sorted(out.items()))


def _as_group(value: Any) -> str:
    name = _as_str(value)
    if "|" in name or "," in name:
        raise ValueError(f"a group name has no '|' or ',', got {value!r}")
    return name


def _as_amount(name: str) -> Callable[[Any], int]:
    def coerce(value: Any) -> int:
        return parse_amount(name, value)

    return coerce


def _as_counters(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of resource names to amounts, got {value!r}")
    out = {str(k): parse_amount(str(k), v) for k, v in value.items()}
    builtin = sorted(set(out) & {"cpus", "gpus", "mem"})
    if builtin:
        raise ValueError(f"{builtin[0]} is a key of meta.lauf itself, not of resources")
    return tuple(sorted(out.items()))


#: Every key allowed in ``vars: [{lauf: {...}}]`` and how to read it (also from env).
PROJECT_KEYS: dict[str, Callable[[Any], Any]] = {
    "jobs": _as_jobs,
    "db": _as_str,
    "fingerprint": _as_str,
    "failure_policy": _as_choice(*FAILURE_POLICIES),
    "heartbeat_interval": _as_float,
    "heartbeat_timeout": _as_float,
    "max_failed_retries": _as_int(0),
    "max_killed_retries": _as_int(0),
    "lock": _as_choice(*LOCK_MODES),
    "disable_plugins": _as_str_list,
    "resources": _as_resources,
    "groups": _as_groups,
}

#: Every key allowed in a stage's ``meta: {lauf: {...}}``.
STAGE_KEYS: dict[str, Callable[[Any], Any]] = {
    "requires": _as_labels,
    "max_workers": _as_int(1),
    "retries": _as_int(0),
    "priority": _as_int(None),
    "fingerprint": _as_str,
    "cpus": _as_amount("cpus"),
    "gpus": _as_amount("gpus"),
    "mem": _as_amount("mem"),
    "resources": _as_counters,
    "group": _as_group,
}


@dataclass(frozen=True)
class ProjectSettings:
    """Settings of a lauf-dvc run: command line > LAUF_DVC_* > dvc.yaml > these defaults."""

    jobs: int | str = 4  # or "auto"
    db: str | None = None  # None: SQLite in .dvc/tmp/lauf/lauf.sqlite
    fingerprint: str = "dvc"
    failure_policy: str = "stop"  # like `dvc repro`; --keep-going means "continue"
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 60.0
    max_failed_retries: int = 0
    max_killed_retries: int = 2
    lock: str = "auto"
    disable_plugins: tuple[str, ...] = ()
    resources: tuple[tuple[str, int], ...] | None = None  # this host's capacity, declared
    groups: tuple[tuple[str, int], ...] | None = None  # group -> stages of it at once

    def capacity(self) -> Capacity:
        """This host's capacity: detected, with what ``resources`` declares in its place."""
        return declare(detect(), dict(self.resources or ()))

    def group_limits(self) -> dict[str, int]:
        return dict(self.groups or ())

    @classmethod
    def resolve(
        cls,
        cli: Mapping[str, Any] | None = None,
        yaml: Mapping[str, Any] | None = None,
        *,
        source: str = "dvc.yaml",
        environ: Mapping[str, str] | None = None,
    ) -> ProjectSettings:
        """Merge the layers; an unknown key or a bad value is a :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        yaml = dict(yaml or {})
        unknown = sorted(set(yaml) - set(PROJECT_KEYS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key 'lauf.{unknown[0]}' in vars "
                f"(known: {', '.join(PROJECT_KEYS)})"
            )
        for key, coerce in PROJECT_KEYS.items():
            if key in yaml:  # checked even when overridden: a broken file is an error anyway
                try:
                    coerce(yaml[key])
                except ValueError as exc:
                    raise ConfigError(f"{source}: vars lauf.{key}: {exc}") from None
            var = ENV_PREFIX + key.upper()
            if cli and cli.get(key) is not None:
                raw, where = cli[key], f"command line option --{key.replace('_', '-')}"
            elif var in env:
                raw, where = env[var], f"environment variable {var}"
            elif key in yaml:
                raw, where = yaml[key], f"{source}: vars lauf.{key}"
            else:
                continue
            try:
                values[key] = coerce(raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        settings = cls(**values)
        settings.scheduler().validate()
        return settings

    def scheduler(self, **override: Any) -> SchedulerSettings:
        """The core's settings for a DVC run. Staleness is still the core's: the sync
        before a run decides it (:func:`lauf_dvc.scheduler.staleness.decide`, fed by the
        stages' fingerprinters). The worker's own start-up check and claim-time cutoff
        stay off: they would judge a DVC stage by task fingerprints it has none of; its
        claim-time check is DVC's ``Stage.changed()``, made in the same hold of DVC's lock
        that removes its outputs (lauf_dvc.dvc.run.runner)."""
        return SchedulerSettings(
            enable_fingerprints=override.get("enable_fingerprints", False),
            failure_policy=override.get("failure_policy", self.failure_policy),
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            max_failed_retries=self.max_failed_retries,
            max_killed_retries=self.max_killed_retries,
        )


@dataclass(frozen=True)
class StageSettings:
    """A stage's ``meta: {lauf: {...}}``."""

    requires: tuple[str, ...] = ()
    max_workers: int = 1
    retries: int | None = None
    priority: int = 0
    fingerprint: str | None = None
    cpus: int | None = None
    gpus: int | None = None
    mem: int | None = None  # MiB
    resources: tuple[tuple[str, int], ...] | None = None  # named counters
    group: str | None = None

    def demand(self) -> dict[str, int]:
        """What the stage declared it holds while it runs."""
        declared = {k: getattr(self, k) for k in ("cpus", "gpus", "mem")}
        named = dict(self.resources or ())
        return {**{k: v for k, v in declared.items() if v is not None}, **named}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, *, where: str) -> StageSettings:
        """Read ``meta.lauf`` of the stage ``where`` names (e.g. ``dvc.yaml:train``)."""
        lauf = (meta or {}).get("lauf")
        if lauf is None:
            return cls()
        if not isinstance(lauf, Mapping):
            raise ConfigError(f"{where}: meta.lauf must be a mapping, got {lauf!r}")
        values = {}
        for key, raw in lauf.items():
            coerce = STAGE_KEYS.get(key)
            if coerce is None:
                raise ConfigError(
                    f"{where}: unknown key 'meta.lauf.{key}' (known: {', '.join(STAGE_KEYS)})"
                )
            try:
                values[key] = coerce(raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: meta.lauf.{key}: {exc}") from None
        return cls(**values)
