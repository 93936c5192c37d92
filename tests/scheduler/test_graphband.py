"""The iterator API, in one process: ordering, failures, fingerprints and the cascade."""

from __future__ import annotations

from pathlib import Path

import pytest

from lauf_dvc import ConfigError, FailurePolicyStop, Graphband, PipelineError, Task, TaskState

S = TaskState


def ids(gb: Graphband) -> list[str]:
    return [t.id for t in gb]


def chain(n: int, **kw) -> list[Task]:
    return [Task(f"t{i}", dependencies=[f"t{i - 1}"] if i else [], **kw) for i in range(n)]


def states(gb: Graphband) -> dict[str, TaskState]:
    return {r.id: r.state for r in gb.store.task_rows()}


def test_runs_each_task_once_in_dependency_order(sqlite_url):
    tasks = [Task("d", dependencies=["b", "c"]), Task("b", dependencies=["a"]),
             Task("c", dependencies=["a"]), Task("a")]  # fmt: skip
    order = ids(Graphband(tasks, db=sqlite_url))
    assert order[0] == "a" and order[-1] == "d" and sorted(order) == ["a", "b", "c", "d"]
    assert ids(Graphband(tasks, db=sqlite_url)) == []  # all completed: nothing to do


def test_bad_graphs_are_one_line_errors(sqlite_url):
    with pytest.raises(PipelineError, match="'b' depends on unknown task 'zz'"):
        Graphband([Task("b", dependencies=["zz"])], db=sqlite_url)
    with pytest.raises(PipelineError, match="dependency cycle"):
        Graphband([Task("a", dependencies=["b"]), Task("b", dependencies=["a"])], db=sqlite_url)
    with pytest.raises(PipelineError, match="appears twice"):
        Graphband([Task("a"), Task("a")], db=sqlite_url)


def test_break_and_exceptions_fail_the_task_and_its_downstream(sqlite_url):
    tasks = [*chain(3), Task("free")]
    gb = Graphband(tasks, db=sqlite_url)
    for task in gb:
        assert task.id == "t0"
        break
    assert states(gb) == {"t0": S.FAILED, "t1": S.UPSTREAM_FAILED, "t2": S.UPSTREAM_FAILED,
                          "free": S.PENDING}  # fmt: skip
    gb.store.reset(now=0)

    def body() -> None:
        for task in Graphband(tasks, db=sqlite_url):
            if task.id == "t1":
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        body()
    st = states(gb)
    assert (st["t0"], st["t1"], st["t2"]) == (S.COMPLETED, S.FAILED, S.UPSTREAM_FAILED)
    assert "raised" in gb.store.history("t1")[-1].reason


def test_close_completes_the_current_task(sqlite_url):
    gb = Graphband(chain(3), db=sqlite_url)
    seen = []
    for task in gb:
        seen.append(task.id)
        gb.close()
    assert seen == ["t0"]
    assert states(gb)["t0"] == S.COMPLETED
    assert ids(Graphband(chain(3), db=sqlite_url)) == ["t1", "t2"]


def test_disabled_just_iterates(tmp_path):
    db = tmp_path / "never.sqlite"
    gb = Graphband(chain(3), db=f"sqlite:///{db}", disabled=True)
    assert ids(gb) == ["t0", "t1", "t2"]
    assert not db.exists() and not gb.has_more_jobs


def test_has_more_jobs_and_labels(sqlite_url):
    tasks = [Task("cpu"), Task("gpu", requirements={"gpu"})]
    plain = Graphband(tasks, db=sqlite_url)
    assert plain.has_more_jobs
    assert ids(plain) == ["cpu"]
    assert not plain.has_more_jobs  # the gpu task is not one it could ever run
    gpu = Graphband(tasks, db=sqlite_url, labels=["gpu"])
    assert gpu.has_more_jobs and ids(gpu) == ["gpu"] and not gpu.has_more_jobs


def test_failure_policy_stop(sqlite_url):
    tasks = [Task("bad"), Task("other", priority=-1)]
    with pytest.raises(RuntimeError, match="first task fails"):  # the user's own error
        for task in Graphband(tasks, db=sqlite_url, failure_policy="stop"):
            if task.id == "bad":
                raise RuntimeError("first task fails")
    with pytest.raises(FailurePolicyStop, match="bad"):  # every other worker stops
        ids(Graphband(tasks, db=sqlite_url, failure_policy="stop"))
    assert ids(Graphband(tasks, db=sqlite_url, failure_policy="continue")) == ["other"]


def test_settings_come_from_the_environment(sqlite_url, monkeypatch):
    monkeypatch.setenv("LAUF_DVC_FAILURE_POLICY", "stop")
    monkeypatch.setenv("LAUF_DVC_MAX_FAILED_RETRIES", "3")
    gb = Graphband(chain(1), db=sqlite_url)
    assert (gb.settings.failure_policy, gb.settings.max_failed_retries) == ("stop", 3)
    explicit = Graphband(chain(1), db=sqlite_url, failure_policy="continue")
    assert explicit.settings.failure_policy == "continue"  # an argument beats the env
    monkeypatch.setenv("LAUF_DVC_ENABLE_FINGERPRINTS", "maybe")
    with pytest.raises(ConfigError, match="LAUF_DVC_ENABLE_FINGERPRINTS"):
        Graphband(chain(1), db=sqlite_url)


def test_locks(sqlite_url):
    gb = Graphband(chain(1), db=sqlite_url)
    with gb.lock:
        assert gb.lock.is_locked
    with gb.task_lock("t0") as lock:
        assert lock.is_locked and Path(lock.lockfile).parent.name.endswith(".locks")


# -- fingerprints ------------------------------------------------------------------------


def fp_graph(fps: dict[str, str | None]) -> list[Task]:
    """a -> b -> c, and x alone."""
    deps = {"a": [], "b": ["a"], "c": ["b"], "x": []}
    return [Task(i, dependencies=deps[i], fingerprint=fps.get(i)) for i in deps]


def run_fp(db: str, fps: dict[str, str | None], **kw) -> list[str]:
    return ids(Graphband(fp_graph(fps), db=db, enable_fingerprints=True, **kw))


def test_unchanged_fingerprints_run_nothing(sqlite_url):
    fps = {"a": "1", "b": "1", "c": "1", "x": "1"}
    assert sorted(run_fp(sqlite_url, fps)) == ["a", "b", "c", "x"]
    assert run_fp(sqlite_url, fps) == []


def test_changed_fingerprint_invalidates_downstream_and_reruns_in_order(sqlite_url):
    run_fp(sqlite_url, {"a": "1", "b": "1", "c": "1", "x": "1"})
    gb = Graphband(fp_graph({"a": "2", "b": "1", "c": "1", "x": "1"}), db=sqlite_url,
                   enable_fingerprints=True)  # fmt: skip
    order = ids(gb)
    assert order == ["a"]  # b and c: early cutoff, their fingerprints did not change
    reasons = {t: [e.reason for e in gb.store.history(t)] for t in "abc"}
    assert "fingerprint changed 1 -> 2" in reasons["a"]
    assert "upstream a invalidated" in reasons["b"] and "upstream a invalidated" in reasons["c"]
    assert reasons["b"][-1] == "early cutoff: fingerprint unchanged"
    assert states(gb)["x"] == S.COMPLETED


def test_invalidated_downstream_runs_only_after_upstream(sqlite_url):
    run_fp(sqlite_url, {"a": "1", "b": "1", "c": "1"})
    assert run_fp(sqlite_url, {"a": "2", "b": "2", "c": "2"}) == ["a", "b", "c"]


def test_early_cutoff_with_callable_fingerprints(sqlite_url, tmp_path):
    """b's fingerprint is computed from the file a writes, when b is claimed."""
    out = tmp_path / "a.out"

    def graph(param: str) -> list[Task]:
        return [
            Task("a", fingerprint=param),
            Task("b", dependencies=["a"], fingerprint=lambda: out.read_text()),
            Task("c", dependencies=["b"]),  # no fingerprint: runs whenever invalidated
        ]

    def run(param: str, content: str) -> list[str]:
        ran = []
        for task in Graphband(graph(param), db=sqlite_url, enable_fingerprints=True):
            ran.append(task.id)
            if task.id == "a":
                out.write_text(content)
        return ran

    assert run("p1", "same") == ["a", "b", "c"]
    assert run("p2", "same") == ["a"]  # a re-ran, wrote identical output: cutoff at b
    assert run("p3", "different") == ["a", "b", "c"]


def test_mixed_tasks_with_and_without_fingerprints(sqlite_url):
    run_fp(sqlite_url, {"a": "1", "c": "1"})  # b and x have none
    assert run_fp(sqlite_url, {"a": "1", "c": "1"}) == []
    assert run_fp(sqlite_url, {"a": "2", "c": "1"}) == ["a", "b"]  # c: cutoff


def test_toggling_fingerprints(sqlite_url, monkeypatch):
    fps = {"a": "1", "b": "1", "c": "1", "x": "1"}
    monkeypatch.setenv("LAUF_DVC_ENABLE_FINGERPRINTS", "0")
    assert len(ids(Graphband(fp_graph(fps), db=sqlite_url))) == 4
    assert ids(Graphband(fp_graph({**fps, "a": "2"}), db=sqlite_url)) == []  # off: ignored
    monkeypatch.setenv("LAUF_DVC_ENABLE_FINGERPRINTS", "1")
    # Completed while off: the current fingerprints become the baseline, nothing re-runs.
    assert ids(Graphband(fp_graph({**fps, "a": "2"}), db=sqlite_url)) == []
    assert ids(Graphband(fp_graph({**fps, "a": "3"}), db=sqlite_url)) == ["a"]


def test_audit_trail_lists_every_state_with_its_fingerprint(sqlite_url):
    run_fp(sqlite_url, {"a": "1", "b": "1", "c": "1"})
    run_fp(sqlite_url, {"a": "2", "b": "1", "c": "1"})
    gb = Graphband(fp_graph({}), db=sqlite_url)
    trail = [(e.state, e.fingerprint) for e in gb.store.history("a")]
    assert trail == [
        (S.PENDING, None), (S.RUNNING, None), (S.COMPLETED, "1"),
        (S.INVALIDATED, "2"), (S.RUNNING, None), (S.COMPLETED, "2"),
    ]  # fmt: skip
    assert all(e.worker and e.time > 0 for e in gb.store.history("a")[1:])


def test_stop_policy_does_not_treat_invalidated_as_failure(sqlite_url):
    run_fp(sqlite_url, {"a": "1", "b": "1", "c": "1"})
    assert run_fp(sqlite_url, {"a": "2", "b": "2", "c": "1"}, failure_policy="stop") == ["a", "b"]


# -- max_idle ----------------------------------------------------------------------------


def test_max_idle_stops_a_worker_whose_work_is_blocked_elsewhere(sqlite_url, monkeypatch):
    tasks = [Task("a"), Task("b", dependencies=["a"])]
    busy = iter(Graphband(tasks, db=sqlite_url, identifier="busy"))
    assert next(busy).id == "a"  # "busy" runs a; b waits for it
    idle = Graphband(tasks, db=sqlite_url, identifier="idle", max_idle=0.05)
    assert ids(idle) == [] and idle.stopped_idle
    assert states(idle) == {"a": S.RUNNING, "b": S.PENDING}  # nothing taken or lost
    assert {w["id"]: w["state"] for w in idle.store.workers()}["idle"] == "offline"
    assert next(busy).id == "b" and list(busy) == []
    monkeypatch.setenv("LAUF_DVC_MAX_IDLE", "0")
    done = Graphband(tasks, db=sqlite_url, identifier="late")
    assert done.max_idle == 0 and ids(done) == [] and not done.stopped_idle  # no work left


def test_max_idle_must_not_be_negative(sqlite_url, monkeypatch):
    with pytest.raises(ConfigError, match="max_idle"):
        Graphband(chain(1), db=sqlite_url, max_idle=-1)
    monkeypatch.setenv("LAUF_DVC_MAX_IDLE", "-5")
    with pytest.raises(ConfigError, match="LAUF_DVC_MAX_IDLE"):
        Graphband(chain(1), db=sqlite_url)
