"""The generic DAG scheduler: no DVC import anywhere below this package."""

from lauf_dvc.scheduler.graphband import Graphband, topological_order
from lauf_dvc.scheduler.store import Store
from lauf_dvc.scheduler.worker import Task, Worker

__all__ = ["Graphband", "Store", "Task", "Worker", "topological_order"]
