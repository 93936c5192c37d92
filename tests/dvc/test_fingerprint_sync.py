"""Fingerprinters and plugins in a real run (issue 4's acceptance, at the pipeline level).

- a throwaway plugin's fingerprinter, registered in the test, decides a stage changed:
  that stage and everything downstream of it are invalidated, with the reason;
- ``fingerprint: xxhash`` in dvc.yaml: lauf's verdicts come from xxh3 fingerprints, a
  touched file (new mtime, same bytes) invalidates nothing, edits invalidate what DVC
  would, and the reasons name the parameter;
- the first-party ``jsonlog`` plugin (plugins/lauf-dvc-jsonlog, installed by the
  Makefile) is discovered through its entry point and records the run's events; blocked
  in dvc.yaml (``disable_plugins``) it records nothing;
- the audit trail keeps each completion's fingerprint, readable part by part.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pipelines import diamond, dvc_yaml, params_yaml
from test_repro_cli import lauf, stale, status

from lauf_dvc.dvc.project import open_project, reconcile
from lauf_dvc.fingerprint import CMD, Fingerprint, json_value
from lauf_dvc.hookspecs import hookimpl
from lauf_dvc.plugins import register
from lauf_dvc.states import TaskState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]


def with_lauf_vars(files: dict[str, str], **settings: object) -> dict[str, str]:
    stages = json.loads(files["dvc.yaml"])["stages"]
    return {**files, "dvc.yaml": dvc_yaml(stages, vars=[{"lauf": settings}])}


class Revision:
    """A throwaway fingerprinter: the command plus a revision number the test controls."""

    name, version = "revision", "1"

    def __init__(self) -> None:
        self.revision = {"right": 1}

    def fingerprint(self, stage, ctx) -> Fingerprint:
        parts = {CMD: json_value(list(stage.cmd))}
        parts["param:revision"] = json_value(self.revision.get(stage.address, 0))
        return Fingerprint(self.name, self.version, parts)


class RevisionPlugin:
    def __init__(self, fingerprinter: Revision) -> None:
        self.fingerprinter = fingerprinter

    @hookimpl
    def lauf_fingerprinters(self):
        return [self.fingerprinter]


def test_a_plugin_fingerprinter_invalidates_its_stage_and_everything_downstream(
    dvc_repo, monkeypatch
) -> None:
    pipeline = diamond()
    root = dvc_repo(with_lauf_vars(pipeline.files, fingerprint="revision"))
    monkeypatch.chdir(root)
    revision = Revision()

    def project():
        p = open_project()
        register(p.hooks().pm, RevisionPlugin(revision), name="revision-test")
        return p

    # never run: DVC is asked once; run in-process (the plugin lives in this process)
    from lauf_dvc.dvc.work import run_worker

    p = project()
    report = run_worker(p, identifier="w1")
    assert set(report.ran) == pipeline.stages and not report.failed
    store = p.store()
    rows = {r.id: r for r in store.task_rows()}
    stored = Fingerprint.from_json(rows["right"].last_fingerprint)
    assert stored.fingerprinter == "revision" and stored.parts["param:revision"] == "1"

    # nothing changed for the plugin: nothing to do
    p = project()
    assert reconcile(p, p.store(), worker="t").invalidated == []

    # the plugin sees a new revision of `right`: right, bottom, final; not left/top/side
    revision.revision["right"] = 2
    p = project()
    report = reconcile(p, p.store(), worker="t")
    assert set(report.invalidated) == pipeline.downstream("right") == {"right", "bottom", "final"}
    assert report.will_run["right"] == "revision 1 -> 2"
    assert report.will_run["final"] == "upstream bottom <- upstream right <- revision 1 -> 2"
    states = {r.id: r.state for r in p.store().task_rows()}
    assert {a for a, s in states.items() if s == TaskState.INVALIDATED} == {
        "right", "bottom", "final"
    }  # fmt: skip
    history = p.store().history("final")
    assert history[-1].state == TaskState.INVALIDATED and "upstream" in history[-1].reason


def test_xxhash_fingerprints_decide_what_is_stale(dvc_repo, dvctools) -> None:
    pipeline = diamond()
    root = dvc_repo(with_lauf_vars(pipeline.files, fingerprint="xxhash"))
    assert set(lauf(root, "repro", "-j", "3").ran) == pipeline.stages
    assert stale(status(root)) == set()

    # touched, not changed: nothing is stale, nothing runs
    raw = root / "data/raw.txt"
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 5_000_000_000))
    assert stale(status(root)) == set()

    # a parameter: the reason names it with both values
    (root / "params.yaml").write_text(params_yaml({"p": {"top": 1, "left": 7}}))
    rows = status(root)
    assert stale(rows) == {"left", "bottom", "final"}
    assert rows["left"]["reason"] == "params.yaml:p.left 2 -> 7", rows["left"]
    res = lauf(root, "repro", "-j", "3")
    assert res.code == 0 and set(res.ran) == {"left", "bottom", "final"}, res.out

    # a dependency's content
    raw.write_text("raw, second version\n")
    rows = status(root)
    assert stale(rows) == pipeline.downstream("top")
    assert rows["top"]["reason"] == "dependency data/raw.txt content changed"
    assert set(lauf(root, "repro", "-j", "3").ran) == pipeline.downstream("top")
    assert dvctools.dvc_status(root) == {} and stale(status(root)) == set()

    # an output deleted by hand: that stage (and what reads it) is stale, as for DVC
    (root / "out/side.txt").unlink()
    rows = status(root)
    assert stale(rows) == {"side"} and "out/side.txt" in rows["side"]["reason"]


def test_the_jsonlog_plugin_is_discovered_records_the_run_and_can_be_blocked(dvc_repo) -> None:
    pipeline = diamond()
    root = dvc_repo(pipeline.files)
    plugins = lauf(root, "plugins", "--json")
    assert plugins.code == 0, plugins.err
    names = {p["name"]: p for p in json.loads(plugins.out)}
    assert "jsonlog" in names and "lauf-dvc-jsonlog" in names["jsonlog"]["source"]

    assert lauf(root, "repro", "-j", "2").code == 0
    log = root / ".dvc/tmp/lauf/events.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"stage_started", "stage_finished", "task_state_changed"} <= kinds, kinds
    finished = [e for e in events if e["event"] == "stage_finished"]
    assert {e["stage"] for e in finished} == pipeline.stages

    # blocked by name in dvc.yaml: nothing more is written
    log.unlink()
    blocked = Path(root)
    (blocked / "dvc.yaml").write_text(
        with_lauf_vars(pipeline.files, disable_plugins=["jsonlog"])["dvc.yaml"]
    )
    (root / "params.yaml").write_text(params_yaml({"p": {"top": 1, "left": 9}}))
    res = lauf(root, "repro", "-j", "2")
    assert res.code == 0 and set(res.ran) == {"left", "bottom", "final"}, res.out
    assert not log.exists()


def test_completions_keep_a_readable_dvc_fingerprint(dvc_repo, dvctools) -> None:
    pipeline = diamond()
    root = dvc_repo(pipeline.files)
    assert lauf(root, "repro", "-j", "2").code == 0
    events = json.loads(lauf(root, "history", "left", "--json").out)
    done = [e for e in events if e["state"] == "completed"][-1]
    fp = Fingerprint.from_json(done["fingerprint"])
    lock = dvctools.read_locks(root)["dvc.lock"]["stages"]["left"]
    assert fp.fingerprinter == "dvc"
    assert fp.parts["dep:out/top.txt"] == lock["deps"][0]["md5"]
    assert fp.parts["out:out/left.txt"] == lock["outs"][0]["md5"]
    assert fp.parts["param:params.yaml:p.left"] == json_value(2)
