"""The report of the example pipeline in a real headless Chromium (Debian's ``chromium``,
driven over the DevTools protocol, see chromium_cdp.py), and ``lauf-dvc dag --dot``
through Graphviz's real ``dot``. Run by ``make test-browser``, which installs both when
missing; ``make test`` leaves this folder out (tests/conftest.py).

The example is run as docs/screenshot.py runs it (``lauf-dvc repro -P -j 4`` in a fresh
copy, then ``lauf-dvc report --html``): every stage of a fresh copy runs exactly once,
so the page must have one bar per stage.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from chromium_cdp import Chromium

ROOT = Path(__file__).resolve().parents[2]
#: The example's stages (examples/dvc_project/dvc.yaml and report/dvc.yaml).
STAGES = ["prepare", "featurize@sepal_length", "featurize@sepal_width", "featurize@petal_length",
          "featurize@petal_width", "train", "evaluate", "report/dvc.yaml:summary"]  # fmt: skip

pytestmark = pytest.mark.slow


def screenshot_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lauf_screenshot", ROOT / "docs" / "screenshot.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shot() -> ModuleType:
    return screenshot_script()


@pytest.fixture(scope="module")
def example(shot: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example pipeline, run; the path of its report."""
    return shot.example_report(tmp_path_factory.mktemp("browser") / "example")


def test_the_report_opens_without_errors_with_a_bar_per_stage_run(
    shot: ModuleType, example: Path, tmp_path: Path
) -> None:
    flags = [*shot.browser_flags(), "--window-size=1240,900"]
    with Chromium(shot.find_chromium(), flags) as browser:
        page = browser.open(example.as_uri())
        bars = page.evaluate(
            "Array.from(document.querySelectorAll('[data-attempt]')).map(b => ({"
            "stage: b.dataset.stage, outcome: b.dataset.outcome,"
            "width: b.getBoundingClientRect().width, title: b.querySelector('title').textContent}))"
        )
        assert sorted(b["stage"] for b in bars) == sorted(STAGES)  # one bar each
        assert {b["outcome"] for b in bars} == {"ran"}
        assert all(b["width"] >= 2 for b in bars)  # drawn, not collapsed
        assert all(b["title"].startswith(f"{b['stage']}: ran\nworker ") for b in bars)
        crit = page.evaluate("document.querySelectorAll('[data-attempt].crit').length")
        assert crit >= 4  # prepare -> a featurize -> train -> evaluate -> summary: 5
        page.evaluate("document.querySelector('[data-stage=\"train\"]')"
                      ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")  # fmt: skip
        lit = page.evaluate("Array.from(document.querySelectorAll('tr.hl'), r => r.dataset.stage)")
        assert lit == ["train"]  # the page's script ran: the stage's row is highlighted
        png = tmp_path / "report.png"
        width, height = page.screenshot(png)
        problems, requests = page.problems(), page.requests()
    print(f"\nscreenshot of the report in Chromium: {png} ({width}x{height})")
    assert problems == []
    assert requests == [example.as_uri()]  # the page fetched nothing else
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_driver_sees_what_goes_wrong_in_a_page(shot: ModuleType, tmp_path: Path) -> None:
    """The checks above can fail: errors, exceptions and fetches are seen."""
    bad = tmp_path / "bad.html"
    script = 'console.error("oops"); undefinedThing();'
    bad.write_text(f'<!DOCTYPE html><html><body><img src="missing.png"><script>{script}</script>')
    with Chromium(shot.find_chromium(), shot.browser_flags()) as browser:
        page = browser.open(bad.as_uri())
        problems, requests = page.problems(), page.requests()
    assert any(p.startswith("console.error") and "oops" in p for p in problems), problems
    assert any(p.startswith("exception") and "undefinedThing" in p for p in problems), problems
    assert (tmp_path / "missing.png").as_uri() in requests


def test_the_screenshot_script_writes_the_readme_picture(tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "screenshot.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1240, 1000)
    assert len(data) > 30_000  # not a blank page (a white 1240x1000 PNG is ~5 kB)
    print(f"\nscreenshot written by docs/screenshot.py: {out}")


def test_dag_dot_renders_with_graphviz(example: Path) -> None:
    dot = shutil.which("dot")
    assert dot, "Graphviz's dot is missing: `make test-browser` installs it (apt-get)"
    proc = subprocess.run([sys.executable, "-m", "lauf_dvc", "dag", "--dot"], cwd=example.parent,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    svg = subprocess.run([dot, "-Tsvg"], input=proc.stdout, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert svg.returncode == 0 and not svg.stderr, svg.stderr
    for name in STAGES:
        assert f"<title>{name}</title>" in svg.stdout  # a node per stage...
        assert f"{name}</text>" in svg.stdout  # ...labelled with its name
    assert svg.stdout.count(">completed</text>") == len(STAGES)  # and its state
