"""The only package that imports dvc: load the pipeline, run one stage, commit it."""

from lauf_dvc.dvc.load.pipeline import StageInfo, load_pipeline
from lauf_dvc.dvc.run.runner import StageResult, StageRunner, run_stage

__all__ = ["StageInfo", "StageResult", "StageRunner", "load_pipeline", "run_stage"]
