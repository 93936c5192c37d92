"""DVC's loggers, made to go through ours."""

from __future__ import annotations

import logging


def tame_dvc_logging(level: int) -> None:
    """DVC's loggers at ``level``, through our handler only.

    Importing ``dvc`` runs ``dvc.logger.setup()``: its loggers go to INFO with handlers of
    their own on stdout ("Updating lock file 'dvc.lock'" in the middle of our output, and
    every warning twice). Setting the level before that import is undone by it, so import
    it first (cheap: ``dvc/__init__`` imports little else), then take over.
    """
    import dvc.logger  # noqa: F401  (runs DVC's setup now, once per process)

    for name in ("dvc", "dvc_objects", "dvc_data"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
