"""Committing a stage: its ``dvc.lock`` entry written byte for byte as DVC writes it
(:mod:`.lockfile`, which also reads that file's entries in DVC's shape), and DVC's
rewrites of ``dvc.lock``, ``.dvc`` files and its path-lock file made atomic
(:mod:`.atomic`, also lauf's own atomic JSON writes).

Imports no other part of :mod:`lauf_dvc.dvc` than the seam (:mod:`~lauf_dvc.dvc.compat`)
and the YAML parser (:mod:`~lauf_dvc.dvc.yamlparse`). Import the modules by their full
names; this ``__init__`` imports nothing.
"""
