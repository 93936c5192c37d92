"""``lauf-dvc report``'s reading of the audit trail and its pages, on hand-made trails
(events and workers written out here, times chosen so every figure is known), and once
on real databases (SQLite, PostgreSQL) written through the store's own transitions."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from lauf_dvc.report import analyse, outcome, summary_text
from lauf_dvc.report_html import html_page
from lauf_dvc.scheduler.audit import (
    Attempt,
    Session,
    Trail,
    critical_path,
    read_trail,
    runs,
    totals,
)
from lauf_dvc.scheduler.store import Event, Store, TaskSpec
from lauf_dvc.states import TaskState

S = TaskState
T0 = 1_800_000_000.0


class Trail_:
    """Writes a trail event by event, as the store would (ids in order)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.sessions: list[Session] = []

    def ev(self, t: float, task: str, state: S, worker: str | None, reason: str | None = None):
        self.events.append(Event(len(self.events) + 1, task, state, None, worker, T0 + t, reason))

    def run(self, task: str, worker: str, start: float, end: float, state: S = S.COMPLETED,
            reason: str | None = None) -> None:  # fmt: skip
        self.ev(start, task, S.RUNNING, worker)
        self.ev(end, task, state, worker, reason)

    def worker(self, ident: str, start: float, seen: float, state: str = "offline") -> None:
        self.sessions.append(Session(ident, "h", 1, state, T0 + start, T0 + seen, T0 + seen + 30))

    def trail(self, deps: dict[str, tuple[str, ...]], now: float, info=None) -> Trail:
        events = sorted(self.events, key=lambda e: e.id)
        return Trail(tuple(events), tuple(self.sessions), deps, info or {}, T0 + now)


def attempt(task: str, start: float, end: float, *, joined: bool = False) -> Attempt:
    return Attempt(task, "w", T0 + start, T0 + end, S.COMPLETED, None, joined=joined)


# -- critical path ---------------------------------------------------------------------------


def test_the_critical_path_is_the_heaviest_chain_of_dependencies() -> None:
    deps = {"b": ("a",), "c": ("a",), "d": ("b", "c")}
    diamond = [attempt("a", 0, 1), attempt("b", 1, 6), attempt("c", 1, 3), attempt("d", 6, 7)]
    path = critical_path(diamond, deps)
    assert path.tasks == ("a", "b", "d") and path.length == pytest.approx(7)
    # retries count (c's second attempt makes it the longer branch), joined workers do not
    more = [*diamond, attempt("c", 3, 7), attempt("b", 1, 6, joined=True)]
    assert critical_path(more, deps).tasks == ("a", "c", "d")
    assert critical_path(more, deps).length == pytest.approx(8)
    # a task on its own that weighs more than any chain is the path
    alone = critical_path([*diamond, attempt("e", 0, 9)], deps)
    assert alone.tasks == ("e",) and alone.length == pytest.approx(9)
    # dependencies that did not run in this run do not link anything
    assert critical_path([attempt("d", 0, 1)], deps).tasks == ("d",)
    assert critical_path([], deps).tasks == ()


def test_the_critical_path_of_a_long_chain_needs_no_recursion() -> None:
    n = 5000
    chain = [attempt(f"t{i}", i, i + 1) for i in range(n)]
    deps = {f"t{i}": (f"t{i - 1}",) for i in range(1, n)}
    path = critical_path(chain, deps)
    assert len(path.tasks) == n and path.tasks[0] == "t0" and path.length == pytest.approx(n)


# -- runs, attempts, totals ------------------------------------------------------------------


def two_runs(second: bool = True) -> Trail:
    """Run 1: a (w1) -> b fails (w2), retried and fails again (w1); x (w2). Then
    (``second``) `repro` (pid 7) syncs and its worker (pid 7 too) runs b and c; c still
    runs. The database holds b's failure details unless it completed since."""
    t = Trail_()
    for task in "abcx":
        t.ev(0, task, S.PENDING, "h:5:aa:repro", "new task")
    t.worker("h:5:w1:local-0", 0.5, 20)
    t.worker("h:5:w2:local-1", 0.5, 20)
    t.run("a", "h:5:w1:local-0", 1, 4)
    t.run("x", "h:5:w2:local-1", 1, 2)
    t.run("b", "h:5:w2:local-1", 5, 8, S.FAILED, "exit code 3")
    t.ev(8, "b", S.PENDING, "h:5:w2:local-1", "retry 1 of 1 after: exit code 3")
    t.run("b", "h:5:w1:local-0", 9, 12, S.FAILED, "exit code 3")
    t.ev(12, "c", S.UPSTREAM_FAILED, "h:5:w1:local-0", "upstream b failed")
    if not second:
        info = {"b": {"exit_code": 3, "log_tail": "boom", "log": "/logs/b.log"}}
        return t.trail({"b": ("a",), "c": ("b",)}, now=30, info=info)
    t.ev(100, "b", S.PENDING, "h:7:bb:repro", "new run")
    t.ev(100, "c", S.PENDING, "h:7:bb:repro", "new run")
    t.worker("h:7:cc:local-0", 102, 109, state="alive")
    t.run("b", "h:7:cc:local-0", 103, 104)
    t.ev(106, "c", S.RUNNING, "h:7:cc:local-0")
    return t.trail({"b": ("a",), "c": ("b",)}, now=110)


def test_runs_are_stretches_with_workers_started_by_the_sync_before_them() -> None:
    first, second = runs(two_runs())
    assert (first.start, first.end) == (T0 + 0, T0 + 20)  # the repro's first event
    assert [lane.id for lane in first.lanes] == ["h:5:w1:local-0", "h:5:w2:local-1"]
    assert first.held_back == ("c",) and not first.live
    assert (second.start, second.end) == (T0 + 100, T0 + 110) and second.live  # now
    assert [(a.task, a.number) for a in second.attempts] == [("b", 3), ("c", 1)]
    running = second.attempts[1]
    assert running.ended == S.RUNNING and running.end == T0 + 110  # ends "now"
    assert outcome(running) == "running"


def test_attempts_know_why_they_ran_when_they_were_ready_and_their_failure() -> None:
    first = runs(two_runs())[0]
    by = {(a.task, a.number): a for a in first.attempts}
    assert by[("a", 1)].why == ("new task",) and by[("a", 1)].wait == pytest.approx(1)
    b1, b2 = by[("b", 1)], by[("b", 2)]
    assert b1.ready == T0 + 4 and b1.wait == pytest.approx(1)  # a completed at 4, claimed at 5
    assert b2.why == ("new task", "retry 1 of 1 after: exit code 3")
    assert b2.wait == pytest.approx(1) and b2.reason == "exit code 3"
    assert not b1.info and not b2.info  # b completed since: its failure details are gone
    (alone,) = runs(two_runs(second=False))
    failed = [a for a in alone.attempts if a.task == "b"]
    assert not failed[0].info and failed[1].info["log_tail"] == "boom"  # the latest only


def test_totals_account_for_every_worker_second() -> None:
    first = runs(two_runs())[0]
    t = totals(first)
    assert t.wall == pytest.approx(20) and t.workers == 2
    assert t.busy == pytest.approx(3 + 1 + 3 + 3)
    assert t.before == pytest.approx(1 + 1) and t.after == pytest.approx(8 + 12)
    assert t.between == pytest.approx((9 - 4) + (5 - 2))
    assert t.before + t.busy + t.between + t.after == pytest.approx(t.wall * t.workers)
    assert t.latency == pytest.approx(1 + 1)  # b ready at 8, claimed at 9; at 4, at 5
    assert t.efficiency == pytest.approx(10 / 40)
    assert t.first_start == pytest.approx(1)


def test_a_run_begins_with_its_own_repro_sync_only() -> None:
    t = Trail_()
    t.ev(0, "a", S.PENDING, "elsewhere:3:zz:repro", "new task")  # another process's sync
    t.ev(5, "a", S.INVALIDATED, "job7:repro", "params.yaml:p 1 -> 2")  # LAUF_DVC_IDENTIFIER
    t.worker("job7:local-0", 6, 9)
    t.run("a", "job7:local-0", 7, 8)
    (run,) = runs(t.trail({}, now=20))
    assert run.start == T0 + 5 and run.attempts[0].why == ("new task", "params.yaml:p 1 -> 2")
    t.ev(30, "a", S.INVALIDATED, "elsewhere:3:yy:repro", "forced")  # not its workers' origin
    t.worker("h:4:w:local-0", 31, 33)
    t.run("a", "h:4:w:local-0", 32, 33)
    assert runs(t.trail({}, now=40))[1].start == T0 + 31


def test_outcomes() -> None:
    def end(state: S, reason: str | None) -> str:
        return outcome(Attempt("t", "w", T0, T0 + 1, state, reason))

    assert end(S.COMPLETED, None) == "ran"
    assert end(S.COMPLETED, "restored from run cache") == "restored"
    assert end(S.COMPLETED, "early cutoff: up to date") == "cut off"
    assert end(S.FAILED, "exit code 1") == "failed"
    assert end(S.KILLED, "worker w stopped sending heartbeats") == "killed"
    assert end(S.RUNNING, None) == "running"


def test_a_session_reused_under_the_same_id_still_gets_its_lane() -> None:
    t = Trail_()
    t.ev(0, "a", S.PENDING, None, "new task")
    t.run("a", "node1", 1, 2)  # an earlier session of node1: its row was overwritten
    t.worker("node1", 50, 60)
    t.ev(49, "b", S.PENDING, None, "new task")
    t.run("b", "node1", 51, 52)
    old, new = runs(t.trail({}, now=70))
    assert [lane.id for lane in old.lanes] == ["node1"] and (old.start, old.end) == (T0 + 1, T0 + 2)
    assert [a.task for a in new.attempts] == ["b"]


# -- the pages -------------------------------------------------------------------------------


class Page(HTMLParser):
    """Elements with their attributes, nesting checked; the text inside each <pre>."""

    VOID = {"meta", "br", "rect", "line", "path", "img", "input", "link"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.pre: list[str] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed: {self.stack}"

    def handle_starttag(self, tag, attrs) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "pre":
            self.pre.append("")

    def handle_startendtag(self, tag, attrs) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data) -> None:
        if "pre" in self.stack:
            self.pre[-1] += data

    def bars(self) -> list[dict[str, str | None]]:
        return [a for tag, a in self.elements if "data-attempt" in a]


def nasty_trail() -> Trail:
    t = Trail_()
    name = 'x<script>alert("1")</script>&'
    t.ev(0, name, S.PENDING, "h:1:a:repro", "params.yaml:p <b>changed</b>")
    t.ev(0, "ok", S.PENDING, "h:1:a:repro", "new task")
    t.worker("h:1:b:local-0", 0.2, 5)
    t.run(name, "h:1:b:local-0", 1, 2, S.FAILED, "exit code 1")
    t.run("ok", "h:1:b:local-0", 2, 3, S.COMPLETED, "early cutoff: up to date")
    tail = "Traceback <module>\n  & \"quoted\" 'single'\n</pre><script>bad()</script>"
    return t.trail({}, now=10, info={name: {"exit_code": 1, "log_tail": tail}})


def test_the_page_escapes_every_string_and_needs_nothing_from_the_network() -> None:
    trail = nasty_trail()
    (run,) = runs(trail)
    page_text = html_page([analyse(run, trail.dependencies, 1)], generated=T0 + 10)
    assert "<script>alert" not in page_text and "<b>changed" not in page_text
    assert page_text.count("<script>") == 1  # our own, and nothing else
    assert not re.search(r"https?://|\bsrc=|<link|@import|url\((?!#)", page_text)
    page = Page(page_text)
    bars = page.bars()
    assert [b["data-stage"] for b in bars] == ['x<script>alert("1")</script>&', "ok"]
    assert [b["data-outcome"] for b in bars] == ["failed", "cut off"]
    assert page.pre == [trail.info['x<script>alert("1")</script>&']["log_tail"]]


def test_the_page_has_a_bar_per_attempt_marks_the_critical_path_and_running_bars() -> None:
    trail = two_runs()
    found = runs(trail)
    reports = [analyse(r, trail.dependencies, len(found)) for r in found]
    page = Page(html_page(reports, generated=trail.now))
    bars = page.bars()
    assert len(bars) == sum(len(r.attempts) for r in found) == 6
    assert [b["data-attempt"] for b in bars] == [str(n) for n in range(1, 7)]  # unique
    crit = [(b["data-stage"], "crit" in (b["class"] or "").split()) for b in bars]
    assert crit == [("a", True), ("x", False), ("b", True), ("b", True),  # a -> b in run 1
                    ("b", True), ("c", True)]  # b -> c in run 2  # fmt: skip
    last = bars[-1]
    assert last["data-outcome"] == "running" and float(last["data-end"]) == pytest.approx(10)
    runs_shown = [a["data-run"] for tag, a in page.elements if tag == "section"]
    assert runs_shown == ["1", "2"]


def test_the_text_summary_has_the_totals_the_path_and_the_failures() -> None:
    trail = two_runs(second=False)
    (first,) = runs(trail)
    text = summary_text([analyse(first, trail.dependencies, 1)])
    assert text.splitlines()[0].startswith("run 1 of 1, started ")
    assert "4 stage run(s) on 2 worker(s) in 20.0s (finished)" in text
    assert "parallel efficiency 25%" in text
    assert "critical path 9.00s: a -> b" in text
    assert "failed: b (attempt 2): exit code 3 (log: /logs/b.log)" in text
    assert "not run (upstream failed): c" in text


# -- from a real database ------------------------------------------------------------------


def test_the_trail_read_from_a_real_database(db_url: str) -> None:
    """SQLite and PostgreSQL, written by the store's own transitions."""
    store = Store(db_url)
    store.sync_graph([TaskSpec("a"), TaskSpec("b", ("a",))], worker="h:9:s:repro", now=T0)
    store.register_worker("h:9:w:local-0", host="h", pid=9, labels="", timeout=10, now=T0 + 1)
    assert store.claim("h:9:w:local-0", allowed=[""], now=T0 + 2).id == "a"
    assert store.complete("a", "h:9:w:local-0", now=T0 + 4, fingerprint=None)
    assert store.claim("h:9:w:local-0", allowed=[""], now=T0 + 5).id == "b"
    store.fail("b", "h:9:w:local-0", now=T0 + 6, reason="exit code 2", budget=0,
               info={"exit_code": 2, "log_tail": "no such file"})  # fmt: skip
    store.worker_offline("h:9:w:local-0", now=T0 + 7)
    trail = read_trail(store, now=T0 + 8)
    store.dispose()
    (run,) = runs(trail)
    assert (run.start, run.end, run.live) == (T0, T0 + 7, False)
    assert [(a.task, a.start, a.end, a.ended) for a in run.attempts] == [
        ("a", T0 + 2, T0 + 4, S.COMPLETED), ("b", T0 + 5, T0 + 6, S.FAILED)]  # fmt: skip
    assert run.attempts[1].info["log_tail"] == "no such file"
    assert critical_path(run.attempts, trail.dependencies).tasks == ("a", "b")
