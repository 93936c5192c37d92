"""The only package that imports dvc: load the pipeline, run one stage, commit it.

:mod:`.load` (loading and selecting the pipeline), :mod:`.status` (what is stale, as DVC
says), :mod:`.run` (running one stage), :mod:`.commit` (its ``dvc.lock`` entry, atomic
writes), :mod:`.repolock` (DVC's locks), :mod:`.compat` (the seam: every DVC internal
used); above them :mod:`.project`, :mod:`.work` (one worker's loop), :mod:`.repro` and
:mod:`.api`. docs/internals.md has the map and the arrows allowed between the parts.
"""

from lauf_dvc.dvc.load.pipeline import StageInfo, load_pipeline
from lauf_dvc.dvc.run.runner import StageResult, StageRunner, run_stage

__all__ = ["StageInfo", "StageResult", "StageRunner", "load_pipeline", "run_stage"]
