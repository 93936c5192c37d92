"""The fingerprint value: who computed it, and one part per input of the stage.

A fingerprint is stored as a string (``to_json``) in the scheduler database and compared
as a string there, so :meth:`Fingerprint.to_json` is canonical: two equal fingerprints
always give the same text. :func:`diff` names what changed between two of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: The part value of a dependency, output or parameter that does not exist.
MISSING = "missing"

CMD = "cmd"
PARAM = "param:"
DEP = "dep:"
OUT = "out:"

_FORMAT = 1  # bump when the JSON layout changes


def param_key(param: str) -> str:
    """``"params.yaml:train.lr"`` (or a bare file, tracked whole) -> its part key."""
    return PARAM + param


def dep_key(path: str) -> str:
    return DEP + path


def out_key(path: str) -> str:
    return OUT + path


def json_value(value: Any) -> str:
    """A parameter value as a part: canonical JSON, so the diff can show old -> new.

    Integral floats are written as integers: DVC compares values with ``==``, and
    ``1 == 1.0``, so editing ``lr: 1`` to ``lr: 1.0`` is no change for ``dvc status``.
    """
    return json.dumps(_normalize(value), sort_keys=True, separators=(",", ":"), default=str)


def _normalize(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value) if abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        return {str(k): _normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    return value


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """What a stage's result depends on, as computed by one fingerprinter.

    ``parts`` maps a key (``"cmd"``, ``"param:params.yaml:train.lr"``, ``"dep:data/raw.csv"``,
    ``"out:models/model.json"``, or any key a plugin chooses) to a string value. Two
    fingerprints are equal when fingerprinter, version and every part are equal.
    """

    fingerprinter: str
    version: str
    parts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.fingerprinter, str) or not self.fingerprinter:
            raise TypeError(f"fingerprinter must be a non-empty str, got {self.fingerprinter!r}")
        if not isinstance(self.version, str):
            raise TypeError(f"version must be a str, got {self.version!r}")
        for key, value in self.parts.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"part {key!r}: keys and values must be str, got {value!r}")
        frozen = MappingProxyType(dict(sorted(self.parts.items())))
        object.__setattr__(self, "parts", frozen)

    @property
    def label(self) -> str:
        """``"xxhash@1"``: the fingerprinter and its version."""
        return f"{self.fingerprinter}@{self.version}"

    @property
    def digest(self) -> str:
        """A stable hex digest over name, version and the sorted parts."""
        blob = json.dumps(
            [self.fingerprinter, self.version, list(self.parts.items())],
            separators=(",", ":"),
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_json(self) -> str:
        """Canonical text for the database: equal fingerprints give equal strings."""
        data = {
            "digest": self.digest,
            "fingerprinter": self.fingerprinter,
            "format": _FORMAT,
            "parts": dict(self.parts),
            "version": self.version,
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        """Parse :meth:`to_json` output.

        Raises:
            ValueError: not a fingerprint of this format, or its digest does not match.
        """
        try:
            data = json.loads(text)
            fp = cls(data["fingerprinter"], data["version"], data["parts"])
            ok = data.get("format") == _FORMAT and data.get("digest") == fp.digest
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a lauf-dvc fingerprint: {text[:40]!r}") from exc
        if not ok:
            raise ValueError(f"not a lauf-dvc fingerprint of format {_FORMAT}: {text[:40]!r}")
        return fp

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return (self.fingerprinter, self.version, self.parts) == (
            other.fingerprinter,
            other.version,
            other.parts,
        )

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Fingerprint({self.label}, {len(self.parts)} parts, {self.digest[:12]})"


# -- reasons -----------------------------------------------------------------------------


def diff(old: Fingerprint, new: Fingerprint) -> list[str]:
    """Why ``new`` differs from ``old``, one short human reason per changed part.

    Empty when they are equal. A change of fingerprinter (or of its version) is one
    reason on its own: parts of different fingerprinters are not comparable.
    Order: command, parameters, dependencies, outputs, then any other part, each sorted.
    """
    if old.label != new.label:
        return [f"fingerprinter changed {old.label} -> {new.label}"]
    keys = sorted(set(old.parts) | set(new.parts), key=_order)
    reasons: list[str] = []
    for key in keys:
        before, after = old.parts.get(key), new.parts.get(key)
        if before != after:
            reasons.extend(_reasons(key, before, after))
    return reasons


def reasons(stored: str | None, current: Fingerprint) -> list[str]:
    """:func:`diff` against a fingerprint as stored in the database (``to_json`` text).

    ``None`` (never fingerprinted) and text that is not a fingerprint of this format (a
    value written by an older lauf-dvc) each give one reason instead of raising.
    """
    if stored is None:
        return ["no fingerprint recorded yet"]
    try:
        old = Fingerprint.from_json(stored)
    except ValueError:
        return [f"stored fingerprint has an older format; now {current.label}"]
    return diff(old, current)


def _order(key: str) -> tuple[int, str]:
    if key == CMD:
        return 0, ""
    for rank, prefix in enumerate((PARAM, DEP, OUT), start=1):
        if key.startswith(prefix):
            return rank, key
    return 4, key


def _reasons(key: str, before: str | None, after: str | None) -> list[str]:
    if key == CMD:
        return ["command changed"]
    if key.startswith(PARAM):
        return _param_reasons(key[len(PARAM) :], before, after)
    if key.startswith(DEP):
        return [_path_reason("dependency", key[len(DEP) :], before, after, "content changed")]
    if key.startswith(OUT):
        return [_path_reason("output", key[len(OUT) :], before, after, "changed")]
    if before is None:
        return [f"{key} added"]
    if after is None:
        return [f"{key} removed"]
    return [f"{key} changed"]


def _path_reason(noun: str, path: str, before: str | None, after: str | None, mod: str) -> str:
    if before is None:
        return f"{noun} {path} added"
    if after is None:
        return f"{noun} {path} removed"
    if after == MISSING:
        return f"{noun} {path} deleted"
    if before == MISSING:
        return f"{noun} {path} created"
    return f"{noun} {path} {mod}"


def _param_reasons(param: str, before: str | None, after: str | None) -> list[str]:
    if before is None:
        return [f"param {param} added"]
    if after is None:
        return [f"param {param} removed"]
    old, new = _loads(before), _loads(after)
    if isinstance(old, dict) and isinstance(new, dict):  # a whole file: name the leaves
        a, b = dict(_leaves(old)), dict(_leaves(new))
        sep = "." if ":" in param else ":"  # params.yaml:train.lr / params.yaml:train
        return [
            f"{param}{sep}{leaf} {a.get(leaf, MISSING)} -> {b.get(leaf, MISSING)}"
            for leaf in sorted(set(a) | set(b))
            if a.get(leaf) != b.get(leaf)
        ] or [f"{param} changed"]
    return [f"{param} {before} -> {after}"]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # MISSING


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaves(sub, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, json_value(value)
