"""``lauf-dvc report`` and ``lauf-dvc dag`` after a real ``lauf-dvc repro -j 2`` of a real
DVC pipeline with a stage that fails (and is retried once), a foreach and a second
dvc.yaml (names with ``@``, ``-``, ``/`` and ``:``), all as a user runs them.

What ran is known without lauf: every stage but ``b`` leaves a marker (mark.py), and
each attempt of ``b`` appends a line to a file outside the repository.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from graph_syntax import parse_dot, parse_mermaid
from pipelines import MARK, cmd, dvc_yaml, stage
from repro_helpers import LAUF_DB, lauf

from lauf_dvc.cli import NO_RUN_YET
from lauf_dvc.errors import ExitCode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

TAIL = "boom: b <is> broken & 'gone'"
STATES = {"prep": "completed", "feat@x-1": "completed", "feat@y-2": "completed",
          "b": "failed: exit code 3", "c": "upstream_failed: upstream b failed",
          "sub/dvc.yaml:post-proc": "completed"}  # fmt: skip
UPSTREAM = {"prep": set(), "feat@x-1": {"prep"}, "feat@y-2": {"prep"}, "b": {"prep"},
            "c": {"b"}, "sub/dvc.yaml:post-proc": {"feat@x-1"}}  # fmt: skip


def files(attempts: Path) -> dict[str, str]:
    feat = {"cmd": cmd("feat/${item}.txt", "out/prep.txt", "=${item}"),
            "deps": ["out/prep.txt"], "outs": ["feat/${item}.txt"]}  # fmt: skip
    b = {"cmd": f'echo attempt >> {attempts} && echo "{TAIL}" && exit 3',
         "deps": ["out/prep.txt"], "outs": ["out/b.txt"],
         "meta": {"lauf": {"retries": 1}}}  # fmt: skip
    root = {"prep": stage("out/prep.txt", "=p"), "feat": {"foreach": ["x-1", "y-2"], "do": feat},
            "b": b, "c": stage("out/c.txt", "out/b.txt")}  # fmt: skip
    sub = {"post-proc": {"cmd": cmd("post.txt", "../feat/x-1.txt", wdir="sub"),
                         "deps": ["../feat/x-1.txt"], "outs": ["post.txt"]}}  # fmt: skip
    return {"mark.py": MARK, "dvc.yaml": dvc_yaml(root), "sub/dvc.yaml": dvc_yaml(sub)}


class Page(HTMLParser):
    """The bars (their data- attributes) and the text of each failure's <pre>."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.bars: list[dict[str, str | None]] = []
        self.logs: dict[str, str] = {}
        self._failure: str | None = None
        self._in_pre = False
        self.feed(text)

    def handle_starttag(self, tag, attrs) -> None:
        a = dict(attrs)
        if "data-attempt" in a:
            self.bars.append(a)
        if tag == "article" and "failure" in (a.get("class") or ""):
            self._failure = a["data-stage"]
        self._in_pre = tag == "pre"

    def handle_endtag(self, tag) -> None:
        self._in_pre = self._in_pre and tag != "pre"

    def handle_data(self, data) -> None:
        if self._in_pre and self._failure:
            self.logs[self._failure] = self.logs.get(self._failure, "") + data


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory: pytest.TempPathFactory):
    """The repository after `lauf-dvc repro -P -j 2 -k`, and what ran in it."""
    from dvc_repos import DVC_ENV, init_repo

    base = tmp_path_factory.mktemp("report")
    attempts = base / "b-attempts"
    with pytest.MonkeyPatch.context() as mp:
        home = {"DVC_GLOBAL_CONFIG_DIR": "g", "DVC_SYSTEM_CONFIG_DIR": "s",
                "DVC_SITE_CACHE_DIR": "site"}  # fmt: skip
        for key, value in {**DVC_ENV, "SHELL": "/bin/bash"}.items():
            mp.setenv(key, value)
        for key, sub in home.items():  # as tests/dvc/conftest.py's _isolated_dvc does
            mp.setenv(key, str(base / sub))
        root = init_repo(base / "repo", files(attempts))
        res = lauf(root, "repro", "-P", "-j", "2", "-k")
        assert res.code == ExitCode.STAGE_FAILED, res.out + res.err
        yield root, res, attempts.read_text().count("attempt")


def test_the_html_report_has_a_bar_per_stage_run_and_the_failure_log(failed_run) -> None:
    root, repro, b_attempts = failed_run
    res = lauf(root, "report", "--html", "report.html")
    assert res.code == 0, res.err
    assert res.out.startswith("wrote report.html: run 1 of 1, ")
    text = (root / "report.html").read_text()
    page = Page(text)
    ran = collections.Counter(list(repro.ran))  # marker files: the commands that ran, once each
    ran["b"] = b_attempts
    assert b_attempts == 2  # retried once
    assert collections.Counter(bar["data-stage"] for bar in page.bars) == ran
    outcomes = {(bar["data-stage"], bar["data-outcome"]) for bar in page.bars}
    assert outcomes == {(s, "failed" if s == "b" else "ran") for s in ran}
    assert TAIL in page.logs["b"]  # the log tail, as the command printed it...
    assert "<is>" not in text  # ...escaped in the page
    assert "http://" not in text and "https://" not in text


def test_the_text_report_and_the_run_choice(failed_run) -> None:
    root, _, _ = failed_run
    res = lauf(root, "report")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].startswith("run 1 of 1, started ") and "(finished)" in lines[0]
    assert any(line.strip().startswith("critical path ") for line in lines)
    assert "  failed: b (attempt 2): exit code 3 (log: " in res.out
    assert "  not run (upstream failed): c" in lines
    assert lauf(root, "report", "--run", "all").out == res.out  # one run only
    assert lauf(root, "report", "--run", "1").out == res.out
    wrong = lauf(root, "report", "--run", "2")
    assert wrong.code == ExitCode.USAGE and "the database holds 1 run(s)" in wrong.err
    assert lauf(root, "report", "--run", "first").code == ExitCode.USAGE  # argparse


def test_dag_names_every_stage_with_its_state_in_each_form(failed_run) -> None:
    root, _, _ = failed_run
    edges = {(u, s) for s, ups in UPSTREAM.items() for u in ups}
    mer = lauf(root, "dag", "--mermaid")
    assert mer.code == 0, mer.err
    graph = parse_mermaid(mer.out)
    labels = dict(label.split("\n", 1) for label in graph.labels.values())
    assert labels == STATES
    name = {ident: label.split("\n", 1)[0] for ident, label in graph.labels.items()}
    assert {(name[a], name[b]) for a, b in graph.edges} == edges
    dot = lauf(root, "dag", "--dot")
    assert dot.code == 0, dot.err
    graph = parse_dot(dot.out)
    assert {n: label.split("\n", 1)[1] for n, label in graph.labels.items()} == STATES
    assert set(graph.edges) == edges
    plain = lauf(root, "dag")
    rows = {line.split("  ")[0]: line for line in plain.out.splitlines()[1:]}
    assert set(rows) == set(STATES)
    assert all(STATES[s] in rows[s] for s in STATES)
    target = lauf(root, "dag", "--dot", "c")  # a target: it and what it depends on
    assert set(parse_dot(target.out).labels) == {"prep", "b", "c"}


def test_before_any_run_report_says_so_and_dag_shows_never_run(dvc_repo) -> None:
    root = dvc_repo(files(Path("/nonexistent")))
    res = lauf(root, "report", "--html", "r.html")
    assert (res.code, res.err.strip(), res.out) == (0, NO_RUN_YET, "")
    assert not (root / "r.html").exists()
    res = lauf(root, "dag", "--dot")
    assert res.code == 0, res.err
    labels = parse_dot(res.out).labels
    assert {n: label.split("\n", 1)[1] for n, label in labels.items()} == dict.fromkeys(
        STATES, "never run"
    )
    assert not (root / LAUF_DB).exists()  # looking created no database


def test_a_run_still_going_reads_as_far_as_it_got(dvc_repo, tmp_path) -> None:
    started, go = tmp_path / "started", tmp_path / "go"
    slow = {"cmd": f"touch {started} && while [ ! -e {go} ]; do sleep 0.05; done && "
                   "echo s > out/slow.txt",
            "deps": ["out/a.txt"], "outs": ["out/slow.txt"]}  # fmt: skip
    stages = {"a": stage("out/a.txt", "=a"), "slow": slow}
    root = dvc_repo({"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)})
    command = [sys.executable, "-m", "lauf_dvc", "repro", "-j", "1"]
    repro = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert repro.poll() is None and time.monotonic() < deadline, repro.stdout.read()
            time.sleep(0.05)
        res = lauf(root, "report", "--html", "live.html")
        assert res.code == 0, res.err
        text = lauf(root, "report").out
    finally:
        go.touch()
        out, _ = repro.communicate(timeout=120)
    assert repro.returncode == 0, out
    bars = Page((root / "live.html").read_text()).bars
    shown = [(b["data-stage"], b["data-outcome"]) for b in bars]
    assert shown == [("a", "ran"), ("slow", "running")]
    assert "(still running)" in text.splitlines()[0]
    after = lauf(root, "report")
    assert "(finished)" in after.out.splitlines()[0] and "2 ran" in after.out
