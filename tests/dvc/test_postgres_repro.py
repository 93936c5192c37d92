"""The DVC equivalence test with the scheduler database on PostgreSQL (issue 5).

Same code path as SQLite: only the URL differs (``--db``, or ``LAUF_DVC_DB`` for workers
that join later). The server is the test session's own (pgserver), never a system one.
"""

from __future__ import annotations

import pytest
from pipelines import assert_in_order, diamond, foreach_matrix, runs
from test_repro_cli import (
    LAUF_DB,
    assert_like_dvc_repro,
    lauf,
    reference,
    start_worker,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]


def test_repro_on_postgresql_ends_as_dvc_repro_leaves_it(twins, dvctools, pg_url) -> None:
    pipeline = foreach_matrix()
    root, ref = twins(pipeline.files)
    res = lauf(root, "--db", pg_url, "repro", "-j", "4")
    assert res.code == 0, res.out + res.err
    assert set(res.ran) == pipeline.stages
    assert_in_order(pipeline, res.ran)
    assert reference(ref, dvctools) == pipeline.stages
    assert_like_dvc_repro(root, ref, dvctools)
    assert not (root / LAUF_DB).exists()  # nothing went to the SQLite default
    again = lauf(root, "--db", pg_url, "repro", "-j", "4")
    assert again.code == 0 and not again.ran, again.out


def test_workers_share_a_postgresql_database(twins, dvctools, pg_url, tmp_path, monkeypatch):
    pipeline = diamond()
    root, ref = twins(pipeline.files)
    monkeypatch.setenv("LAUF_DVC_DB", pg_url)  # how array jobs are usually pointed at it
    marks = tmp_path / "marks"
    marks.mkdir()
    workers = [start_worker(root, marks) for _ in range(3)]
    for w in workers:
        out, err = w.communicate(timeout=180)
        assert w.returncode == 0, out + err
    ran = runs(marks)
    assert set(ran) == pipeline.stages  # each exactly once, whichever worker ran it
    assert_in_order(pipeline, ran)
    assert reference(ref, dvctools) == pipeline.stages
    assert_like_dvc_repro(root, ref, dvctools)
