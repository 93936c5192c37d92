"""Parameter values of a stage, read as DVC reads them, as fingerprint parts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lauf_dvc.fingerprint.model import MISSING, json_value, param_key

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo
    from lauf_dvc.fingerprint.context import FingerprintContext


def split_param(param: str) -> tuple[str, str | None]:
    """``"params.yaml:train.lr"`` -> ``("params.yaml", "train.lr")``; a bare file -> key None."""
    path, sep, key = param.partition(":")
    return (path, key) if sep else (path, None)


def param_value(config: Any, key: str | None) -> str:
    """The part value of ``key`` in a parsed params file (``None``: the whole file)."""
    import dpath

    if config is None:
        return MISSING
    if key is None:
        return json_value(config)
    value = config  # the common case (nested mappings) without dpath, which walks the
    for part in key.split("."):  # whole file for every key it looks up
        if not isinstance(value, dict) or part not in value:
            break
        value = value[part]
    else:
        return json_value(value)
    try:  # list indexes, keys that are not strings...: as DVC looks them up
        return json_value(dpath.get(config, key, separator="."))
    except KeyError:
        return MISSING


def param_parts(stage: StageInfo, ctx: FingerprintContext) -> dict[str, str]:
    """``{"param:params.yaml:train.lr": "0.1", ...}`` for every param the stage tracks."""
    parts: dict[str, str] = {}
    for param in stage.params:
        path, key = split_param(param)
        parts[param_key(param)] = param_value(ctx.params(path), key)
    return parts
