"""``lauf-dvc repro -j 2 [options]`` where a user typed ``dvc repro [options]``: the same
stages run and the same repository results, option by option.

Every test builds two identical repositories, brings both to the same state, then runs
``lauf-dvc repro`` in one and the real ``dvc repro`` command (a subprocess, the CLI a
user types) in the other, with the same options, and compares: which stage commands
ran (marker files, see pipelines.py), every ``dvc.lock`` entry, every ``.dvc`` file,
the cache (objects and run cache), the workspace and the ``.gitignore`` files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pipelines import MARK, MARKS_ENV, SLEEP_ENV, dvc_yaml, runs, stage
from repro_helpers import Result, lauf

from lauf_dvc.errors import ExitCode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

#: data.txt (dvc add) -> one -> two -> three; one -> sub/dvc.yaml:subst; side and lone
#: independent of them; data/dir (a tracked directory) -> dirstat.
STAGES = {
    "one": stage("out/one.txt", "data.txt"),
    "two": stage("out/two.txt", "out/one.txt"),
    "three": stage("out/three.txt", "out/two.txt"),
    "side": stage("out/side.txt", "side.txt"),
    "lone": stage("out/lone.txt", "=lone"),
    "dirstat": stage("out/dirstat.txt", "data/dir/a.txt", deps=["data/dir"]),
}
SUB = {"subst": {"cmd": "python3 ../mark.py subst.txt ../out/one.txt",
                 "deps": ["../out/one.txt"], "outs": ["subst.txt"]}}  # fmt: skip
FILES = {
    "mark.py": MARK,
    "data.txt": "data\n",
    "side.txt": "side\n",
    "data/dir/a.txt": "a\n",
    "data/dir/b.txt": "b\n",
    "dvc.yaml": dvc_yaml(STAGES),
    "sub/dvc.yaml": dvc_yaml(SUB),
}
ADDED = ("data.txt", "data/dir")
DVC_FAILED = 255  # `dvc repro`'s exit code when a stage failed (lauf's is 1, documented)


def dvc_cli(root: Path, *args: str, cwd: Path | None = None) -> Result:
    """The real ``dvc ARGS`` command in ``cwd`` (default: ``root``)."""
    marks = Path(tempfile.mkdtemp(prefix="dvc-marks-", dir=root.parent))
    env = {**os.environ, MARKS_ENV: str(marks), SLEEP_ENV: "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd or root, env=env,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr, runs(marks))


def dvc_files(root: Path) -> dict[str, Any]:
    """Every ``.dvc`` file, parsed."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="safe")
    return {
        p.relative_to(root).as_posix(): yaml.load(p.read_text())
        for p in root.rglob("*.dvc")
        if ".dvc" not in p.relative_to(root).parts[:1]
    }


def assert_same(a: Path, b: Path, dvctools: SimpleNamespace, *, clean: bool = True) -> None:
    """``a`` (lauf) holds what ``b`` (dvc repro) holds, file for file."""
    assert dvctools.read_locks(a) == dvctools.read_locks(b)
    assert dvc_files(a) == dvc_files(b)
    assert dvctools.cache_files(a) == dvctools.cache_files(b)
    assert dvctools.workspace_files(a) == dvctools.workspace_files(b)
    assert dvctools.gitignores(a) == dvctools.gitignores(b)
    if clean:
        assert dvctools.dvc_status(a) == {}
    else:
        assert dvctools.dvc_status(a) == dvctools.dvc_status(b)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """FILES (``data.txt`` and ``data/dir`` dvc-added), reproduced: made once, copied by
    every test (a fresh git + DVC repository per test costs more than its test)."""
    from dvc_repos import DVC_ENV, init_repo, reproduce

    base = tmp_path_factory.mktemp("dropin-template")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**DVC_ENV, "DVC_GLOBAL_CONFIG_DIR": str(base / "global"),
                           "DVC_SYSTEM_CONFIG_DIR": str(base / "system"),
                           "DVC_SITE_CACHE_DIR": str(base / "site")}.items():  # fmt: skip
            mp.setenv(key, value)
        root = init_repo(base / "repo", FILES, ADDED)
        reproduce(root)  # every pipeline: the copies start up to date
    return root


@pytest.fixture
def twins(template, tmp_path, dvctools):
    """Two copies of the template; with ``files``, those written and reproduced in both."""

    def make(files: dict[str, str] | None = None):
        roots = []
        for name in ("lauf", "dvc"):
            root = tmp_path / name
            shutil.copytree(template, root, symlinks=True)
            shutil.rmtree(root / ".dvc" / "tmp", ignore_errors=True)  # no lauf state copied
            if files:
                edit((root,), files)
                dvctools.reproduce(root)
            roots.append(root)
        return tuple(roots)

    return make


def both(a: Path, b: Path, *args: str, cwd: str = ".") -> tuple[Result, Result]:
    ours = lauf(a, "repro", "-j", "2", *args, cwd=a / cwd, sleep="0")
    theirs = dvc_cli(b, "repro", *args, cwd=b / cwd)
    return ours, theirs


def edit(roots: tuple[Path, ...], files: dict[str, str]) -> None:
    for root in roots:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)


# -- .dvc files are stages ---------------------------------------------------------------


def test_two_line_repository_of_the_issue(dvc_repo, dvctools) -> None:
    files = {"foo": "foo\n", "dvc.yaml": dvc_yaml({"count": {
        "cmd": "wc -c < foo > n", "deps": ["foo"], "outs": ["n"]}})}  # fmt: skip
    a, b = (dvc_repo(files, name=n, add=["foo"]) for n in ("lauf", "dvc"))
    for root in (a, b):
        dvctools.reproduce(root)
        (root / "foo").write_text("changed\n")
    ours, theirs = both(a, b)
    assert (ours.code, theirs.code) == (0, 0), ours.err
    assert_same(a, b, dvctools)
    status = json.loads(lauf(a, "status", "--json").out)
    assert {r["stage"]: r["state"] for r in status} == {"foo.dvc": "completed",
                                                        "count": "completed"}  # fmt: skip


def test_changed_data_source_and_directory_are_committed_first(twins, dvctools) -> None:
    a, b = twins()
    edit((a, b), {"data.txt": "new data\n", "data/dir/c.txt": "c\n"})
    ours, theirs = both(a, b, "-P")
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == {"one", "two", "three", "dirstat",
                                                "sub/dvc.yaml:subst"}  # fmt: skip
    for run in ("one", "dirstat"):  # ran after its data source was committed
        assert ours.ran[run].start > 0
    assert_same(a, b, dvctools)


def test_a_dvc_file_as_target(twins, dvctools) -> None:
    a, b = twins()
    edit((a, b), {"data.txt": "other\n"})
    ours, theirs = both(a, b, "data.txt.dvc")
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == set()
    assert_same(a, b, dvctools, clean=False)  # one, two, three stale in both


def test_missing_data_source_fails_that_node_only_with_keep_going(twins, dvctools) -> None:
    a, b = twins()
    for root in (a, b):
        (root / "data.txt").unlink()
    ours, theirs = both(a, b, "-P", "-k")
    assert (ours.code, theirs.code) == (ExitCode.STAGE_FAILED, DVC_FAILED), ours.err
    assert set(ours.ran) == set(theirs.ran)
    assert "data.txt.dvc" in ours.out + ours.err
    assert_same(a, b, dvctools, clean=False)


def test_frozen_stage_below_a_data_source(twins, dvctools) -> None:
    a, b = twins()
    for root in (a, b):
        yaml = (root / "dvc.yaml").read_text().replace('"one": {', '"one": {"frozen": true, ', 1)
        (root / "dvc.yaml").write_text(yaml)
    edit((a, b), {"data.txt": "changed\n"})
    ours, theirs = both(a, b)
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == set()
    assert_same(a, b, dvctools, clean=False)


def test_import_from_a_local_git_repository(dvc_repo, dvctools, tmp_path) -> None:
    source = dvc_repo({"data.txt": "v1\n"}, name="source", add=["data.txt"])
    cache = str(source / ".dvc" / "cache")
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "up", cache],
                   cwd=source, check=True, capture_output=True)  # fmt: skip
    dvctools.git(source, "commit", "-qam", "remote")
    files = {"mark.py": MARK, "dvc.yaml": dvc_yaml({"use": stage("out/use.txt", "data.txt")})}
    roots = []
    for name in ("lauf", "dvc"):
        root = dvc_repo(files, name=name)
        subprocess.run([sys.executable, "-m", "dvc", "import", str(source), "data.txt"],
                       cwd=root, check=True, capture_output=True)  # fmt: skip
        roots.append(root)
    a, b = roots
    ours, theirs = both(a, b)
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == {"use"}
    assert_same(a, b, dvctools)
    # the import is frozen: a new version upstream is not fetched by repro
    (source / "data.txt").write_text("v2\n")
    ours, theirs = both(a, b)
    assert set(ours.ran) == set(theirs.ran) == set()
    assert (a / "data.txt").read_text() == "v1\n"
    assert_same(a, b, dvctools)


# -- every option ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "change"),
    [
        ((), {"data.txt": "x\n"}),  # the dvc.yaml of the cwd, with what it needs
        (("-P",), {"data.txt": "x\n"}),
        (("-f",), {}),
        (("-f", "two"), {}),
        (("-s", "two"), {"out/one.txt": "edited\n"}),
        (("-s", "-f", "three", "one"), {}),
        (("-p", "two"), {"side.txt": "y\n", "data.txt": "x\n"}),
        (("-R", "sub"), {"data.txt": "x\n"}),
        (("--downstream", "two"), {"data.txt": "x\n", "out/one.txt": "edited\n"}),
        (("--downstream", "-f", "one"), {}),
        (("--force-downstream",), {"data.txt": "x\n"}),
        (("--glob", "t*"), {"data.txt": "x\n"}),
        (("--no-commit",), {"data.txt": "x\n"}),
        (("--no-run-cache", "-f"), {}),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_option_like_dvc_repro(twins, dvctools, args, change) -> None:
    a, b = twins()
    edit((a, b), change)
    ours, theirs = both(a, b, *args)
    assert ours.code == theirs.code == 0, (ours.err, theirs.err)
    assert set(ours.ran) == set(theirs.ran), (set(ours.ran), set(theirs.ran))
    assert_same(a, b, dvctools, clean=False)


def test_targets_and_default_are_relative_to_the_cwd(twins, dvctools) -> None:
    """From sub/: the default is sub/dvc.yaml (and what it needs), targets are read
    from there. (DVC_STAGE, which mark.py records, is DVC's address from the cwd; lauf's
    workers give it relative to the root, as `dvc repro` run there does.)"""
    a, b = twins()
    edit((a, b), {"data.txt": "x\n"})
    ours, theirs = both(a, b, cwd="sub")  # sub/dvc.yaml and what it needs, not the root's
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == {"one", "sub/dvc.yaml:subst"}
    assert set(theirs.ran) == {"../dvc.yaml:one", "subst"}
    ours, theirs = both(a, b, "../dvc.yaml:two", cwd="sub")
    assert (set(ours.ran), set(theirs.ran)) == ({"two"}, {"../dvc.yaml:two"})
    assert_same(a, b, dvctools, clean=False)


def test_force_downstream_forces_below_an_unchanged_output(twins, dvctools) -> None:
    """side.txt changes but out/side.txt of `side` is what it was: without the option
    nothing below would run; here a stage below `side` exists only for this."""
    extra = {"below": stage("out/below.txt", "out/side.txt")}
    a, b = twins({"dvc.yaml": dvc_yaml({**STAGES, **extra})})
    edit((a, b), {"side.txt": "side\n\n"})
    ours, theirs = both(a, b, "--force-downstream")
    assert set(ours.ran) == set(theirs.ran) == {"side", "below"}
    assert_same(a, b, dvctools)


def test_keep_going_and_ignore_errors(twins, dvctools) -> None:
    failing = {"two": {**STAGES["two"], "cmd": STAGES["two"]["cmd"] + " && exit 3"}}
    for flag, code in (("-k", ExitCode.STAGE_FAILED), ("--ignore-errors", ExitCode.OK)):
        a, b = twins()
        edit((a, b), {"data.txt": f"{flag}\n", "side.txt": f"{flag}\n",
                      "dvc.yaml": dvc_yaml({**STAGES, **failing})})  # fmt: skip
        ours, theirs = both(a, b, "-P", flag)
        assert (ours.code, theirs.code) == (code, 0 if code == ExitCode.OK else DVC_FAILED)
        assert set(ours.ran) == set(theirs.ran)  # -k: not three; --ignore-errors: three too
        assert ("three" in ours.ran) == (flag == "--ignore-errors")
        assert_same(a, b, dvctools, clean=False)
        for root in (a, b):
            shutil.rmtree(root)


def test_pull_and_allow_missing(twins, dvctools, tmp_path) -> None:
    a, b = twins()
    for root, remote in ((a, tmp_path / "ra"), (b, tmp_path / "rb")):
        for cmd in (["remote", "add", "-d", "r", str(remote)], ["push", "-q", "--run-cache"]):
            subprocess.run([sys.executable, "-m", "dvc", *cmd], cwd=root, check=True,
                           capture_output=True)  # fmt: skip
        shutil.rmtree(root / ".dvc" / "cache")
        for out in ("out/one.txt", "out/two.txt"):
            (root / out).unlink()
    ours, theirs = both(a, b, "--allow-missing")  # only missing data: nothing runs
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == set()
    assert_same(a, b, dvctools, clean=False)
    ours, theirs = both(a, b, "--pull")  # missing data pulled, not reproduced
    assert ours.code == theirs.code == 0, (ours.err, theirs.err)
    assert set(ours.ran) == set(theirs.ran) == set()
    assert (a / "out" / "two.txt").exists()
    assert_same(a, b, dvctools, clean=False)  # sub/ is not the default target: not pulled


def test_dry_runs_nothing_and_creates_no_database(twins, dvctools) -> None:
    a, b = twins()
    shutil.rmtree(a / ".dvc" / "tmp" / "lauf", ignore_errors=True)
    edit((a, b), {"data.txt": "x\n"})
    ours, theirs = both(a, b, "--dry")
    assert ours.code == theirs.code == 0, ours.err
    assert not ours.ran and not theirs.ran
    assert not (a / ".dvc" / "tmp" / "lauf" / "lauf.sqlite").exists()
    for name in ("data.txt.dvc", "one", "two", "three"):  # not sub/: not the default target
        assert name in ours.out, ours.out
    assert_same(a, b, dvctools, clean=False)


def test_interactive_is_refused_in_one_line(twins) -> None:
    a, _ = twins()
    res = lauf(a, "repro", "-i")
    assert res.code == ExitCode.USAGE
    assert res.err.strip().count("\n") == 0 and "--interactive" in res.err


# -- workers that cannot be fooled, crashes reported -------------------------------------

SHADOW = (
    "import sys\n"
    "if 'lauf_dvc' in sys.modules or 'dvc' in sys.modules:\n"
    "    raise ImportError(f'the repository {__file__} was imported')\n"
)


@pytest.mark.parametrize("spawn", ["0", "1"], ids=["fork", "spawn"])
def test_modules_of_the_repository_never_shadow_the_standard_library(
    dvc_repo, dvctools, monkeypatch, spawn
) -> None:
    files = {"mark.py": MARK, "data.txt": "d\n", "copy.py": SHADOW, "logging.py": SHADOW,
             "dvc.yaml": dvc_yaml({"one": stage("out/one.txt", "data.txt"),
                                   "two": stage("out/two.txt", "out/one.txt")})}  # fmt: skip
    root = dvc_repo(files)
    monkeypatch.setenv("LAUF_DVC_SPAWN", spawn)
    res = lauf(root, "repro", "-j", "2", sleep="0", script=True)  # as a user types it
    assert res.code == 0, res.out + res.err
    assert set(res.ran) == {"one", "two"}
    assert dvctools.dvc_status(root) == {}


@pytest.mark.parametrize("spawn", ["0", "1"], ids=["fork", "spawn"])
def test_a_crashed_worker_is_one_line_with_its_log(dvc_repo, monkeypatch, spawn) -> None:
    root = dvc_repo({"mark.py": MARK, "dvc.yaml": dvc_yaml({"one": stage("out/one.txt", "=1")})})
    monkeypatch.setenv("LAUF_DVC_SPAWN", spawn)
    monkeypatch.setenv("LAUF_DVC_FAULT", "worker-crash")
    res = lauf(root, "repro", "-j", "2")
    assert res.code == ExitCode.WORKER_CRASHED, res.out + res.err
    (line,) = res.err.strip().splitlines()
    assert line.startswith("lauf-dvc: error: worker "), line
    assert "RuntimeError: fault injection: worker-crash" in line
    log = line.rsplit("(log: ", 1)[1].split(")", 1)[0]
    assert Path(log).is_file() and "worker-crash" in Path(log).read_text()
    assert not res.ran


def test_import_url_is_fetched_again_once_unfrozen(dvc_repo, dvctools, tmp_path) -> None:
    """`dvc import-url` stages are frozen: a changed source is not fetched by repro;
    unfrozen, it is imported again and the stage reading it runs, as under dvc repro."""
    source = tmp_path / "upstream.txt"
    source.write_text("v1\n")
    files = {"mark.py": MARK, "dvc.yaml": dvc_yaml({"use": stage("out/use.txt", "got.txt")})}
    roots = []
    for name in ("lauf", "dvc"):
        root = dvc_repo(files, name=name)
        subprocess.run([sys.executable, "-m", "dvc", "import-url", str(source), "got.txt"],
                       cwd=root, check=True, capture_output=True)  # fmt: skip
        dvctools.reproduce(root)
        roots.append(root)
    a, b = roots
    source.write_text("v2\n")
    ours, theirs = both(a, b)
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == set()
    assert (a / "got.txt").read_text() == "v1\n"
    for root in (a, b):
        subprocess.run([sys.executable, "-m", "dvc", "unfreeze", "got.txt.dvc"], cwd=root,
                       check=True, capture_output=True)  # fmt: skip
    ours, theirs = both(a, b)
    assert ours.code == theirs.code == 0, ours.err
    assert set(ours.ran) == set(theirs.ran) == {"use"}
    assert (a / "got.txt").read_text() == "v2\n"
    assert_same(a, b, dvctools)


def test_a_stage_named_with_a_colon_runs_as_under_dvc(dvc_repo, dvctools) -> None:
    """Issue 14, point 7: DVC accepts `a:b` as a stage name (no target can name it)."""
    stages = {"a:b": stage("out/ab.txt", "=ab"), "c": stage("out/c.txt", "out/ab.txt")}
    files = {"mark.py": MARK, "dvc.yaml": dvc_yaml(stages)}
    a, b = (dvc_repo(files, name=n) for n in ("lauf", "dvc"))
    ours, theirs = both(a, b)
    assert ours.code == theirs.code == 0, ours.out + ours.err
    assert set(ours.ran) == set(theirs.ran) == {"a:b", "c"}
    assert_same(a, b, dvctools)
    assert lauf(a, "history", "a:b").code == 0
