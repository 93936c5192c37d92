"""The storage contract: every test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
from sqlalchemy import text

from lauf_dvc import IllegalTransition, SchemaVersionError, Store, TaskState
from lauf_dvc.scheduler import claims, transitions
from lauf_dvc.scheduler.schema import SCHEMA_VERSION
from lauf_dvc.scheduler.store import TaskSpec

S = TaskState
NOW = 1_000.0


def make(db_url: str, specs: list[TaskSpec], workers: tuple[str, ...] = ("w1",)) -> Store:
    store = Store(db_url)
    store.sync_graph(specs, now=NOW, worker=None)
    for w in workers:
        store.register_worker(w, host="h", pid=1, labels="", timeout=10, now=NOW)
    return store


def diamond() -> list[TaskSpec]:
    return [
        TaskSpec("a"),
        TaskSpec("b", ("a",)),
        TaskSpec("c", ("a",)),
        TaskSpec("d", ("b", "c")),
    ]


def states(store: Store) -> dict[str, TaskState]:
    return {r.id: r.state for r in store.task_rows()}


def run(store: Store, worker: str = "w1", fingerprint: str | None = None) -> str:
    claimed = store.claim(worker, allowed=[""], now=NOW)
    assert claimed is not None
    assert store.complete(claimed.id, worker, now=NOW, fingerprint=fingerprint)
    return claimed.id


def test_claims_follow_dependencies(db_url):
    store = make(db_url, diamond())
    assert run(store) == "a"
    second = {run(store), run(store)}
    assert second == {"b", "c"}
    assert run(store) == "d"
    assert store.claim("w1", allowed=[""], now=NOW) is None
    assert not store.has_unfinished([""])
    assert set(states(store).values()) == {S.COMPLETED}


def test_work_only_a_missing_label_could_start_is_not_waited_for(db_url):
    """Issue 14, point 2: a task needing labels no live worker has, and what depends on
    it, leave a worker without those labels nothing to wait for: it stops, not hangs."""
    store = make(db_url, [TaskSpec("gpu", requirements="gpu"), TaskSpec("after", ("gpu",))])
    assert store.poll("w1", allowed=[""], now=NOW) is False  # nobody can start "gpu"
    assert store.stuck() == [("gpu", "gpu"), ("after", "")]
    store.register_worker("g1", host="h", pid=2, labels="gpu", timeout=10, now=NOW)
    assert store.poll("w1", allowed=[""], now=NOW) is True  # g1 can: wait for it
    assert store.poll("w1", allowed=[""], now=NOW + 11) is False  # g1's heartbeat expired
    claimed = store.claim("g1", allowed=["", "gpu"], now=NOW)
    assert claimed is not None and claimed.id == "gpu"
    assert store.poll("w1", allowed=[""], now=NOW + 11) is True  # running: wait for it


def test_a_task_is_claimed_once(db_url):
    store = make(db_url, [TaskSpec("x")], workers=("w1", "w2"))
    assert store.claim("w1", allowed=[""], now=NOW) is not None
    assert store.claim("w2", allowed=[""], now=NOW) is None
    assert store.has_unfinished([""])  # running elsewhere: a worker must wait, not quit


def test_poll_claims_or_says_whether_to_wait(db_url):
    store = make(db_url, [TaskSpec("a"), TaskSpec("b", ("a",))], workers=("w1", "w2"))
    assert store.poll("w1", allowed=[""], now=NOW).id == "a"
    assert store.poll("w2", allowed=[""], now=NOW) is True  # b waits for a, running elsewhere
    assert store.poll("w2", allowed=["gpu"], now=NOW) is True  # a is running: wait
    assert store.complete("a", "w1", now=NOW, fingerprint=None)
    assert store.poll("w2", allowed=[""], now=NOW).id == "b"
    assert store.complete("b", "w2", now=NOW, fingerprint=None)
    assert store.poll("w1", allowed=[""], now=NOW) is False  # nothing left


def test_priority_then_first_come(db_url):
    specs = [TaskSpec("low"), TaskSpec("high", priority=5), TaskSpec("low2")]
    store = make(db_url, specs)
    assert [run(store) for _ in range(3)] == ["high", "low", "low2"]


def test_requirements_restrict_claims(db_url):
    store = make(db_url, [TaskSpec("gpu", requirements="gpu"), TaskSpec("cpu")])
    assert store.claim("w1", allowed=[""], now=NOW).id == "cpu"
    assert store.claim("w1", allowed=[""], now=NOW) is None
    assert store.claim("w1", allowed=["", "gpu"], now=NOW).id == "gpu"


def test_illegal_transitions_raise(db_url):
    store = make(db_url, diamond())
    with pytest.raises(IllegalTransition, match="not allowed"), store.write() as conn:
        transitions.transition(conn, "a", S.PENDING, S.FAILED, now=NOW, worker=None, reason=None)
    with pytest.raises(IllegalTransition, match="not allowed"), store.write() as conn:
        transitions.transition(conn, "a", S.COMPLETED, S.RUNNING, now=NOW, worker=None, reason=None)
    # Allowed by the table, but the task is not in the expected state: a lost race.
    with pytest.raises(IllegalTransition, match="expected it to be running"), store.write() as c:
        transitions.transition(c, "a", S.RUNNING, S.COMPLETED, now=NOW, worker=None, reason=None)
    assert states(store)["a"] == S.PENDING
    assert [e.state for e in store.history("a")] == [S.PENDING]  # nothing half-written


def test_failure_retries_then_cascades_and_reset_restores(db_url):
    specs = [TaskSpec("a"), TaskSpec("b", ("a",)), TaskSpec("c", ("b",)), TaskSpec("x")]
    store = make(db_url, specs)
    claimed = store.claim("w1", allowed=[""], now=NOW)
    assert claimed.id == "a"
    store.fail("a", "w1", now=NOW, reason="exit 1", budget=1)
    assert states(store)["a"] == S.PENDING  # retried within the budget
    store.claim("w1", allowed=[""], now=NOW)
    store.fail("a", "w1", now=NOW, reason="exit 1", budget=1, info={"exit_code": 1})
    assert states(store) == {
        "a": S.FAILED, "b": S.UPSTREAM_FAILED, "c": S.UPSTREAM_FAILED, "x": S.PENDING,
    }  # fmt: skip
    assert [r.info for r in store.task_rows() if r.id == "a"] == [{"exit_code": 1}]
    assert store.failed() == ["a"]
    assert [e.reason for e in store.history("c")][-1] == "upstream a failed"
    assert sorted(store.reset(now=NOW)) == ["a", "b", "c"]
    assert states(store) == dict.fromkeys("abcx", S.PENDING)


def test_per_task_retries_override_budget(db_url):
    store = make(db_url, [TaskSpec("a", retries=2)])
    for _ in range(2):
        store.claim("w1", allowed=[""], now=NOW)
        store.fail("a", "w1", now=NOW, reason="flaky", budget=0)
        assert states(store)["a"] == S.PENDING
    store.claim("w1", allowed=[""], now=NOW)
    store.fail("a", "w1", now=NOW, reason="flaky", budget=0)
    assert states(store)["a"] == S.FAILED


def test_invalidation_cascades_to_everything_downstream(db_url):
    specs = [*diamond(), TaskSpec("e", ("d",)), TaskSpec("other")]
    store = make(db_url, specs)
    for _ in specs:
        run(store, fingerprint="f0")
    hit = store.invalidate({"b": ("f0", "f1", "fingerprint changed")}, now=NOW, worker="w1")
    assert sorted(hit) == ["b", "d", "e"]
    st = states(store)
    assert {k for k, v in st.items() if v == S.INVALIDATED} == {"b", "d", "e"}
    assert store.history("e")[-1].reason == "upstream b invalidated"
    # d waits for b again; nothing downstream is claimable before b re-ran.
    claimed = store.claim("w1", allowed=[""], now=NOW)
    assert claimed.id == "b" and claimed.previous == S.INVALIDATED
    assert claimed.last_fingerprint == "f0"
    assert store.claim("w1", allowed=[""], now=NOW) is None


def test_invalidate_ignores_a_stale_view(db_url):
    store = make(db_url, [TaskSpec("a")])
    run(store, fingerprint="f0")
    assert store.invalidate({"a": ("old", "f1", "changed")}, now=NOW, worker=None) == []
    assert states(store)["a"] == S.COMPLETED


def test_reaping_uses_the_clock_it_is_given(db_url):
    store = make(db_url, [TaskSpec("a"), TaskSpec("b", ("a",))], workers=("dead", "live"))
    assert store.claim("dead", allowed=[""], now=NOW).id == "a"
    assert store.reap(now=NOW + 5, reaper="live", max_killed_retries=1) == []
    assert store.heartbeat("live", timeout=10, now=NOW + 8)
    assert store.reap(now=NOW + 11, reaper="live", max_killed_retries=1) == ["a"]
    assert [e.state for e in store.history("a")][-2:] == [S.KILLED, S.PENDING]
    assert not store.heartbeat("dead", timeout=10, now=NOW + 12)  # it learns it was reaped
    assert not store.complete("a", "dead", now=NOW + 12, fingerprint=None)  # result dropped
    assert store.claim("live", allowed=[""], now=NOW + 12).id == "a"
    assert store.complete("a", "live", now=NOW + 13, fingerprint=None)
    assert states(store) == {"a": S.COMPLETED, "b": S.PENDING}


def test_killed_beyond_budget_fails_downstream(db_url):
    store = make(db_url, [TaskSpec("a"), TaskSpec("b", ("a",))], workers=("dead",))
    store.claim("dead", allowed=[""], now=NOW)
    assert store.reap(now=NOW + 11, reaper=None, max_killed_retries=0) == ["a"]
    assert states(store) == {"a": S.KILLED, "b": S.UPSTREAM_FAILED}


def test_several_workers_on_one_task(db_url):
    store = make(db_url, [TaskSpec("big", max_workers=2), TaskSpec("after", ("big",))],
                 workers=("w1", "w2", "w3"))  # fmt: skip
    first = store.claim("w1", allowed=[""], now=NOW, join=True)
    second = store.claim("w2", allowed=[""], now=NOW, join=True)
    assert (first.id, first.joined, second.id, second.joined) == ("big", False, "big", True)
    assert store.claim("w3", allowed=[""], now=NOW, join=True) is None  # full
    assert store.complete("big", "w1", now=NOW, fingerprint=None)
    assert states(store)["big"] == S.RUNNING  # w2 still on it
    assert store.complete("big", "w2", now=NOW, fingerprint=None)
    assert states(store) == {"big": S.COMPLETED, "after": S.PENDING}


def test_prune_history_keeps_latest_and_current(db_url):
    store = make(db_url, [TaskSpec("a", max_workers=2)], workers=("w1", "w2"))
    for _ in range(3):
        store.claim("w1", allowed=[""], now=NOW, join=True)
        store.fail("a", "w1", now=NOW, reason="flaky", budget=10)
    store.claim("w1", allowed=[""], now=NOW, join=True)
    store.claim("w2", allowed=[""], now=NOW, join=True)  # a "joined" event after the state's
    before = store.history("a")
    current = before[-2]
    assert current.state == S.RUNNING and before[-1].reason == "joined"
    deleted = store.prune_history(keep=1)
    after = store.history("a")
    assert deleted == len(before) - 2
    assert [e.id for e in after] == [current.id, before[-1].id]
    assert store.prune_history(keep=1) == 0


def test_sync_is_idempotent_and_follows_graph_changes(db_url):
    store = make(db_url, diamond())
    assert not store.sync_graph(diamond(), now=NOW, worker=None)
    run(store)  # a completes
    changed = [TaskSpec("a"), TaskSpec("b", ("a",)), TaskSpec("d", ("b",))]
    assert store.sync_graph(changed, now=NOW, worker=None)
    assert set(states(store)) == {"a", "b", "d"}
    assert run(store) == "b"
    assert run(store) == "d"  # d no longer waits for the retired c
    assert store.claim("w1", allowed=[""], now=NOW) is None  # c is kept but never claimed
    assert [r.id for r in store.task_rows(inactive=True) if r.state == S.PENDING] == ["c"]
    assert store.sync_graph(diamond(), now=NOW, worker=None)  # c comes back, history intact
    assert states(store)["c"] == S.PENDING and len(store.history("c")) == 1


def test_schema_version_mismatch_is_one_clear_line(db_url):
    store = make(db_url, diamond())
    with store.write() as conn:
        conn.execute(text("UPDATE lauf_meta SET value = '999' WHERE key = 'schema_version'"))
    with pytest.raises(SchemaVersionError) as err:
        Store(db_url).counts()
    message = str(err.value)
    assert "schema version 999" in message and f"needs {SCHEMA_VERSION}" in message
    assert "\n" not in message


def test_foreign_tables_are_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tasks (id TEXT)")
    with pytest.raises(SchemaVersionError, match="did not create"):
        Store(f"sqlite:///{path}").counts()


def test_claim_is_an_index_seek(sqlite_url):
    store = make(sqlite_url, [TaskSpec(f"t{i}") for i in range(50)])
    ((query, params),) = claims.candidates([""], join=False)
    compiled = query.params(params).compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.read() as conn:
        plan = " ".join(r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
    assert "USING INDEX ix_tasks_ready" in plan and "TEMP B-TREE" not in plan, plan


def test_listeners_see_every_committed_transition_and_no_rolled_back_one(db_url) -> None:
    store = Store(db_url)
    seen = []
    store.listeners.append(lambda t: seen.append((t.task_id, t.old, t.new)))
    store.sync_graph([TaskSpec("a"), TaskSpec("b", ("a",))], now=NOW, worker="w1")
    assert seen == [("a", None, S.PENDING), ("b", None, S.PENDING)]
    store.register_worker("w1", host="h", pid=1, labels="", timeout=10, now=NOW)
    assert run(store, fingerprint="fa") == "a"
    assert seen[2:] == [("a", S.PENDING, S.RUNNING), ("a", S.RUNNING, S.COMPLETED)]
    del seen[:]
    with pytest.raises(RuntimeError), store.write() as conn:
        transitions.transition(
            conn, "b", S.PENDING, S.UPSTREAM_FAILED, now=NOW, worker="w1", reason="x"
        )
        raise RuntimeError("rolled back")
    assert seen == []  # rolled back: never reported
    assert states(store)["b"] == S.PENDING
    store.dispose()


def test_partial_indexes_on_every_dialect(db_url) -> None:
    """Built for the dialect in use (see schema.partial_indexes), with their WHERE."""
    store = make(db_url, [TaskSpec("t")])
    with store.read() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type='index'")
        else:
            rows = conn.exec_driver_sql("SELECT indexname, indexdef FROM pg_indexes")
        found = {name: sql for name, sql in rows if name.startswith("ix_tasks_")}
    names = {"ix_tasks_ready", "ix_tasks_todo", "ix_tasks_running", "ix_tasks_failed"}
    assert names | {"ix_tasks_joinable"} <= set(found)
    assert all("WHERE" in sql.upper() for sql in found.values()), found


def test_a_sqlite_user_never_loads_the_postgresql_dialect(tmp_path) -> None:
    code = (
        "import sys\n"
        "from lauf_dvc.scheduler.store import Store\n"
        f"Store('sqlite:///{tmp_path / 'x.sqlite'}').counts()\n"
        "print('sqlalchemy.dialects.postgresql' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
