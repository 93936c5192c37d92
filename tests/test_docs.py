"""The reference pages say what the code does: every setting, state transition, exit code,
command and ``status --json`` key is documented, and nothing documented is not there."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml
from cli_helpers import iter_blocks

from lauf_dvc.cli import COMMANDS, STATUS_KEYS
from lauf_dvc.config import (
    PROJECT_KEYS,
    SETTINGS,
    STAGE_KEYS,
    ProjectSettings,
    SchedulerSettings,
    StageSettings,
    markdown_tables,
    update_markdown,
)
from lauf_dvc.errors import ExitCode
from lauf_dvc.states import TRANSITIONS, TaskState

DOCS = Path(__file__).resolve().parents[1] / "docs"
PACKAGE = Path(__file__).resolve().parents[1] / "lauf_dvc"
REGENERATE = (
    "regenerate them: python -c 'from pathlib import Path; from lauf_dvc.config import "
    'update_markdown as u; p = Path("docs/configuration.md"); p.write_text(u(p.read_text()))\''
)


def table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after ``heading``."""
    section = text[text.index(heading) :]
    rows: list[list[str]] = []
    for line in section.splitlines():
        if re.fullmatch(r"\|[-:| ]+\|", line.strip()):  # the separator under the header
            continue
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    return rows[1:]  # without the header


def code(cell: str) -> str:
    found = re.match(r"`([^`]*)`", cell)
    assert found, f"expected `code` at the start of {cell!r}"
    return found[1]


def test_every_project_setting_is_documented_with_default_and_env_var() -> None:
    rows = table((DOCS / "configuration.md").read_text(), "## Project settings")
    documented = {code(r[0]): r for r in rows}
    assert list(documented) == list(PROJECT_KEYS)
    defaults = ProjectSettings()
    for key, (_, default, env, _what) in documented.items():
        assert code(env) == f"LAUF_DVC_{key.upper()}"
        value = getattr(defaults, key)
        if value is None:
            assert default.startswith("none"), key
        else:
            shown = yaml.safe_load(code(default))
            assert shown == (list(value) if isinstance(value, tuple) else value), key


def test_every_stage_setting_is_documented_with_its_default() -> None:
    rows = table((DOCS / "configuration.md").read_text(), "## Stage settings")
    documented = {code(r[0]): r[1] for r in rows}
    assert list(documented) == list(STAGE_KEYS)
    defaults = {f.name: f.default for f in dataclasses.fields(StageSettings)}
    for key, default in documented.items():
        if defaults[key] is None:
            assert default.startswith("none"), key
        else:
            value = defaults[key]
            assert yaml.safe_load(code(default)) == (
                list(value) if isinstance(value, tuple) else value
            )


def test_the_configuration_tables_are_generated_from_the_settings_table() -> None:
    """docs/configuration.md's three tables are what config.SETTINGS makes, cell for cell."""
    text = (DOCS / "configuration.md").read_text()
    for heading, generated in markdown_tables().items():
        after = text[text.index(heading + "\n") :].splitlines()
        first = next(i for i, line in enumerate(after) if line.startswith("|"))
        end = next(i for i in range(first, len(after)) if not after[i].startswith("|"))
        assert "\n".join(after[first:end]) == generated, f"{heading}: {REGENERATE}"
    assert update_markdown(text) == text, REGENERATE


def test_the_settings_dataclasses_have_the_fields_of_the_table() -> None:
    assert [f.name for f in dataclasses.fields(ProjectSettings)] == list(PROJECT_KEYS)
    assert [f.name for f in dataclasses.fields(StageSettings)] == list(STAGE_KEYS)
    read_from_env = {s.env for s in SETTINGS if s.scope.name in ("PROJECT", "ENV")}
    for f in dataclasses.fields(SchedulerSettings):
        assert f"LAUF_DVC_{f.name.upper()}" in read_from_env, f.name


def test_every_lauf_dvc_variable_the_package_names_is_in_the_settings_table() -> None:
    """No LAUF_DVC_* variable is read (or set) without a row in config.SETTINGS, and so
    in docs/configuration.md."""
    named = {
        (name, str(path.relative_to(PACKAGE.parent)))
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"LAUF_DVC_[A-Z_]+", path.read_text())
    }
    assert ("LAUF_DVC_FAULT", "lauf_dvc/faults.py") in named  # the scan sees the package
    table = {s.env for s in SETTINGS}
    assert sorted(where for where in named if where[0] not in table) == []


def test_the_configuration_example_is_valid() -> None:
    text = (DOCS / "configuration.md").read_text()
    example, *others = ["\n".join(lines) for _, _, lines in iter_blocks(text, ("yaml",))]
    for i, block in enumerate([example, *others]):  # every example, the first in detail
        doc = yaml.safe_load(block)
        (lauf,) = [v["lauf"] for v in doc["vars"] if "lauf" in v]
        settings = ProjectSettings.resolve(None, lauf, environ={})
        if i == 0:
            assert settings.jobs == 8 and settings.disable_plugins == ("jsonlog",)
        for name, stage in doc["stages"].items():
            meta = stage.get("do", stage).get("meta")  # foreach: the template's
            StageSettings.from_meta(meta, where=f"dvc.yaml:{name}")


def test_state_diagram_is_the_transition_table() -> None:
    text = (DOCS / "states.md").read_text()
    (diagram,) = [lines for _, _, lines in iter_blocks(text, ("mermaid",))]
    edges = set()
    for line in diagram[1:]:
        found = re.fullmatch(r"\s*(\S+) --> (\w+)(: .+)?", line)
        assert found, line
        old = None if found[1] == "[*]" else TaskState(found[1])
        edges.add((old, TaskState(found[2])))
    assert edges == set(TRANSITIONS)
    documented = [code(r[0]) for r in table(text, "| state |")]
    assert sorted(documented) == sorted(s.value for s in TaskState)


def test_every_exit_code_is_documented() -> None:
    rows = table((DOCS / "troubleshooting.md").read_text(), "## Exit codes")
    documented = {int(r[0]): code(r[1]) for r in rows}
    assert documented == {c.value: c.name for c in ExitCode}


def test_every_command_has_a_section_and_status_json_keys_are_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    headings = re.findall(r"^## `lauf-dvc (\w+)", text, re.M)
    assert headings == list(COMMANDS)
    keys = [code(r[0]) for r in table(text, "### `--json`")]
    assert tuple(keys) == STATUS_KEYS
