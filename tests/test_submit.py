"""``lauf-dvc submit`` without a cluster: the script it writes (``--print``) and the one
line when there is no ``sbatch``. On a real cluster: tests/cluster (``make test-cluster``)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import isolated, lauf, make_repo  # noqa: F401 (fixture)

from lauf_dvc.cli import _parser
from lauf_dvc.errors import ExitCode

pytestmark = [
    pytest.mark.usefixtures("isolated"),
    pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning"),
]

DOC = Path(__file__).parents[1] / "docs" / "slurm.md"
FILES = {
    "dvc.yaml": "stages:\n  prepare:\n    cmd: echo a > a.txt\n    outs: [a.txt]\n"
    "  train:\n    cmd: cat a.txt > b.txt\n    deps: [a.txt]\n    outs: [b.txt]\n",
    "sub/dvc.yaml": "stages:\n  report:\n    cmd: echo r > r.txt\n    outs: [r.txt]\n",
}
REPRO_FIELDS = (
    "targets",
    "force",
    "single_item",
    "pipeline",
    "all_pipelines",
    "recursive",
    "downstream",
    "force_downstream",
    "pull",
    "allow_missing",
    "on_error",
    "glob",
    "no_commit",
    "no_run_cache",
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", FILES)


def exec_line(script: str) -> list[str]:
    (line,) = [ln for ln in script.splitlines() if ln.startswith("exec ")]
    return shlex.split(line)


def test_the_printed_script_is_the_documented_one_filled_in(repo: Path) -> None:
    res = lauf(
        repo,
        "submit",
        "--workers",
        "4",
        "--partition",
        "cpu",
        "--account",
        "lab",
        "--time",
        "01:00:00",
        "--mem",
        "8G",
        "--cpus-per-task",
        "2",
        "--sbatch=--qos=long",
        "--sbatch=--exclusive",
        "--print",
    )
    assert res.code == 0, res.err
    script = res.out
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    sbatch = re.findall(r"^#SBATCH (.*)$", script, re.M)
    assert sbatch == [
        "--job-name=lauf-dvc",
        "--array=1-4",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--mem=8G",
        "--time=01:00:00",
        f"--output={repo}/.dvc/tmp/lauf/slurm/%x-%A_%a.out",
        "--partition=cpu",
        "--account=lab",
        "--qos=long",
        "--exclusive",
    ]
    assert f"cd {repo}\n" in script
    assert f"source {Path(sys.executable).parent / 'activate'}\n" in script
    # the worker name and the worker command of docs/slurm.md's hand-written script
    (doc,) = [
        b
        for b in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
        if b.startswith("#!/bin/bash")
    ]
    (name,) = [ln for ln in doc.splitlines() if ln.startswith("export LAUF_DVC_IDENTIFIER=")]
    assert name + "\n" in script
    assert "export LAUF_DVC_LOCK=wal\n" in script  # a new database on a local disk
    assert exec_line(script) == [
        "exec",
        "lauf-dvc",
        "worker",
        "--all-pipelines",
        "--max-idle",
        "600",
    ]
    assert exec_line(doc) == ["exec", "lauf-dvc", "worker", "-P", "--max-idle", "600"]
    assert "local filesystem" in res.err  # a note: nodes elsewhere cannot see this checkout
    assert not (repo / ".dvc" / "tmp" / "lauf" / "slurm").exists()  # --print writes nothing


@pytest.mark.parametrize(
    "given",
    [
        [],
        ["train"],
        ["-s", "train"],
        ["-k", "--force-downstream", "-R", "sub"],
        ["--ignore-errors", "--no-commit", "--no-run-cache", "--pull", "--allow-missing"],
        ["-p", "--glob", "tr*"],
        ["--downstream", "-f", "prepare"],
    ],
)
def test_the_workers_get_the_targets_and_repro_options_submit_got(repo: Path, given) -> None:
    res = lauf(repo, "submit", "--workers", "2", "--print", *given)
    assert res.code == 0, res.err
    argv = exec_line(res.out)[2:]
    assert argv[0] == "worker"
    parser = _parser()
    submitted = parser.parse_args(["submit", "--workers", "2", *given])
    worker = parser.parse_args(argv)
    expected = {f: getattr(submitted, f) for f in REPRO_FIELDS}
    if not (submitted.targets or submitted.pipeline or submitted.recursive):
        # a cluster job without targets: every pipeline
        expected["all_pipelines"] = True
    assert {f: getattr(worker, f) for f in REPRO_FIELDS} == expected
    assert worker.max_idle == 600


def test_a_database_url_goes_into_the_script_without_its_password(repo: Path) -> None:
    url = "postgresql+psycopg://lauf:s3cret-pw@db.cluster.local:5432/pipe"
    res = lauf(repo, "--db", url, "submit", "--workers", "2", "--print")
    assert res.code == 0, res.err
    assert "export LAUF_DVC_DB=postgresql+psycopg://lauf@db.cluster.local:5432/pipe\n" in res.out
    assert "LAUF_DVC_LOCK" not in res.out  # PostgreSQL: no lock mode
    assert "s3cret" not in res.out + res.err and "~/.pgpass" in res.err


def test_a_relative_sqlite_database_is_exported_as_the_workers_resolve_it(repo: Path) -> None:
    res = lauf(repo / "sub", "--db", "sqlite:///state/lauf.sqlite", "submit", "--workers", "2",
               "--print")  # fmt: skip
    assert res.code == 0, res.err
    assert f"export LAUF_DVC_DB=sqlite:///{repo}/state/lauf.sqlite\n" in res.out
    assert f"cd {repo / 'sub'}\n" in res.out  # targets stay relative to where submit ran


def test_a_lock_mode_recorded_in_the_database_is_the_one_exported(repo: Path) -> None:
    assert lauf(repo, "repro", "-P", env={"LAUF_DVC_LOCK": "flufl"}).code == 0
    res = lauf(repo, "submit", "--workers", "2", "--print")  # lock: auto follows the file
    assert res.code == 0 and "export LAUF_DVC_LOCK=flufl\n" in res.out, res.out + res.err


def test_without_sbatch_one_line_and_exit_9(repo: Path) -> None:
    # PATH holds the venv only: no sbatch there
    res = lauf(repo, "submit", "--workers", "2", env={"PATH": str(Path(sys.executable).parent)})
    message = (
        "lauf-dvc: error: sbatch not found: run lauf-dvc submit where SLURM's commands are "
        "(a login node), or write the script with --print and submit it yourself"
    )
    notes = [ln for ln in res.err_lines if not ln.startswith("lauf-dvc: warning:")]
    assert (res.code, notes, res.out) == (ExitCode.SUBMIT, [message], "")


def test_a_wrong_target_is_refused_before_anything_is_written(repo: Path) -> None:
    res = lauf(repo, "submit", "--workers", "2", "trian")
    assert res.code == ExitCode.PIPELINE and "unknown target 'trian'" in res.err
    assert not (repo / ".dvc" / "tmp" / "lauf" / "slurm").exists()
    assert lauf(repo, "submit", "--workers", "0", "--print").code == ExitCode.USAGE
