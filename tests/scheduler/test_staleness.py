"""The one staleness engine (lauf_dvc.scheduler.staleness): decide is a pure function of
what the store holds and what the fingerprinters found, tested here without a database
or a repository; and Graphband tasks and DVC stages both go through it."""

from __future__ import annotations

from lauf_dvc.scheduler.staleness import Observed, Stored, cutoff, decide
from lauf_dvc.states import TaskState

S = TaskState
CHAIN = [("a", ()), ("b", ("a",)), ("c", ("b",)), ("x", ())]


def done(last: str | None = "f1") -> Stored:
    return Stored(S.COMPLETED, last)


def test_a_changed_fingerprint_invalidates_it_and_names_the_chain_downstream() -> None:
    stored = {t: done() for t, _ in CHAIN}
    observed = {t: Observed("f1") for t, _ in CHAIN} | {"a": Observed("f2")}
    d = decide(CHAIN, stored, observed)
    assert d.invalidate == {"a": ("f1", "f2", "fingerprint changed f1 -> f2")}
    assert d.stale == {
        "a": "fingerprint changed f1 -> f2",
        "b": "upstream a <- fingerprint changed f1 -> f2",
        "c": "upstream b <- upstream a <- fingerprint changed f1 -> f2",
    }
    assert not d.adopt and not d.baselines and not d.forget


def test_the_fingerprinters_words_and_an_explainer_replace_the_cores() -> None:
    stored = {"a": done()}
    said = decide([("a", ())], stored, {"a": Observed("f2", reasons=("lr 0.1 -> 0.2",))})
    assert said.stale["a"] == "lr 0.1 -> 0.2"
    explained = decide([("a", ())], stored, {"a": Observed("f2")},
                       explain=lambda old, new: [f"{old}=>{new}"])  # fmt: skip
    assert explained.stale["a"] == "f1=>f2"


def test_an_external_record_vouches_for_waiting_tasks_and_overrides_the_store() -> None:
    """dvc.lock as the record: a stage run by `dvc repro` elsewhere is adopted; one
    whose record no longer matches is stale even if the store's fingerprint is old."""
    graph = [("a", ()), ("b", ("a",)), ("c", ())]
    stored = {"a": Stored(S.PENDING), "b": Stored(S.INVALIDATED, "old"), "c": done("lock1")}
    observed = {
        "a": Observed("rec", recorded="rec", external=True, source="dvc status"),
        "b": Observed("rec", recorded="rec", external=True, keep="fp-b", source="dvc status"),
        "c": Observed("now", recorded="rec", external=True, reasons=("dep x modified",)),
    }
    d = decide(graph, stored, observed)
    assert d.adopt == {
        "a": (None, "up to date (dvc status)"),
        "b": ("fp-b", "up to date (dvc status)"),
    }
    assert d.invalidate == {"c": ("lock1", None, "dep x modified")}


def test_never_recorded_is_never_run_and_runs() -> None:
    d = decide([("a", ())], {"a": Stored(S.PENDING)},
               {"a": Observed("now", recorded=None, external=True)})  # fmt: skip
    assert d.stale == {"a": "never run"} and not d.adopt


def test_a_first_fingerprint_of_a_completed_task_becomes_its_baseline() -> None:
    d = decide([("a", ())], {"a": done(None)}, {"a": Observed("f1")})
    assert d.baselines == {"a": "f1"} and not d.stale and not d.invalidate


def test_pinned_always_force_and_running() -> None:
    graph = [("frozen", ()), ("always", ()), ("busy", ())]
    stored = {"frozen": Stored(S.PENDING), "always": done(), "busy": Stored(S.RUNNING, "f1")}
    observed = {
        "frozen": Observed("f9", pinned="frozen", source="xxhash"),
        "always": Observed("f1", always="always changed"),
        "busy": Observed("f2"),
    }
    d = decide(graph, stored, observed)
    assert d.adopt == {"frozen": ("f9", "up to date (xxhash)")}
    assert d.invalidate == {"always": ("f1", "f1", "always changed")}
    assert d.stale["busy"].startswith("fingerprint changed")  # judged, never touched
    assert "busy" not in d.invalidate
    forced = decide(graph, stored, observed, force=True)
    assert forced.forget and set(forced.invalidate) == {"always"}
    assert set(forced.stale) == {"frozen", "always", "busy"}


def test_unobserved_tasks_keep_their_state() -> None:
    """Graphband observes only tasks with a fingerprint: the others are not judged."""
    d = decide(CHAIN, {t: done() for t, _ in CHAIN}, {"b": Observed("f2")})
    assert set(d.invalidate) == {"b"} and set(d.stale) == {"b", "c"}


def test_early_cutoff() -> None:
    assert cutoff(S.INVALIDATED, "f1", "f1", inputs_unchanged=False) == (
        "early cutoff: fingerprint unchanged"
    )
    assert cutoff(S.INVALIDATED, "f1", "f2", inputs_unchanged=True) is None
    assert cutoff(S.PENDING, "f1", "f1", inputs_unchanged=True) is None
    assert cutoff(S.INVALIDATED, "f1", "f1", inputs_unchanged=True, joined=True) is None
    assert cutoff(S.INVALIDATED, None, None, inputs_unchanged=True) == (
        "early cutoff: no dependency changed"
    )
