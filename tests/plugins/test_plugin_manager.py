"""The plugin manager and lauf's error policy for hooks, with throwaway plugins."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pluggy
import pytest
from plugin_helpers import stage

from lauf_dvc.errors import ConfigError, ExitCode, PluginError
from lauf_dvc.fingerprint import Fingerprint, FingerprintContext, diff
from lauf_dvc.hookspecs import hookimpl
from lauf_dvc.plugins import Hooks, describe_plugins, make_plugin_manager, register


class Recorder:
    """A notification plugin that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def lauf_stage_started(self, stage: Any, worker: str) -> None:
        self.calls.append(("lauf_stage_started", dict(stage=stage.address, worker=worker)))

    @hookimpl
    def lauf_stage_finished(self, stage: Any, outcome: str, exit_code: int | None) -> None:
        # a subset of the spec's arguments is enough
        self.calls.append(("lauf_stage_finished", dict(outcome=outcome, exit_code=exit_code)))

    @hookimpl
    def lauf_task_state_changed(self, task_id: str, old: str | None, new: str) -> None:
        self.calls.append(("lauf_task_state_changed", dict(task_id=task_id, old=old, new=new)))

    @hookimpl
    def lauf_pipeline_synced(self, invalidated: dict[str, str], root: Path) -> None:
        self.calls.append(("lauf_pipeline_synced", dict(invalidated=invalidated, root=root)))


class Broken:
    """Raises from every notification hook."""

    @hookimpl
    def lauf_stage_started(self, stage: Any) -> None:
        raise RuntimeError("notifier\nis down")

    @hookimpl
    def lauf_task_state_changed(self, task_id: str) -> None:
        raise KeyError(task_id)


class RegistryFingerprinter:
    """Fingerprints a stage by the model-registry version its `registry.txt` names."""

    name = "registry"
    version = "1"

    def fingerprint(self, stage: Any, ctx: FingerprintContext) -> Fingerprint:
        text = (ctx.root / "registry.txt").read_text().strip()
        return Fingerprint(self.name, self.version, {"cmd": "|".join(stage.cmd), "model": text})


class RegistryPlugin:
    @hookimpl
    def lauf_fingerprinters(self) -> list[RegistryFingerprinter]:
        return [RegistryFingerprinter()]


# -- the manager ---------------------------------------------------------------------------


def test_builtins_are_ordinary_plugins(pm: pluggy.PluginManager) -> None:
    rows = {r["name"]: r for r in describe_plugins(pm)}
    assert rows["dvc"] == dict(name="dvc", hooks=["lauf_fingerprinters"], source="builtin")
    assert rows["xxhash"]["source"] == "builtin"
    assert set(Hooks(pm).fingerprinters()) >= {"dvc", "xxhash"}


def test_each_manager_is_fresh(pm: pluggy.PluginManager) -> None:
    register(pm, Recorder(), "recorder")
    other = make_plugin_manager()
    assert pm.has_plugin("recorder") and not other.has_plugin("recorder")
    assert other is not pm


def test_throwaway_fingerprinter_changes_the_fingerprint(
    pm: pluggy.PluginManager, tmp_path: Path
) -> None:
    register(pm, RegistryPlugin(), "registry-plugin")
    hooks = Hooks(pm)
    assert hooks.plugin_of("registry") == "registry-plugin"
    (tmp_path / "registry.txt").write_text("resnet v1\n")
    train = stage()
    with FingerprintContext(tmp_path, stat_cache=None) as ctx:
        before = hooks.fingerprint(train, ctx, "registry")
    (tmp_path / "registry.txt").write_text("resnet v2\n")
    with FingerprintContext(tmp_path, stat_cache=None) as ctx:
        after = hooks.fingerprint(train, ctx, "registry")
    assert before.label == "registry@1"
    assert after != before
    assert diff(before, after) == ["model changed"]
    rows = {r["name"]: r for r in describe_plugins(pm)}
    assert rows["registry-plugin"]["source"] == f"registered in code: {__name__}"


def test_blocked_plugin_is_never_called(hooks: Hooks) -> None:
    pm = make_plugin_manager(disabled=["spy"])
    spy, seen = Recorder(), Recorder()
    assert register(pm, spy, "spy") is None
    register(pm, seen, "seen")
    Hooks(pm).stage_started(stage(), worker="w1")
    assert spy.calls == [] and len(seen.calls) == 1
    assert {"name": "spy", "hooks": [], "source": "blocked"} in describe_plugins(pm)


def test_blocked_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAUF_DVC_DISABLE_PLUGINS", " xxhash , other")
    hooks = Hooks(make_plugin_manager(disabled=["dvc"]))
    assert "xxhash" not in hooks.fingerprinters() and "dvc" not in hooks.fingerprinters()
    with pytest.raises(ConfigError, match="unknown fingerprinter 'xxhash'"):
        hooks.fingerprinter("xxhash")


def test_blocked_entry_point_is_not_even_imported() -> None:
    code = (
        "import sys; from lauf_dvc.plugins import make_plugin_manager as m; pm = m(); "
        "print(pm.has_plugin('jsonlog'), 'lauf_dvc_jsonlog' in sys.modules)"
    )
    env = {"LAUF_DVC_DISABLE_PLUGINS": "jsonlog", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


# -- notifications ---------------------------------------------------------------------------


def test_every_notification_reaches_plugins(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    rec = Recorder()
    register(pm, rec, "recorder")
    hooks = Hooks(pm)
    train = stage()
    hooks.task_state_changed("train", "pending", "running", "claimed", "w1", None)
    hooks.stage_started(train, worker="w1")
    hooks.stage_finished(train, outcome="ran", duration=1.5, exit_code=0, worker="w1")
    hooks.pipeline_synced({"train": "params.yaml:train.lr 0.1 -> 0.01"}, tmp_path)
    assert rec.calls == [
        ("lauf_task_state_changed", dict(task_id="train", old="pending", new="running")),
        ("lauf_stage_started", dict(stage="train", worker="w1")),
        ("lauf_stage_finished", dict(outcome="ran", exit_code=0)),
        (
            "lauf_pipeline_synced",
            dict(invalidated={"train": "params.yaml:train.lr 0.1 -> 0.01"}, root=tmp_path),
        ),
    ]


def test_raising_plugin_is_reported_by_name_and_others_still_run(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    before, after = Recorder(), Recorder()
    register(pm, before, "before")
    register(pm, Broken(), "broken")
    register(pm, after, "after")
    hooks = Hooks(pm)
    with caplog.at_level(logging.WARNING, logger="lauf_dvc.plugins"):
        assert hooks.notify("lauf_stage_started", stage=stage(), worker="w1") == 1
        hooks.stage_started(stage(), worker="w1")  # again: counted, not warned again
        hooks.task_state_changed("train", None, "pending")
    assert len(before.calls) == len(after.calls) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "plugin 'broken' failed in lauf_stage_started: RuntimeError: notifier is down "
        "(ignored; lauf-dvc's state is unaffected)",
        "plugin 'broken' failed in lauf_task_state_changed: KeyError: 'train' "
        "(ignored; lauf-dvc's state is unaffected)",
    ]
    assert hooks.failures == {("broken", "lauf_stage_started"): 2,
                              ("broken", "lauf_task_state_changed"): 1}  # fmt: skip


def test_notify_checks_lauf_passes_every_argument(hooks: Hooks) -> None:
    with pytest.raises(TypeError, match="lauf_stage_started takes"):
        hooks.notify("lauf_stage_started", stage=stage())


# -- fingerprinter errors ---------------------------------------------------------------------


class Raising:
    name = "flaky"
    version = "1"

    def fingerprint(self, stage: Any, ctx: FingerprintContext) -> Fingerprint:
        raise OSError("registry unreachable")


class WrongLabel(Raising):
    name = "liar"

    def fingerprint(self, stage: Any, ctx: FingerprintContext) -> Fingerprint:
        return Fingerprint("xxhash", "1", {})


class Provider:
    def __init__(self, *provided: object) -> None:
        self.provided = list(provided)

    @hookimpl
    def lauf_fingerprinters(self) -> list[object]:
        return self.provided


def test_raising_fingerprinter_is_a_plugin_error(pm: pluggy.PluginManager, tmp_path: Path) -> None:
    register(pm, Provider(Raising(), WrongLabel()), "acme")
    hooks = Hooks(pm)
    with FingerprintContext(tmp_path, stat_cache=None) as ctx:
        with pytest.raises(PluginError) as err:
            hooks.fingerprint(stage(), ctx, "flaky")
        assert err.value.plugin == "acme"
        assert err.value.exit_code == ExitCode.PLUGIN == 6
        assert str(err.value) == (
            "plugin 'acme': fingerprinter 'flaky' failed on stage train: "
            "OSError: registry unreachable; fix or update the plugin, or choose another "
            "fingerprinter (vars lauf.fingerprint, meta.lauf.fingerprint)"
        )
        with pytest.raises(PluginError, match=r"returned xxhash@1 .* expected .* liar@1"):
            hooks.fingerprint(stage(), ctx, "liar")


def test_bad_fingerprinter_registrations(pm: pluggy.PluginManager) -> None:
    register(pm, Provider(object()), "junk")
    with pytest.raises(PluginError, match="plugin 'junk': lauf_fingerprinters returned"):
        Hooks(pm).fingerprinters()
    pm = make_plugin_manager()
    register(pm, Provider(RegistryFingerprinter()), "one")
    register(pm, Provider(RegistryFingerprinter()), "two")
    with pytest.raises(PluginError, match="'registry' is also provided by plugin 'one'"):
        Hooks(pm).fingerprinters()


def test_unknown_fingerprinter_is_a_config_error(hooks: Hooks) -> None:
    with pytest.raises(ConfigError, match=r"unknown fingerprinter 'gitblob' \(available: .*dvc"):
        hooks.fingerprinter("gitblob")


# -- invalid plugins ---------------------------------------------------------------------------


class Typo:
    @hookimpl
    def lauf_stage_startd(self, stage: Any) -> None: ...


class ExtraArgument:
    @hookimpl
    def lauf_stage_started(self, stage: Any, colour: str) -> None: ...


class Wrapper:
    @hookimpl(wrapper=True)
    def lauf_stage_started(self, stage: Any) -> Any:
        return (yield)


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (Typo(), "implements lauf_stage_startd, which is not a lauf-dvc hook"),
        (ExtraArgument(), "colour"),
        (Wrapper(), "wraps lauf_stage_started"),
    ],
)
def test_invalid_plugins_are_rejected_by_name(
    pm: pluggy.PluginManager, plugin: object, message: str
) -> None:
    with pytest.raises(PluginError, match=f"plugin 'bad': .*{message}"):
        register(pm, plugin, "bad")
    assert not pm.has_plugin("bad")


# -- installed plugins that are broken ---------------------------------------------------------


def install_fake_dist(site: Path, name: str, entry_point: str, code: str | None = None) -> None:
    """A distribution importlib.metadata finds on sys.path, as pip would leave it."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lauf_dvc]\n{name} = {entry_point}\n")
    if code is not None:
        (site / f"{entry_point}.py").write_text(code)


def test_entry_point_that_fails_to_import_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_dist(tmp_path / "site", "broken", "lauf_test_no_such_module")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(PluginError) as err:
        make_plugin_manager()
    assert err.value.plugin == "broken"
    assert "cannot load it: ModuleNotFoundError" in str(err.value)
    assert "LAUF_DVC_DISABLE_PLUGINS=broken" in str(err.value)
    monkeypatch.setenv("LAUF_DVC_DISABLE_PLUGINS", "broken")
    assert make_plugin_manager().is_blocked("broken")


def test_entry_point_with_a_misspelt_hook_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = (
        "from lauf_dvc.hookspecs import hookimpl\n\n"
        "@hookimpl\ndef lauf_stage_finshed(stage):\n    pass\n"
    )
    install_fake_dist(tmp_path / "site", "typo", "lauf_test_typo_plugin", code)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(PluginError, match="plugin 'typo': implements lauf_stage_finshed"):
        make_plugin_manager()
