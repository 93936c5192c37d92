"""What is stale, as DVC says: ``dvc status``'s verdicts on stages.

:mod:`.status` asks DVC (under its repository lock, in one pass over its index) which
stages changed and why; :mod:`.verdictcache` keeps those verdicts for ``lauf-dvc
status`` while nothing DVC would look at changed; :mod:`.fingerprinter` is the built-in
``dvc`` fingerprinter built on them (registered by :mod:`lauf_dvc.builtin.dvc_fingerprint`).

Imports nothing of running a stage (:mod:`lauf_dvc.dvc.run`). Import the modules by
their full names; this ``__init__`` imports nothing.
"""
