"""The plugin manager, and calling hooks with lauf's error policy.

:func:`make_plugin_manager` builds a fresh manager each time (there is no global one):
the built-in plugins first, registered like any other plugin, then every plugin of the
``lauf_dvc`` entry-point group. :class:`Hooks` calls the hooks on it: a notification
that raises is a warning naming the plugin; a fingerprinter that raises is a
:class:`~lauf_dvc.errors.PluginError` naming the plugin.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from lauf_dvc import hookspecs
from lauf_dvc.config import read_setting
from lauf_dvc.errors import ConfigError, LaufError, PluginError

if TYPE_CHECKING:
    from lauf_dvc.dvc.load.pipeline import StageInfo
    from lauf_dvc.fingerprint import Fingerprint, FingerprintContext, Fingerprinter
    from lauf_dvc.scheduler.staleness import Observed

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "LAUF_DVC_DISABLE_PLUGINS"

#: Built-in plugins: name -> module. Blocked and described like any other plugin.
BUILTIN_PLUGINS: dict[str, str] = {
    "dvc": "lauf_dvc.builtin.dvc_fingerprint",
    "xxhash": "lauf_dvc.builtin.xxhash_fingerprint",
}


# -- building a manager ------------------------------------------------------------------


def blocked_names(
    disabled: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """``disabled`` plus the comma-separated names in ``LAUF_DVC_DISABLE_PLUGINS``."""
    names = [*disabled, *read_setting("disable_plugins", environ=environ)]
    return sorted({n.strip() for n in names if n.strip()})


def make_plugin_manager(
    disabled: Iterable[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
    entry_points: bool = True,
) -> pluggy.PluginManager:
    """A fresh manager: built-in plugins, then the ``lauf_dvc`` entry-point group.

    Plugins named in ``disabled`` or in ``LAUF_DVC_DISABLE_PLUGINS`` (comma-separated)
    are blocked: never imported from an entry point, never registered, never called.
    ``entry_points=False`` leaves out installed plugins (built-ins only).

    Raises:
        PluginError: a plugin fails to import, implements an unknown ``lauf_*`` hook,
            has a hook argument the spec does not have, or wraps a notification hook.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked_names(disabled, environ):
        pm.set_blocked(name)
    for name, module in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            register(pm, importlib.import_module(module), name)
    if entry_points:
        _load_entry_points(pm)
    return pm


def register(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> str | None:
    """Register ``plugin`` (a module, class or object with hookimpls) as lauf does its own.

    Returns the name it was registered under, ``None`` if that name is blocked.

    Raises:
        PluginError: invalid hook implementations (see :func:`make_plugin_manager`).
    """
    label = name or pm.get_canonical_name(plugin)
    try:
        registered = pm.register(plugin, name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(label, _one_line(exc)) from None
    except ValueError as exc:  # name or object registered twice
        raise PluginError(label, _one_line(exc)) from None
    if registered is not None:
        try:
            _check(pm, plugin, registered)
        except PluginError:
            pm.unregister(plugin)
            raise
    return registered


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:
        name = _first_unloaded_entry_point(pm)
        what = (
            _one_line(exc)
            if isinstance(exc, pluggy.PluginValidationError)
            else f"cannot load it: {type(exc).__name__}: {_one_line(exc)}"
        )
        raise PluginError(
            name, f"{what}; fix or uninstall it, or block it with {DISABLE_ENV}={name}"
        ) from None
    for plugin, _ in pm.list_plugin_distinfo():
        _check(pm, plugin, pm.get_name(plugin) or repr(plugin))


def _first_unloaded_entry_point(pm: pluggy.PluginManager) -> str:
    """The entry point pluggy failed on: the first neither registered nor blocked."""
    import importlib.metadata

    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            known = pm.has_plugin(ep.name) or pm.is_blocked(ep.name)
            if ep.group == ENTRY_POINT_GROUP and not known:
                return ep.name
    return "<unknown entry point>"


def _check(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Unknown ``lauf_*`` hooks and wrappers of notification hooks are errors."""
    for caller in pm.get_hookcallers(plugin) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            if caller.spec is None and caller.name.startswith("lauf_"):
                raise PluginError(
                    name,
                    f"implements {caller.name}, which is not a lauf-dvc hook "
                    "(see docs/plugins.md for the hooks there are)",
                )
            if (impl.wrapper or impl.hookwrapper) and caller.name in hookspecs.NOTIFICATION_HOOKS:
                raise PluginError(
                    name,
                    f"wraps {caller.name}: notification hooks are called one plugin at "
                    "a time and cannot be wrapped; drop wrapper=True",
                )


# -- describing --------------------------------------------------------------------------


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Every plugin the manager knows, blocked ones included, sorted by name.

    Each item: ``name``; ``hooks``, the sorted hook names it implements; ``source``:
    ``"builtin"``, ``"<distribution> <version>"`` for an entry point, ``"blocked"``, or
    ``"registered in code: <module>"``.
    """
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            rows.append(dict(name=name, hooks=[], source="blocked"))
            continue
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        rows.append(dict(name=name, hooks=hooks, source=_source(name, plugin, dists)))
    return sorted(rows, key=lambda r: r["name"])


def _source(name: str, plugin: object, dists: Mapping[int, Any]) -> str:
    if isinstance(plugin, ModuleType) and BUILTIN_PLUGINS.get(name) == plugin.__name__:
        return "builtin"
    dist = dists.get(id(plugin))
    if dist is not None:
        return f"{dist.project_name} {dist.version}"
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    return f"registered in code: {module}"


# -- calling hooks -----------------------------------------------------------------------


class Hooks:
    """lauf's hooks on a plugin manager, called with lauf's error policy.

    Notifications (``task_state_changed`` ...) never raise: each implementation is
    called on its own, in pluggy's order, and one that raises is logged as a one-line
    warning naming the plugin (once per plugin and hook; later failures at debug level)
    and counted in :attr:`failures`. Fingerprinting raises :class:`PluginError`.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.failures: Counter[tuple[str, str]] = Counter()  # (plugin, hook) -> count
        self._fingerprinters: dict[str, tuple[Fingerprinter, str]] | None = None

    # -- notifications -------------------------------------------------------------------

    def task_state_changed(
        self,
        task_id: str,
        old: str | None,
        new: str,
        reason: str | None = None,
        worker: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.notify(
            "lauf_task_state_changed",
            task_id=task_id,
            old=None if old is None else str(old),
            new=str(new),
            reason=reason,
            worker=worker,
            fingerprint=fingerprint,
        )

    def pipeline_synced(self, invalidated: Mapping[str, str], root: str | Path) -> None:
        self.notify("lauf_pipeline_synced", invalidated=dict(invalidated), root=Path(root))

    def stage_started(self, stage: StageInfo, worker: str) -> None:
        self.notify("lauf_stage_started", stage=stage, worker=worker)

    def stage_finished(
        self,
        stage: StageInfo,
        outcome: str,
        duration: float,
        exit_code: int | None,
        worker: str,
    ) -> None:
        self.notify(
            "lauf_stage_finished",
            stage=stage,
            outcome=outcome,
            duration=duration,
            exit_code=exit_code,
            worker=worker,
        )

    def notify(self, hook: str, **kwargs: Any) -> int:
        """Call every implementation of notification ``hook``; returns how many raised."""
        caller = getattr(self.pm.hook, hook)
        expected = set(caller.spec.argnames) if caller.spec else set()
        if set(kwargs) != expected:  # a lauf bug, not a plugin's
            raise TypeError(f"{hook} takes {sorted(expected)}, got {sorted(kwargs)}")
        failed = 0
        for impl in reversed(caller.get_hookimpls()):  # pluggy's call order
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception as exc:
                failed += 1
                self._report(impl.plugin_name, hook, exc)
        return failed

    def _report(self, plugin: str, hook: str, exc: Exception) -> None:
        self.failures[plugin, hook] += 1
        message = f"plugin {plugin!r} failed in {hook}: {type(exc).__name__}: {_one_line(exc)}"
        if self.failures[plugin, hook] == 1:
            log.warning("%s (ignored; lauf-dvc's state is unaffected)", message)
        else:
            log.debug("%s (failure %d)", message, self.failures[plugin, hook])

    # -- fingerprinting ------------------------------------------------------------------

    def fingerprinters(self) -> dict[str, Fingerprinter]:
        """Every registered fingerprinter by name (asked of the plugins once per Hooks).

        Raises:
            PluginError: a plugin raised, returned something that is not a fingerprinter,
                or a name is provided twice.
        """
        return {name: fp for name, (fp, _) in self._registry().items()}

    def fingerprinter(self, name: str) -> Fingerprinter:
        """The fingerprinter users selected by ``name``.

        Raises:
            ConfigError: no plugin provides ``name``.
        """
        return self._entry(name)[0]

    def plugin_of(self, name: str) -> str:
        """The plugin providing fingerprinter ``name``."""
        return self._entry(name)[1]

    def fingerprint(self, stage: StageInfo, ctx: FingerprintContext, name: str) -> Fingerprint:
        """``stage``'s fingerprint by fingerprinter ``name``.

        Raises:
            ConfigError: unknown fingerprinter name.
            PluginError: the fingerprinter raised, or returned something other than a
                Fingerprint of its own name and version. A :class:`LaufError` it raises
                (e.g. a PipelineError for an unreadable params file) passes unchanged.
        """
        from lauf_dvc.fingerprint import Fingerprint

        fingerprinter, plugin = self._entry(name)
        try:
            result = fingerprinter.fingerprint(stage, ctx)
        except LaufError:
            raise
        except Exception as exc:
            raise PluginError(
                plugin,
                f"fingerprinter {name!r} failed on stage {stage.address}: "
                f"{type(exc).__name__}: {_one_line(exc)}; fix or update the plugin, or "
                "choose another fingerprinter (vars lauf.fingerprint, meta.lauf.fingerprint)",
            ) from exc
        expected = f"{fingerprinter.name}@{fingerprinter.version}"
        if not isinstance(result, Fingerprint) or result.label != expected:
            got = result.label if isinstance(result, Fingerprint) else type(result).__name__
            raise PluginError(
                plugin,
                f"fingerprinter {name!r} returned {got} for stage {stage.address}, "
                f"expected a Fingerprint labelled {expected}",
            )
        return result

    def observe(
        self, stages: Sequence[StageInfo], ctx: FingerprintContext, name: str
    ) -> dict[str, Observed] | None:
        """What fingerprinter ``name`` finds of ``stages`` now, by its own ``observe``
        (:class:`~lauf_dvc.fingerprint.context.Fingerprinter`); None if it has none (then
        each stage's :meth:`fingerprint` is compared with the stored one).

        Raises:
            ConfigError: unknown fingerprinter name.
            PluginError: the fingerprinter raised, or left a stage out.
        """
        fingerprinter, plugin = self._entry(name)
        method = getattr(fingerprinter, "observe", None)
        if method is None:
            return None
        try:
            found = dict(method(stages, ctx))
        except LaufError:
            raise
        except Exception as exc:
            raise PluginError(
                plugin,
                f"fingerprinter {name!r} failed to observe {len(stages)} stage(s): "
                f"{type(exc).__name__}: {_one_line(exc)}; fix or update the plugin, or "
                "choose another fingerprinter (vars lauf.fingerprint, meta.lauf.fingerprint)",
            ) from exc
        missing = [s.address for s in stages if s.address not in found]
        if missing:
            raise PluginError(plugin, f"fingerprinter {name!r} observed no {missing[0]}")
        return {s.address: found[s.address] for s in stages}

    def completed(
        self, stage: StageInfo, ctx: FingerprintContext, name: str, record: Any
    ) -> Fingerprint | None:
        """The fingerprint ``stage`` completes with: the fingerprinter's ``completed``
        (from ``record``, what the run wrote: its dvc.lock entry) if it has one, else
        :meth:`fingerprint` computed now from the files the stage just wrote."""
        fingerprinter, plugin = self._entry(name)
        method = getattr(fingerprinter, "completed", None)
        if method is None:
            return self.fingerprint(stage, ctx, name)
        try:
            result: Fingerprint | None = method(stage, record, ctx)
        except LaufError:
            raise
        except Exception as exc:
            why = f"{type(exc).__name__}: {_one_line(exc)}"
            raise PluginError(
                plugin, f"fingerprinter {name!r} failed on stage {stage.address}: {why}"
            ) from exc
        return result

    def _entry(self, name: str) -> tuple[Fingerprinter, str]:
        registry = self._registry()
        if name not in registry:
            known = ", ".join(sorted(registry)) or "none"
            raise ConfigError(
                f"unknown fingerprinter {name!r} (available: {known}); install the plugin "
                "providing it, or fix vars lauf.fingerprint / meta.lauf.fingerprint"
            )
        return registry[name]

    def _registry(self) -> dict[str, tuple[Fingerprinter, str]]:
        if self._fingerprinters is None:
            self._fingerprinters = _collect_fingerprinters(self.pm)
        return self._fingerprinters


def _collect_fingerprinters(pm: pluggy.PluginManager) -> dict[str, tuple[Fingerprinter, str]]:
    from lauf_dvc.fingerprint import Fingerprinter

    found: dict[str, tuple[Fingerprinter, str]] = {}
    # registration order: built-ins first, so a later plugin reusing a name is the culprit
    for impl in pm.hook.lauf_fingerprinters.get_hookimpls():
        plugin = impl.plugin_name
        try:
            provided = impl.function() or ()
        except Exception as exc:
            raise PluginError(
                plugin, f"lauf_fingerprinters raised {type(exc).__name__}: {_one_line(exc)}"
            ) from exc
        if not isinstance(provided, Sequence):
            raise PluginError(plugin, f"lauf_fingerprinters must return a list, got {provided!r}")
        for item in provided:
            if not isinstance(item, Fingerprinter) or not isinstance(item.name, str):
                raise PluginError(
                    plugin,
                    f"lauf_fingerprinters returned {item!r}, which lacks a str "
                    "`name`, a `version` or a `fingerprint(stage, ctx)` method",
                )
            if item.name in found:
                raise PluginError(
                    plugin,
                    f"fingerprinter {item.name!r} is also provided by plugin "
                    f"{found[item.name][1]!r}; block one of them ({DISABLE_ENV})",
                )
            found[item.name] = (item, plugin)
    return found


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
