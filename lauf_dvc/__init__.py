"""lauf-dvc: run DVC pipeline stages in parallel with workers that share only a database.

The public API is what this module re-exports; everything else may change.
"""

from lauf_dvc.dvc.api import reproduce
from lauf_dvc.errors import (
    ConfigError,
    ExitCode,
    FailurePolicyStop,
    IllegalTransition,
    LaufError,
    LockTimeout,
    PipelineError,
    PluginError,
    SchemaVersionError,
    StoreError,
    WorkerCrashed,
)
from lauf_dvc.fingerprint import Fingerprint, FingerprintContext, Fingerprinter
from lauf_dvc.hookspecs import hookimpl
from lauf_dvc.scheduler.graphband import Graphband
from lauf_dvc.scheduler.store import Store
from lauf_dvc.scheduler.worker import Task
from lauf_dvc.states import TaskState

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExitCode",
    "FailurePolicyStop",
    "Fingerprint",
    "FingerprintContext",
    "Fingerprinter",
    "Graphband",
    "IllegalTransition",
    "LaufError",
    "LockTimeout",
    "PipelineError",
    "PluginError",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "Task",
    "TaskState",
    "WorkerCrashed",
    "__version__",
    "hookimpl",
    "reproduce",
]
