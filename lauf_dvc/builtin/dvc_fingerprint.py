"""The built-in ``dvc`` fingerprinter, registered like any plugin's (the code that talks
to DVC is in :mod:`lauf_dvc.dvc.status.fingerprinter`: only ``lauf_dvc.dvc`` imports DVC)."""

from __future__ import annotations

from lauf_dvc.dvc.status.fingerprinter import DvcFingerprinter
from lauf_dvc.hookspecs import hookimpl


@hookimpl
def lauf_fingerprinters() -> list[DvcFingerprinter]:
    return [DvcFingerprinter()]
