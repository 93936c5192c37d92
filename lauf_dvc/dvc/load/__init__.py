"""Loading the pipeline and selecting its stages, as DVC does.

:mod:`.pipeline` loads every stage through DVC's own API (and opens the repository,
under DVC's repository lock: ``make_repo``, ``locked``); :mod:`.pipecache` keeps the
loaded pipeline between commands while nothing it was built from changed;
:mod:`.speedups` makes DVC's reading of ``dvc.yaml``, ``dvc.lock`` and params files
cheaper without changing what it computes; :mod:`.params` reads a params file as DVC
does; :mod:`.plan` turns ``dvc repro``'s options into the stages it would consider.

Imports nothing of running or of DVC's status (:mod:`lauf_dvc.dvc.run`,
:mod:`lauf_dvc.dvc.status`); it reads ``dvc.lock`` entries through
:mod:`lauf_dvc.dvc.commit.lockfile` and takes DVC's lock through
:mod:`lauf_dvc.dvc.repolock`. Import the modules by their full names; this ``__init__``
imports nothing.
"""
