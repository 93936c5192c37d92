"""Settings: command line > ``LAUF_DVC_*`` environment > dvc.yaml > defaults.

Every setting is declared once, in :data:`SETTINGS`: its key, where it is read (scope),
how a value is checked, its default and what it does. The dataclasses below take their
defaults from it, ``PROJECT_KEYS``/``STAGE_KEYS`` are made from it, and the tables of
docs/configuration.md are generated from it (:func:`markdown_tables`; a test compares).
Everything is read at call time (:func:`read_setting`), never at import time, and passed
down explicitly.

pydantic-settings was weighed for this (issue 16) and not taken. It removes no code: every
coercer would stay as a validator (users and tests see our words, not pydantic's), and
the dvc.yaml layer, the "checked even when overridden" rule and the error prefixes
("environment variable X:", "dvc.yaml: vars lauf.key:") would become a custom source
and a ValidationError translation. And it costs import time, paid by every CLI start,
i.e. every stage: ``python -X importtime -c "import lauf_dvc.cli"``, median of 31 runs
(2 loaded cores), 457 ms; with pydantic-settings and these dataclasses as BaseSettings
570 ms (+113 ms; +89 ms between the fastest runs). It is installed (DVC -> gto needs it) but
no lauf command imports it.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from lauf_dvc.errors import ConfigError
from lauf_dvc.resources import Capacity, declare, detect, parse_amount, parse_resources

Coerce = Callable[[Any], Any]

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


# -- how a value is read -----------------------------------------------------------------
# Each takes what dvc.yaml or the environment holds and raises ValueError with the words a
# user sees after "where: " (tests assert them).


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {text!r}")


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


def _or_none(value: Any) -> str | None:
    return str(value) or None  # set but empty is unset


def _is_one(value: Any) -> bool:
    return bool(value == "1")  # only "1": anything else has always meant off


# -- the table ---------------------------------------------------------------------------


class Scope(enum.Enum):
    """Where a setting is read (every scope but ``stage`` and ``option`` has a variable)."""

    PROJECT = "project"  # dvc.yaml's vars.lauf, LAUF_DVC_<KEY>; some also an option
    STAGE = "stage"  # a stage's meta.lauf, nothing else
    ENV = "environment"  # LAUF_DVC_<KEY> (some also an option), never dvc.yaml
    OPTION = "option"  # a command-line option only
    PLUGIN = "plugin"  # read by a plugin of its own; here to be documented
    COMMAND = "command"  # set by lauf-dvc for a stage's command, never read as a setting


@dataclass(frozen=True)
class Setting:
    """One setting. ``doc`` and ``option`` are Markdown, as docs/configuration.md shows
    them; ``shown``: what a default of None means there."""

    key: str
    scope: Scope
    coerce: Coerce
    default: Any
    doc: str
    shown: str = ""
    option: str = ""

    @property
    def env(self) -> str | None:
        """The environment variable that sets it, if any."""
        if self.scope in (Scope.STAGE, Scope.OPTION):
            return None
        return ENV_PREFIX + self.key.upper()


_P, _S, _E = Scope.PROJECT, Scope.STAGE, Scope.ENV

#: Every setting, in the order the docs list them: key, scope, how a value is read, default,
#: what it does (Markdown, as docs/configuration.md shows it); what a default of None means
#: there, the option that sets it too. One line of text each: hand-wrapped, not formatted.
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    # -- project: vars: [{lauf: {...}}] in the root dvc.yaml
    Setting("jobs", _P, _as_jobs, 4,
            "local worker processes `lauf-dvc repro` starts (`-j N`); an integer >= 1, or `auto`: "
            "as many as this host's capacity keeps busy (its cores, or fewer when every stage needs"
            " more of something; see [Resources](#resources)). Never more than stages that could "
            "run at once",
            option="`lauf-dvc repro -j N`"),
    Setting("db", _P, _as_str, None,
            "the scheduler database (`--db`), a SQLAlchemy URL: `sqlite:///path/to/file.sqlite` or "
            "`postgresql+psycopg://user@host:5432/name` (password in `~/.pgpass`); every worker of "
            "a run must use the same one. A password in the URL (`user:PW@`, `?password=PW`) is "
            "never printed (`***`), and no stage command sees `LAUF_DVC_DB` in its environment",
            shown="a SQLite file, `.dvc/tmp/lauf/lauf.sqlite`", option="`lauf-dvc --db URL ...`"),
    Setting("fingerprint", _P, _as_str, "dvc",
            "what decides whether a stage is stale: `dvc` (DVC's own `dvc status`), `xxhash` "
            "(content hashes with a stat cache), or a fingerprinter from a plugin (`lauf-dvc "
            "plugins` lists them; see [plugins.md](plugins.md))"),
    Setting("failure_policy", _P, _as_choice(*FAILURE_POLICIES), "stop",
            "`stop`: after a stage failed for good, no new stage starts (those running finish), as "
            "`dvc repro` stops; `continue` (`repro --keep-going`): stages that do not depend on the"
            " failure keep running; `ignore` (`repro --ignore-errors`): a failed stage counts as "
            "done and its dependents run too",
            option="`lauf-dvc repro --keep-going`, `--ignore-errors`"),
    Setting("heartbeat_interval", _P, _as_float, 10.0,
            "seconds between a worker's heartbeats; less than `heartbeat_timeout`"),
    Setting("heartbeat_timeout", _P, _as_float, 60.0,
            "seconds without a heartbeat after which a worker is presumed dead: its stage becomes "
            "`killed` and is retried elsewhere. Raise it on loaded clusters (workers' clocks must "
            "agree to well within it)"),
    Setting("max_failed_retries", _P, _as_int(0), 0,
            "automatic retries of a stage whose command failed (per stage: `meta.lauf.retries`)"),
    Setting("max_killed_retries", _P, _as_int(0), 2,
            "automatic retries of a stage whose worker died"),
    Setting("lock", _P, _as_choice(*LOCK_MODES), "auto",
            "how a new SQLite database is locked: `wal` (local disk), `flufl` (a network "
            "filesystem: rollback journal and an NFS-safe lock file), `auto` (`flufl` on "
            "NFS/Lustre/FUSE/..., else `wal`). The mode is recorded in the file when it is created:"
            " `auto` then follows it, the other mode is refused; see [slurm.md](slurm.md). Ignored "
            "for PostgreSQL"),
    Setting("disable_plugins", _P, _as_str_list, (),
            "plugins never loaded nor called, by name (`lauf-dvc plugins` lists them); in the "
            "variable, comma-separated"),
    Setting("resources", _P, _as_resources, None,
            "the capacity of each host running the project's workers, in place of what is detected:"
            " a mapping (`{cpus: 32, gpus: 4, mem: 128G, licence: 1}`) or "
            "`cpus=32,gpus=4,mem=128G,licence=1` (`--resources`); see [Resources](#resources)",
            shown="detected",
            option="`lauf-dvc repro --resources ...`, `lauf-dvc worker --resources ...`"),
    Setting("groups", _P, _as_groups, None,
            "how many stages of each concurrency group (`meta.lauf.group`) may run at once, across "
            "all workers and hosts: `{api: 2, db: 1}` (in the variable `api=2,db=1`); a group not "
            "named here has limit 1: its stages never run together",
            shown="every group 1"),
    # -- stage: meta: {lauf: {...}} of each stage
    Setting("requires", _S, _as_labels, (),
            "labels a worker must have to run the stage: `lauf-dvc worker --labels gpu` takes "
            "stages that require `gpu` (and those that require nothing); `lauf-dvc repro`'s local "
            "workers have no labels"),
    Setting("max_workers", _S, _as_int(1), 1,
            "only 1 for a DVC stage (anything else is an error, exit 3): a stage is one "
            "reproduction of its command, whose outputs DVC removes, locks and records once; "
            "`Graphband` tasks may have several workers (see [scheduler.md](scheduler.md))"),
    Setting("retries", _S, _as_int(0), None,
            "automatic retries of this stage after its command failed",
            shown="the project's `max_failed_retries`"),
    Setting("priority", _S, _as_int(None), 0,
            "among stages ready to run, higher first (equal: pipeline order)"),
    Setting("fingerprint", _S, _as_str, None,
            "the fingerprinter deciding whether this stage is stale",
            shown="the project's `fingerprint`"),
    Setting("cpus", _S, _as_amount("cpus"), None,
            "cores the stage holds while it runs; declared, its command gets `OMP_NUM_THREADS` "
            "(unless set) and `LAUF_DVC_CPUS`",
            shown="1"),
    Setting("gpus", _S, _as_amount("gpus"), None,
            "GPUs it holds; declared (0 too), its command gets `CUDA_VISIBLE_DEVICES` with the ids "
            "it holds, distinct from every other running stage of the host",
            shown="0"),
    Setting("mem", _S, _as_amount("mem"), None,
            "memory it holds: `16G`, `512M`, `1.5T`; a bare number is MiB (as SLURM's `--mem`)",
            shown="not counted"),
    Setting("resources", _S, _as_counters, None,
            "named counters it holds, e.g. `{licence: 1}`; a host has only those its `resources` "
            "declare"),
    Setting("group", _S, _as_group, None,
            "its concurrency group: at most the group's limit (project `groups`, else 1) of its "
            "stages run at once, across all hosts"),
    # -- the command line and the environment only
    Setting("identifier", _E, _or_none, None,
            "the worker's name in the database (default `host:pid:random`); unique among live "
            "workers",
            option="`lauf-dvc worker --identifier NAME`"),
    Setting("labels", Scope.OPTION, str, None,
            "the labels of this worker (see `requires`)",
            option="`lauf-dvc worker --labels a,b`"),
    Setting("max_idle", _E, parse_non_negative_float, None,
            "leave after waiting this long with nothing to claim while the stages left wait for "
            "stages running elsewhere (SLURM: give the node back)",
            option="`lauf-dvc worker --max-idle SECONDS`"),
    Setting("max_tasks", Scope.OPTION, str, None,
            "leave after N stages",
            option="`lauf-dvc worker --max-tasks N`"),
    Setting("spawn", _E, _is_one, False,
            "`1`: `lauf-dvc repro` starts its workers as new `lauf-dvc worker` processes instead of"
            " forking (the default on Linux; elsewhere always new processes)"),
    Setting("enable_fingerprints", _E, parse_bool, False,
            "the Python API's default for `Graphband(enable_fingerprints=...)`, a boolean (`1`/`0`,"
            " `true`/`false`); see [scheduler.md](scheduler.md)"),
    Setting("disabled", _E, parse_bool, False,
            "the Python API's default for `Graphband(disabled=...)`, a boolean: plain iteration in "
            "dependency order, no database"),
    Setting("jsonlog", Scope.PLUGIN, str, None,
            "the event log of the `jsonlog` plugin ([plugins.md](plugins.md))"),
    Setting("fault", _E, _or_none, None,
            "fault injection for the crash tests, `POINT[@STAGE][,...]`: a worker kills itself at a"
            " named point (`lauf_dvc/faults.py`)"),
    Setting("fault_once", _E, _or_none, None,
            "a directory: each item of `LAUF_DVC_FAULT` fires once across all processes (a marker "
            "file there), so the retry runs through"),
    Setting("compat_break", _E, _as_str_list, (),
            "`name,...`: make those probes of DVC internals fail, to test the fallbacks "
            "(`lauf_dvc/dvc/compat.py`, docs/compatibility.md); an unknown name is an error"),
    Setting("cpus", Scope.COMMAND, str, None,
            "set by lauf-dvc for a stage's command: the cores it holds (see "
            "[Resources](#resources))"),
    Setting("run_token", Scope.COMMAND, str, None,
            "set by lauf-dvc for a stage's command, and so in every process it starts: a worker "
            "that runs the stage again first kills what still carries the token of a run whose "
            "worker died (`lauf_dvc/dvc/run/command.py`)"),
)
# fmt: on

#: The settings lauf-dvc reads from LAUF_DVC_<KEY>, by key.
_FROM_ENV = {s.key: s for s in SETTINGS if s.scope in (Scope.PROJECT, Scope.ENV)}
_TABLE_DEFAULT: Any = object()  # read_setting's default: the table's


def _default(key: str, scope: Scope = Scope.PROJECT) -> Any:
    (setting,) = [s for s in SETTINGS if s.key == key and s.scope == scope]
    return setting.default


def read_setting(
    key: str,
    explicit: Any = None,
    *,
    environ: Mapping[str, str] | None = None,
    default: Any = _TABLE_DEFAULT,
) -> Any:
    """``explicit`` if not None, else ``LAUF_DVC_<KEY>`` read now and checked as
    :data:`SETTINGS` says, else ``default`` (the table's unless given).

    A malformed environment value is a :class:`ConfigError` naming the variable.
    """
    if explicit is not None:
        return explicit
    setting = _FROM_ENV[key]  # KeyError: not a setting read from the environment
    env = os.environ if environ is None else environ
    var = ENV_PREFIX + key.upper()
    raw = env.get(var)
    if raw is None:
        return setting.default if default is _TABLE_DEFAULT else default
    try:
        return setting.coerce(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable {var}: {exc}") from None


def worker_identifier() -> str | None:
    """``LAUF_DVC_IDENTIFIER``: the name a worker registers with (None: make one)."""
    name: str | None = read_setting("identifier")
    return name


def spawn_workers() -> bool:
    """``LAUF_DVC_SPAWN=1``: ``repro`` starts new worker processes instead of forking."""
    spawn: bool = read_setting("spawn")
    return spawn


def compat_broken() -> set[str]:
    """``LAUF_DVC_COMPAT_BREAK=name,...``: DVC-seam probes to fail (tests of the fallbacks)."""
    return set(read_setting("compat_break"))


#: Every key allowed in ``vars: [{lauf: {...}}]`` and how to read it (also from env).
PROJECT_KEYS: dict[str, Coerce] = {s.key: s.coerce for s in SETTINGS if s.scope == Scope.PROJECT}

#: Every key allowed in a stage's ``meta: {lauf: {...}}``.
STAGE_KEYS: dict[str, Coerce] = {s.key: s.coerce for s in SETTINGS if s.scope == Scope.STAGE}


# -- the settings of a run ---------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerSettings:
    """What a worker needs to know about scheduling; resolved once per worker."""

    enable_fingerprints: bool = _default("enable_fingerprints", Scope.ENV)
    failure_policy: str = "continue"  # Graphband's; a DVC run's is the project's (stop)
    heartbeat_interval: float = _default("heartbeat_interval")
    heartbeat_timeout: float = _default("heartbeat_timeout")
    max_failed_retries: int = _default("max_failed_retries")
    max_killed_retries: int = _default("max_killed_retries")

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
            name: read_setting(
                name, explicit.get(name), environ=environ, default=getattr(defaults, name)
            )
            for name in _PARSERS
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


#: SchedulerSettings' fields and how LAUF_DVC_<NAME> is read for each.
_PARSERS: dict[str, Coerce] = {f.name: _FROM_ENV[f.name].coerce for f in fields(SchedulerSettings)}


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


@dataclass(frozen=True)
class ProjectSettings:
    """Settings of a lauf-dvc run: command line > LAUF_DVC_* > dvc.yaml > these defaults."""

    # The defaults are SETTINGS'; test_docs checks these fields are its project keys.
    jobs: int | str = _default("jobs")  # or "auto"
    db: str | None = _default("db")  # None: SQLite in .dvc/tmp/lauf/lauf.sqlite
    fingerprint: str = _default("fingerprint")
    failure_policy: str = _default("failure_policy")
    heartbeat_interval: float = _default("heartbeat_interval")
    heartbeat_timeout: float = _default("heartbeat_timeout")
    max_failed_retries: int = _default("max_failed_retries")
    max_killed_retries: int = _default("max_killed_retries")
    lock: str = _default("lock")
    disable_plugins: tuple[str, ...] = _default("disable_plugins")
    resources: tuple[tuple[str, int], ...] | None = _default("resources")  # declared capacity
    groups: tuple[tuple[str, int], ...] | None = _default("groups")  # group -> limit

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

    requires: tuple[str, ...] = _default("requires", Scope.STAGE)
    max_workers: int = _default("max_workers", Scope.STAGE)
    retries: int | None = _default("retries", Scope.STAGE)
    priority: int = _default("priority", Scope.STAGE)
    fingerprint: str | None = _default("fingerprint", Scope.STAGE)
    cpus: int | None = _default("cpus", Scope.STAGE)
    gpus: int | None = _default("gpus", Scope.STAGE)
    mem: int | None = _default("mem", Scope.STAGE)  # MiB
    resources: tuple[tuple[str, int], ...] | None = _default("resources", Scope.STAGE)
    group: str | None = _default("group", Scope.STAGE)

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


# -- the tables of docs/configuration.md -------------------------------------------------

#: The heading each table of docs/configuration.md follows.
PROJECT_HEADING = "## Project settings: `vars: [{lauf: {...}}]`"
STAGE_HEADING = "## Stage settings: `meta: {lauf: {...}}`"
OTHER_HEADING = "## Command-line options and other environment variables"


def _shown_default(setting: Setting) -> str:
    value = setting.default
    if value is None:
        return f"none: {setting.shown}" if setting.shown else "none"
    text = f"[{', '.join(value)}]" if isinstance(value, tuple) else str(value)
    return f"`{text}`"


def _markdown(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), "|" + "---|" * len(header), *map(line, rows)])


def markdown_tables() -> dict[str, str]:
    """The tables of docs/configuration.md, generated from :data:`SETTINGS`, by heading."""

    def env(s: Setting) -> str:
        return f"`{s.env}`" if s.env else ""

    project = [(f"`{s.key}`", _shown_default(s), env(s), s.doc) for s in SETTINGS if s.scope == _P]
    stage = [(f"`{s.key}`", _shown_default(s), s.doc) for s in SETTINGS if s.scope == _S]
    other = [
        (s.option, env(s), s.doc if s.scope != _P else f"as `{s.key}` above")
        for s in SETTINGS
        if s.scope not in (_P, _S) or s.option
    ]
    return {
        PROJECT_HEADING: _markdown(("key", "default", "env var", "what it does"), project),
        STAGE_HEADING: _markdown(("key", "default", "what it does"), stage),
        OTHER_HEADING: _markdown(("option", "env var", "what it does"), other),
    }


def update_markdown(text: str) -> str:
    """``text`` (docs/configuration.md) with the first table after each heading of
    :func:`markdown_tables` replaced by the generated one; the rest unchanged."""
    lines = text.split("\n")
    for heading, table in markdown_tables().items():
        start = lines.index(heading)
        first = next(i for i in range(start, len(lines)) if lines[i].startswith("|"))
        end = next((i for i in range(first, len(lines)) if not lines[i].startswith("|")), None)
        lines[first:end] = table.split("\n")
    return "\n".join(lines)
