"""Make DVC's own validation of ``dvc.yaml`` cost what it should, without changing it.

``dvc.schema.either_or`` builds and compiles a fresh ``voluptuous.Schema`` for every stage
of every ``dvc.yaml`` it validates (``vol.Schema(schema)(data)`` inside the validator),
about 1 ms per stage: a 1000-stage ``dvc.yaml`` costs a second to validate, each time
it is loaded, and a worker loads it for every stage it runs. The schema it compiles is
always one of two module constants, so :func:`install` gives that function a
``voluptuous`` whose ``Schema`` compiles each such constant once per process and then
reuses it. The validation itself is DVC's, unchanged (same schema, same errors).
"""

from __future__ import annotations

import threading
import types
from typing import Any

_installed = False
_lock = threading.Lock()


def install() -> None:
    """Idempotent; call before DVC validates anything (``make_repo`` does)."""
    global _installed
    with _lock:
        if _installed:
            return
        import voluptuous
        from dvc import schema

        if getattr(schema, "vol", None) is voluptuous and hasattr(schema, "either_or"):
            schema.vol = _CachingVoluptuous(voluptuous)
        _installed = True


class _CachingVoluptuous(types.ModuleType):
    """``voluptuous`` itself, except ``Schema(x)`` with no options is compiled once per x."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self._compiled: dict[int, tuple[Any, Any]] = {}  # id(x) -> (x, Schema(x))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def Schema(self, schema: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return self._real.Schema(schema, *args, **kwargs)
        cached = self._compiled.get(id(schema))
        if cached is None or cached[0] is not schema:  # (keep x alive: its id stays its own)
            cached = (schema, self._real.Schema(schema))
            self._compiled[id(schema)] = cached
        return cached[1]
