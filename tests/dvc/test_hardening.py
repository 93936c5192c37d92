"""Issue 14: a run never hangs in silence, signals are handled, secrets stay secret.
Real repositories, real ``lauf-dvc`` processes."""

from __future__ import annotations

import pytest
from pipelines import MARK, dvc_yaml, stage
from repro_helpers import lauf

from lauf_dvc.errors import ExitCode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]


def gpu_pipeline() -> dict[str, str]:
    gpu = {**stage("out/g.txt", "out/a.txt"), "meta": {"lauf": {"requires": ["gpu"]}}}
    stages = {"a": stage("out/a.txt", "=a"), "g": gpu, "after": stage("out/c.txt", "out/g.txt")}
    return {"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)}


def test_a_stage_no_worker_may_take_is_said_at_once_and_does_not_hang(dvc_repo) -> None:
    root = dvc_repo(gpu_pipeline())
    res = lauf(root, "repro", "-j", "2", sleep="0")
    assert res.code == ExitCode.NO_WORKER, res.out + res.err
    assert set(res.ran) == {"a"}  # the rest ran
    warning, error = res.err.strip().splitlines()
    assert warning.startswith("lauf-dvc: warning: stage 'g': it requires label(s) gpu")
    assert error == (
        "lauf-dvc: error: 2 stage(s) not run: no worker could take them or what they wait "
        "for; start `lauf-dvc worker --labels gpu`"
    )
    assert "- g: not run: it requires label(s) gpu, which no worker had" in res.out
    assert "- after: not run: it waits for g" in res.out
    # a worker without the label says so and leaves; one with it finishes the run
    res = lauf(root, "worker", sleep="0")
    assert res.code == ExitCode.NO_WORKER, res.err
    assert "cannot take 1 stage(s), which require other labels: g" in res.err
    assert "2 stage(s) left that no live worker may take (they need label(s) gpu)" in res.err
    res = lauf(root, "worker", "--labels", "gpu", sleep="0")
    assert res.code == 0, res.err
    assert set(res.ran) == {"g", "after"}
