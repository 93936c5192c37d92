"""Every shell command shown in README.md, docs/cli.md and docs/plugins.md runs, in order,
and succeeds.

The commands of ```console blocks (lines starting with ``$ ``) and ```sh blocks run one
after the other in one bash session (a ``cd`` carries over), from a temporary copy of
this checkout's ``examples/`` with ``.venv`` linked in, as a reader who cloned the
repository would run them. README.md's 60-second tour copies the example pipeline,
makes it a git + DVC repository and runs lauf-dvc on it; docs/cli.md's and
docs/plugins.md's commands then run in that same repository. (docs/slurm.md's preparation
commands and job script run in tests/dvc/test_slurm_script.py, with bash in place of
sbatch.)

Each command must exit 0, and every line of the output shown under it that holds no
digit (times, counts, pids and dates differ from run to run) must appear in what it
printed (spaces collapsed): the README shows real output.

Not run here: ``make test`` (this test suite) and ``make venv`` (the venv running these
tests); ``make demo`` runs ``examples/demo.sh`` with the venv on PATH, which
:func:`test_make_demo` runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_helpers import isolated, iter_blocks  # noqa: F401 (fixture)

pytestmark = [pytest.mark.usefixtures("isolated"), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "cli.md", ROOT / "docs" / "plugins.md"]
VENV = Path(sys.prefix) if sys.prefix != sys.base_prefix else None
#: Commands shown but not run here, and why (see the module docstring).
NOT_RUN = {
    "make test": "the test suite itself",
    "make venv": "the venv running this test",
    "make demo": "test_make_demo runs examples/demo.sh",
    "lauf-dvc submit --workers 16 --partition cpu --time 04:00:00": (
        "needs a SLURM cluster: tests/cluster (make test-cluster) submits for real"
    ),
}
COLUMNS = "88"  # the terminal width the shown output was captured at
MARK = "@@lauf-readme-done"


@dataclass
class Command:
    source: str  # file:line
    text: str
    shown: list[str] = field(default_factory=list)  # the output the document shows


def shell_commands(path: Path) -> list[Command]:
    """The commands of every ```console and ```sh block of ``path``, in order."""
    out: list[Command] = []
    for lang, first, lines in iter_blocks(path.read_text(), ("console", "sh")):
        for i, line in enumerate(lines):
            where = f"{path.name}:{first + i}"
            if lang == "sh" and line.strip() and not line.lstrip().startswith("#"):
                out.append(Command(where, line.strip()))
            elif lang == "console" and line.startswith("$ "):
                out.append(Command(where, line[2:].strip()))
            elif lang == "console" and out:
                out[-1].shown.append(line)
    return out


def not_run(command: Command) -> str | None:
    bare = command.text.split("#", 1)[0].strip()
    return NOT_RUN.get(bare)


def examples_copy(dest: Path) -> None:
    """examples/ with the example stages' stand-in work (1 s each) cut to 0.1 s."""
    shutil.copytree(ROOT / "examples", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for script in dest.rglob("*.py"):
        text = script.read_text()
        if "time.sleep(1)" in text:
            script.write_text(text.replace("time.sleep(1)", "time.sleep(0.1)"))


def run_in_one_shell(commands: list[Command], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run ``commands`` in one bash session; each one's output (stdout and stderr)."""
    script = "".join(
        f"{c.text}\nprintf '\\n{MARK} %s\\n' $?\n" for c in commands
    )  # no `set -e`: a failing command is reported, the next ones still run
    proc = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    parts = proc.stdout.split(f"\n{MARK} ")
    outputs, codes = [parts[0]], []
    for part in parts[1:]:
        code, _, rest = part.partition("\n")
        codes.append(int(code))
        outputs.append(rest)
    assert len(codes) == len(commands), proc.stdout[-3000:]
    return [f"[exit {code}]\n{text}" for code, text in zip(codes, outputs, strict=False)]


def _norm(line: str) -> str:
    return " ".join(line.split())


def test_every_shell_command_in_the_readme_and_cli_docs_runs(tmp_path: Path) -> None:
    commands = [c for doc in DOCS for c in shell_commands(doc)]
    assert any(c.text.startswith("lauf-dvc repro") for c in commands)
    skipped = [c for c in commands if not_run(c)]
    assert {c.text.split("#")[0].strip() for c in skipped} <= set(NOT_RUN)
    todo = [c for c in commands if not not_run(c)]
    checkout = tmp_path / "checkout"  # what a reader's clone holds, as far as they use it
    examples_copy(checkout / "examples")
    assert VENV is not None
    (checkout / ".venv").symlink_to(VENV)
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "COLUMNS": COLUMNS}
    outputs = run_in_one_shell(todo, checkout, env)
    for command, output in zip(todo, outputs, strict=True):
        head, _, printed = output.partition("\n")
        assert head == "[exit 0]", f"{command.source}: `{command.text}` failed:\n{printed}"
        got = {_norm(line) for line in printed.splitlines()}
        for line in command.shown:
            if _norm(line) and not re.search(r"\d", line):
                assert _norm(line) in got, (
                    f"{command.source}: `{command.text}` did not print {line.strip()!r}; "
                    f"it printed:\n{printed}"
                )


def test_make_demo(tmp_path: Path) -> None:
    """`make demo` is `make venv` (the venv running this test) then examples/demo.sh."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo: venv\n\t.*bash examples/demo\.sh$", makefile, re.M), makefile
    examples_copy(tmp_path / "examples")
    (tmp_path / "tmp").mkdir()
    assert VENV is not None
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"),
           "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    proc = subprocess.run(
        ["bash", str(tmp_path / "examples" / "demo.sh")], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Data and pipelines are up to date.") == 2, proc.stdout


def test_readme_python_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    blocks = ["\n".join(lines) for _, _, lines in iter_blocks(text, ("python",))]
    assert blocks, "README.md shows no Python example"
    for code in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
