"""The reference pages say what the code does: every setting, state transition, exit code,
command and ``status --json`` key is documented, and nothing documented is not there."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml
from cli_helpers import iter_blocks

from lauf_dvc.cli import COMMANDS, STATUS_KEYS
from lauf_dvc.config import PROJECT_KEYS, STAGE_KEYS, ProjectSettings, StageSettings
from lauf_dvc.errors import ExitCode
from lauf_dvc.states import TRANSITIONS, TaskState

DOCS = Path(__file__).resolve().parents[1] / "docs"


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
