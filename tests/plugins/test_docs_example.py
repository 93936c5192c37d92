"""The example plugin in docs/plugins.md works as printed."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pluggy
from plugin_helpers import stage

from lauf_dvc.fingerprint import FingerprintContext, diff
from lauf_dvc.plugins import Hooks, describe_plugins, register

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HELLO_BLOB = "ce013625030ba8dba906f756967f9e9ca394464a"  # git hash-object of "hello\n"


def example_module() -> types.ModuleType:
    text = DOCS.read_text()
    (code,) = re.findall(r"```python\n(# src/lauf_dvc_gitblob/__init__\.py\n.*?)```", text, re.S)
    module = types.ModuleType("lauf_dvc_gitblob")
    exec(compile(code, str(DOCS), "exec"), module.__dict__)
    return module


def test_documented_plugin_fingerprints_by_git_blob_id(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    register(pm, example_module(), "gitblob")
    assert {"name": "gitblob", "hooks": ["lauf_fingerprinters"],
            "source": "registered in code: lauf_dvc_gitblob"} in describe_plugins(pm)  # fmt: skip
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("hello\n")
    (tmp_path / "in.txt").write_text("hello\n")
    (tmp_path / "params.yaml").write_text("lr: 0.1\n")
    train = stage(deps=("in.txt", "data"), outs=("out.txt",), params=("params.yaml:lr",))
    hooks = Hooks(pm)
    with FingerprintContext(tmp_path, stat_cache=None) as ctx:
        before = hooks.fingerprint(train, ctx, "gitblob")
    assert before.parts["dep:in.txt"] == HELLO_BLOB
    assert before.parts["dep:data"].endswith(".dir")
    (tmp_path / "data" / "a.txt").write_text("hello!\n")
    (tmp_path / "params.yaml").write_text("lr: 0.2\n")
    with FingerprintContext(tmp_path, stat_cache=None) as ctx:
        after = hooks.fingerprint(train, ctx, "gitblob")
    assert diff(before, after) == [
        "params.yaml:lr 0.1 -> 0.2",
        "dependency data content changed",
    ]
