"""Fingerprints: what a stage's result depends on, and why a stage is stale.

A :class:`Fingerprint` carries the fingerprinter's name and version plus one part per
input (command, each parameter, each dependency and output), so :func:`diff` can name
the change. Fingerprinters implement :class:`Fingerprinter` and come from plugins.
"""

from lauf_dvc.fingerprint.context import FingerprintContext, Fingerprinter
from lauf_dvc.fingerprint.model import (
    CMD,
    MISSING,
    Fingerprint,
    dep_key,
    diff,
    json_value,
    out_key,
    param_key,
    reasons,
)
from lauf_dvc.fingerprint.params import param_parts
from lauf_dvc.fingerprint.statcache import CacheStats, StatCache

__all__ = [
    "CMD",
    "MISSING",
    "CacheStats",
    "Fingerprint",
    "FingerprintContext",
    "Fingerprinter",
    "StatCache",
    "dep_key",
    "diff",
    "json_value",
    "out_key",
    "param_key",
    "param_parts",
    "reasons",
]
