"""DVC behind one seam (lauf_dvc.dvc.compat): every internal lauf uses is probed, every
probe succeeds on the DVC versions CI runs (the lowest pyproject.toml allows and the
newest), and where one fails lauf says so once and falls back to DVC's public path, with
the same repository as `dvc repro` leaves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from pipelines import MARK, dvc_yaml, stage
from repro_helpers import assert_like_dvc_repro, lauf, reference, stale, status

from lauf_dvc.dvc import compat

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

FILES = {
    "mark.py": MARK,
    "data.txt": "data\n",
    "dvc.yaml": dvc_yaml({
        "one": stage("out/one.txt", "data.txt"),
        "two": stage("out/two.txt", "out/one.txt"),
        "three": stage("out/three.txt", "out/one.txt"),
        "side": stage("out/side.txt", "=side"),
    }),
}  # fmt: skip


def test_every_probe_succeeds_on_this_dvc(monkeypatch) -> None:
    """A speed-up that switched itself off on a supported DVC fails here, not silently."""
    import dvc

    monkeypatch.delenv(compat.BREAK_ENV, raising=False)
    compat.reset()
    try:
        report = compat.check()
    finally:
        compat.reset()
    assert report.failed == {}, f"DVC {dvc.__version__}: {compat.describe(report)}"
    for item in compat.ITEMS:  # each says what it is for and what happens without it
        assert item.what and item.without and item.since, item.name


def test_a_broken_probe_is_reported_not_raised(monkeypatch) -> None:
    monkeypatch.setenv(compat.BREAK_ENV, "stage-run-command,strictyaml-load")
    compat.reset()
    try:
        report = compat.check()
        assert set(report.failed) == {"stage-run-command", "strictyaml-load"}
        assert not compat.fast_path() and not compat.caches()
        line = compat.describe(report)
    finally:
        compat.reset()
    assert "\n" not in line and "public path" in line and "stage-run-command" in line


def test_an_unknown_probe_name_is_an_error_not_ignored(dvc_repo, monkeypatch) -> None:
    """A typo in LAUF_DVC_COMPAT_BREAK would test no fallback at all, silently."""
    root = dvc_repo({"dvc.yaml": "stages:\n  a:\n    cmd: echo a\n"}, name="typo")
    env = {**os.environ, compat.BREAK_ENV: "stage-run-comand"}
    done = subprocess.run([sys.executable, "-m", "lauf_dvc", "status"], cwd=root, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "LAUF_DVC_COMPAT_BREAK" in lines[0]
    assert "'stage-run-comand'" in lines[0] and "stage-run-command" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["stage-run-command", "lockfile-entry,strictyaml-load"])
def test_a_moved_internal_falls_back_to_dvcs_public_path(
    dvc_repo, dvctools, monkeypatch, broken: str
) -> None:
    """With a fast-path internal gone, `lauf-dvc repro -j 2` still leaves what
    `dvc repro` leaves (dvc.lock, cache, workspace, .gitignore), says why in one
    warning line, and `lauf-dvc status` agrees with `dvc status`."""
    root = dvc_repo(FILES, add=["data.txt"])
    ref = root.parent / "ref"
    shutil.copytree(root, ref, symlinks=True)
    monkeypatch.setenv(compat.BREAK_ENV, broken)
    res = lauf(root, "repro", "-j", "2")
    assert res.code == 0, res.err
    assert set(res.ran) == reference(ref, dvctools) == {"one", "two", "three", "side"}
    assert_like_dvc_repro(root, ref, dvctools)
    warned = [line for line in res.err.splitlines() if "could not use" in line]
    assert len(warned) == 1, res.err  # once, from the parent (workers are forked after)
    assert "public path" in warned[0] and broken.split(",")[0] in warned[0]
    assert "Traceback" not in res.err
    (root / "data.txt").write_text("changed\n")
    (ref / "data.txt").write_text("changed\n")
    own = set(dvctools.dvc_status(root))
    assert own == {"data.txt.dvc", "one"}
    assert stale(status(root)) == own | {"two", "three"}  # and what runs after one
    res = lauf(root, "repro", "-j", "2")
    assert res.code == 0, res.err
    assert set(res.ran) == reference(ref, dvctools) == {"one", "two", "three"}
    assert_like_dvc_repro(root, ref, dvctools)
