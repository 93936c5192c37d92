"""Settings: command line > ``LAUF_DVC_*`` environment > dvc.yaml > defaults.

Everything here is read at call time, never at import time, and passed down explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from lauf_dvc.errors import ConfigError

T = TypeVar("T")

ENV_PREFIX = "LAUF_DVC_"
FAILURE_POLICIES = ("continue", "stop")


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


def parse_positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise ValueError(f"expected a number > 0, got {text!r}")
    return value


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
        if self.heartbeat_interval >= self.heartbeat_timeout:
            raise ConfigError(
                f"heartbeat_interval ({self.heartbeat_interval}) must be less than "
                f"heartbeat_timeout ({self.heartbeat_timeout})"
            )
