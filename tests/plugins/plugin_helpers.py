"""Helpers for the plugin tests (a module name no other test directory uses)."""

from __future__ import annotations

from typing import Any

from lauf_dvc.dvc.load.pipeline import StageInfo


def stage(address: str = "train", **fields: Any) -> StageInfo:
    """A StageInfo as load_pipeline returns it; paths relative to the repository root."""
    values: dict[str, Any] = dict(
        address=address,
        dvcfile="dvc.yaml",
        name=address,
        cmd=(f"python {address}.py",),
        wdir=".",
        deps=(),
        outs=(),
        params=(),
        upstream=(),
        frozen=False,
        always_changed=False,
    )
    values.update(fields)
    return StageInfo(**values)
