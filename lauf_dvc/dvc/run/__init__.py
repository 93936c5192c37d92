"""Running ONE stage as ``dvc repro`` does: :mod:`.runner` (the three phases: DVC's
checks under the repository lock, the command, the commit) and :mod:`.command` (the
command's process: its log, and the kill of whatever a dead worker's run left behind).

The worker loop that claims stages and calls the runner is :mod:`lauf_dvc.dvc.work`.
Imports nothing of DVC's status or of the project (:mod:`lauf_dvc.dvc.status`,
:mod:`lauf_dvc.dvc.project`). Import the modules by their full names; this
``__init__`` imports nothing.
"""
