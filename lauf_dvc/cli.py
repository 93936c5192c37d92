"""``lauf-dvc``: parse, call, print. The only place that turns errors into exit codes."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from lauf_dvc import termination
from lauf_dvc.dvc.load.plan import ON_ERROR, Selection
from lauf_dvc.errors import ExitCode, LaufError, PipelineError
from lauf_dvc.termination import Terminated

if TYPE_CHECKING:
    from lauf_dvc.dvc.project import Project
    from lauf_dvc.scheduler.store import Store

#: The keys of each stage in ``lauf-dvc status --json``, in order (docs/cli.md).
STATUS_KEYS = ("stage", "state", "stale", "reason", "log")
NO_RUN_YET = "lauf-dvc: no lauf-dvc run recorded yet: run `lauf-dvc repro` first"
EPILOG = "Exit codes: " + ", ".join(f"{c.value} {c.name.lower()}" for c in ExitCode)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lauf-dvc",
        description="Run the stages of a DVC pipeline in parallel workers sharing a database.",
        epilog=EPILOG,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (debug)")
    p.add_argument("--db", help="scheduler database URL (default: SQLite in .dvc/tmp/lauf)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("repro", help="reproduce stages in parallel, like `dvc repro`",
                       description="Reproduce stages in parallel workers. Every option of "
                       "`dvc repro` has DVC's meaning and default.")  # fmt: skip
    r.add_argument("-j", "--jobs", type=_jobs,
                   help="local worker processes, or auto: as many as this host's capacity "
                        "keeps busy (default: 4)")  # fmt: skip
    _resources_option(r)
    _repro_options(r)
    r.add_argument("-i", "--interactive", action="store_true",
                   help="refused: parallel workers cannot ask before each stage")  # fmt: skip
    r.add_argument("--dry", action="store_true", help="print what would run and why")

    w = sub.add_parser("worker", help="join as one worker (e.g. in a SLURM array job)")
    _resources_option(w)
    _repro_options(w)
    w.add_argument("--labels", default="", help="comma-separated labels (e.g. gpu)")
    w.add_argument("--identifier", help="unique worker name (default host:pid:random)")
    w.add_argument("--max-tasks", type=_count, help="stop after running this many stages")
    w.add_argument("--max-idle", type=float, metavar="SECONDS",
                   help="leave after waiting this long with nothing to claim while the "
                        "stages left wait for others (env LAUF_DVC_MAX_IDLE)")  # fmt: skip
    w.add_argument("--no-sync", action="store_true", help=argparse.SUPPRESS)  # join the run
    w.add_argument("--since", type=float, help=argparse.SUPPRESS)  # the run's start

    s = sub.add_parser("status", help="every stage, its state and why")
    s.add_argument("targets", nargs="*")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    wa = sub.add_parser("watch", help="live view of workers and stages, from the database")
    wa.add_argument("--once", action="store_true", help="print one snapshot and exit")
    wa.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                    help="seconds between refreshes (default: 1)")  # fmt: skip

    h = sub.add_parser("history", help="the audit trail of one stage")
    h.add_argument("stage")
    h.add_argument("--json", action="store_true")

    x = sub.add_parser("reset", help="put failed stages (or the named ones) back to pending")
    x.add_argument("stages", nargs="*")
    x.add_argument("--failed", action="store_true", help="every failed or killed stage")

    pr = sub.add_parser("prune", help="keep only the latest events of each stage")
    pr.add_argument("--keep", type=_count, default=20,
                    help="events kept per stage (at least 1; default 20)")  # fmt: skip

    su = sub.add_parser("submit", help="write this repository's SLURM array job, sbatch it",
                        description="Write docs/slurm.md's array job script for this "
                        "repository (its database and lock settings included) and submit "
                        "it with sbatch. Targets and options are `lauf-dvc worker`'s; "
                        "without targets: every pipeline (-P).")  # fmt: skip
    su.add_argument("--workers", type=int, required=True, metavar="N",
                    help="array tasks: one worker each")  # fmt: skip
    su.add_argument("--time", default="12:00:00", help="time limit of each task (12:00:00)")
    su.add_argument("--partition", help="SLURM partition")
    su.add_argument("--account", help="SLURM account")
    su.add_argument("--cpus-per-task", type=int, metavar="N", help="what one stage needs")
    su.add_argument("--mem", help="memory of each task (e.g. 16G)")
    su.add_argument("--job-name", default="lauf-dvc", help="SLURM job name (lauf-dvc)")
    su.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                    help="one more #SBATCH line (--sbatch=--qos=long); repeatable")  # fmt: skip
    su.add_argument("--labels", default="", help="the workers' labels (e.g. gpu)")
    su.add_argument("--max-idle", type=float, default=600.0, metavar="SECONDS",
                    help="a worker leaves after this long with nothing to claim (600)")  # fmt: skip
    su.add_argument("--print", action="store_true", dest="print_only",
                    help="print the script and do not submit it")  # fmt: skip
    _repro_options(su)

    pl = sub.add_parser("plugins", help="every plugin, where it comes from, its hooks")
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    rp = sub.add_parser("report", help="what a run did: timeline, critical path, failures",
                        description="A run's stages per worker over time, its critical "
                        "path, what ran and why, its failures and totals, from the "
                        "database's audit trail: a summary, or one HTML page.")  # fmt: skip
    rp.add_argument("--html", metavar="FILE", help="write a self-contained HTML page there")
    rp.add_argument("--run", type=_which_run, default="last", metavar="last|all|N",
                    help="the latest run (default), every run, or the Nth (1: first)")  # fmt: skip

    dg = sub.add_parser("dag", help="the pipeline's graph, each stage with its state")
    dg.add_argument("targets", nargs="*",
                    help="them and what they depend on (default: every stage)")  # fmt: skip
    form = dg.add_mutually_exclusive_group()
    form.add_argument("--mermaid", action="store_true", help="a Mermaid flowchart")
    form.add_argument("--dot", action="store_true", help="Graphviz dot")
    return p


def _count(text: str) -> int:
    """An argparse type: an integer >= 1 (else a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _jobs(text: str) -> int | str:
    """An argparse type: ``auto`` or an integer >= 1."""
    return "auto" if text.strip().lower() == "auto" else _count(text)


def _resources_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resources", metavar="NAME=AMOUNT,...",
                   help="this host's capacity, in place of what is detected: e.g. "
                        "cpus=32,gpus=4,mem=128G,licence=1 (env LAUF_DVC_RESOURCES)")  # fmt: skip


def _which_run(text: str) -> str | int:
    """An argparse type: ``last``, ``all`` or a run's number (>= 1)."""
    if text in ("last", "all"):
        return text
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected last, all or a run number >= 1, got {text!r}")
    return int(text)


def _repro_options(p: argparse.ArgumentParser) -> None:
    """``dvc repro``'s targets and options, with its names, meanings and defaults."""
    p.add_argument("targets", nargs="*",
                   help="stages, dvc.yaml or .dvc files, relative to the current directory "
                        "(default: the dvc.yaml here, as dvc repro)")  # fmt: skip
    flag = p.add_argument
    flag("-f", "--force", action="store_true", help="reproduce even if nothing changed")
    flag("-s", "--single-item", action="store_true",
         help="only the targets, without their dependencies")  # fmt: skip
    flag("-p", "--pipeline", action="store_true",
         help="the whole pipeline each target belongs to")  # fmt: skip
    flag("-P", "--all-pipelines", action="store_true", help="every pipeline of the repository")
    flag("-R", "--recursive", action="store_true", help="every stage in the target directories")
    flag("--downstream", action="store_true",
         help="start from the targets: them and what depends on them")  # fmt: skip
    flag("--force-downstream", action="store_true",
         help="reproduce everything below a reproduced stage, changed or not")  # fmt: skip
    flag("--pull", action="store_true", help="pull missing data and run-cache entries first")
    flag("--allow-missing", action="store_true",
         help="skip stages whose only change is missing data")  # fmt: skip
    flag("-k", "--keep-going", action="store_const", default="fail", const="keep-going",
         dest="on_error", help="on a failure, go on with what does not depend on it")  # fmt: skip
    flag("--ignore-errors", action="store_const", default="fail", const="ignore",
         dest="on_error", help="ignore failures: what depends on them runs too")  # fmt: skip
    flag("--glob", action="store_true", help="targets may contain shell-style wildcards")
    flag("--no-commit", action="store_true", help="do not put outputs into the cache")
    flag("--no-run-cache", action="store_true",
         help="run commands even if the run cache has their results")  # fmt: skip


def entry() -> NoReturn:
    """The ``lauf-dvc`` command: :func:`main`, then a quick exit.

    Python's own exit tears the interpreter down object by object (DVC, SQLAlchemy and
    rich loaded: about 0.25 s, a quarter of a one-stage run). Once :func:`main` has
    returned, nothing is left to do that the teardown would do: the database is
    disposed, files are closed. So the exit handlers run (logging's flush, and any
    other), the standard streams are flushed, and the process ends. Where another
    non-daemon thread still runs, Python's exit waits for it as always."""
    code = main()
    main_thread = threading.main_thread()
    if any(t is not main_thread and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # Python's own exit: status 120 when stdout fails
            code = code or 120
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:  # from install() on, a SIGTERM may arrive during any import
        if args.command in ("repro", "worker"):
            termination.install()
        from lauf_dvc.dvc.logs import tame_dvc_logging

        tame_dvc_logging(level)
        return int(COMMANDS[args.command](args))
    except LaufError as exc:
        with contextlib.suppress(OSError):  # a full disk under stderr: keep the exit code
            print(f"lauf-dvc: error: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("lauf-dvc: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except Terminated as exc:
        print(f"lauf-dvc: terminated ({exc.name})", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `lauf-dvc status --json | head`: the reader had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return int(ExitCode.OK)
    except Exception as exc:  # still one line; the traceback with -v
        if args.verbose:
            traceback.print_exc()
        print(f"lauf-dvc: {_unexpected(exc)}", file=sys.stderr)
        return int(ExitCode.OS_ERROR if isinstance(exc, OSError) else ExitCode.INTERNAL)


def _unexpected(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError):  # permissions, a full disk, a vanished mount
        where = f": {exc.filename}" if exc.filename else ""
        return f"error: {exc.strerror or text}{where}: check permissions and free space"
    name = type(exc).__name__
    return f"internal error: {name}: {text}; run with -v for the traceback and report it"


def _settings(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {"db": args.db, **extra}


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(
        targets=tuple(args.targets), recursive=args.recursive, glob=args.glob,
        single_item=args.single_item, pipeline=args.pipeline,
        all_pipelines=args.all_pipelines, downstream=args.downstream, cwd=os.getcwd(),
    )  # fmt: skip


def _policy(args: argparse.Namespace) -> str | None:
    """The failure policy ``-k``/``--ignore-errors`` ask for; None: the settings' (stop)."""
    return None if args.on_error == "fail" else ON_ERROR[args.on_error]


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"lauf-dvc: warning: {line}", file=sys.stderr)


def cmd_repro(args: argparse.Namespace) -> int:
    from lauf_dvc.dvc.load.pipeline import missing_inputs
    from lauf_dvc.dvc.load.plan import from_flags
    from lauf_dvc.dvc.project import open_project, reconcile
    from lauf_dvc.dvc.repro import repro
    from lauf_dvc.progress import ProgressView, print_dry_run, print_summary, requires_text

    if args.interactive:
        print("lauf-dvc: error: -i/--interactive is not supported: stages run in parallel "
              "workers, which cannot ask before each one; use `dvc repro -i`",
              file=sys.stderr)  # fmt: skip
        return ExitCode.USAGE
    policy = _policy(args)
    cli = _settings(args, jobs=args.jobs, failure_policy=policy, resources=args.resources)
    project = open_project(cli=cli, prefetch_verdicts=args.dry,
                           selection=_selection(args))  # fmt: skip
    _warn(missing_inputs(project.root, project.stages))
    if args.dry:
        store = project.store() if project.has_database() else None  # a look creates nothing
        print_dry_run(project, reconcile(project, store, worker=None, force=args.force, dry=True))
        return ExitCode.OK
    needs = {a: ss.requires for a, ss in project.stage_settings.items() if ss.requires}

    def unrunnable(todo: list[Any], unfit: Mapping[str, str]) -> None:  # said at once
        _warn([f"stage {r.id!r}: {requires_text(needs[r.id])}, which the local workers of "
               f"`lauf-dvc repro` do not have: it runs only if a `lauf-dvc worker --labels "
               f"{','.join(needs[r.id])}` joins" for r in todo if r.id in needs])  # fmt: skip
        _warn([f"stage {r.id!r}: it {unfit[r.id]}: it runs only if a `lauf-dvc worker` on a "
               "host with more joins" for r in todo
               if r.id in unfit and r.id not in needs])  # fmt: skip

    view = ProgressView(total=len(project.stages))
    try:
        result = repro(project, jobs=project.settings.jobs, options=from_flags(args),
                       overrides={"failure_policy": policy, "resources": args.resources},
                       on_progress=view.update, on_start=unrunnable)  # fmt: skip
    finally:
        view.close()
    print_summary(result, needs)
    if result.crashed:  # all of a full disk, say: the system's error, not a bug
        io = all(code == ExitCode.OS_ERROR for code in result.worker_codes)
        return ExitCode.OS_ERROR if io else ExitCode.WORKER_CRASHED
    if result.failed:
        return ExitCode.STAGE_FAILED
    return ExitCode.NO_WORKER if result.left else ExitCode.OK


def cmd_worker(args: argparse.Namespace) -> int:
    from lauf_dvc.config import read_setting
    from lauf_dvc.dvc.load.pipeline import missing_inputs
    from lauf_dvc.dvc.load.plan import from_flags
    from lauf_dvc.dvc.project import open_project
    from lauf_dvc.dvc.work import run_worker
    from lauf_dvc.progress import print_worker_event

    cli = _settings(args, failure_policy=_policy(args), resources=args.resources)
    if args.no_sync:  # started by `repro`: join the run its database holds
        project = open_project(cli=cli, from_store=True)
    else:
        project = open_project(cli=cli, selection=_selection(args))
        _warn(missing_inputs(project.root, project.stages))
    labels = frozenset(v.strip() for v in args.labels.split(",") if v.strip())
    never = [a for a, ss in project.stage_settings.items() if not set(ss.requires) <= labels]
    if never:  # said at once; others (with those labels) may take them
        shown = ", ".join(never[:5]) + (" ..." if len(never) > 5 else "")
        _warn([f"this worker (labels: {','.join(sorted(labels)) or 'none'}) cannot take "
               f"{len(never)} stage(s), which require other labels: {shown}"])  # fmt: skip
    max_idle = read_setting("max_idle", args.max_idle)
    report = run_worker(project, identifier=args.identifier, labels=labels,
                        do_sync=not args.no_sync, options=from_flags(args),
                        max_tasks=args.max_tasks, max_idle=max_idle,
                        on_event=print_worker_event)  # fmt: skip
    if report.stopped:
        print(f"lauf-dvc: worker stopped: {report.stopped}", file=sys.stderr)
    elif report.left:
        print(f"lauf-dvc: worker {report.identifier} leaving: {report.left}", file=sys.stderr)
    if report.failed or report.stopped:
        return ExitCode.STAGE_FAILED
    return ExitCode.NO_WORKER if report.stuck else ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    from lauf_dvc.dvc.project import open_project, status_rows
    from lauf_dvc.progress import print_status

    # no targets: every stage, as `dvc status`; targets (from the cwd): them and upstream
    selection = Selection(tuple(args.targets), cwd=os.getcwd()) if args.targets else None
    project = open_project(cli=_settings(args), prefetch_verdicts=True, selection=selection)
    rows = status_rows(project)
    if args.json:  # every key always there, in this order: scripts rely on it
        print(json.dumps([{key: row.get(key) for key in STATUS_KEYS} for row in rows], indent=2))
    else:
        print_status(rows)
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace) -> int:
    from lauf_dvc.progress import Snapshot, live_watch, print_watch

    store = _recorded_store(args)
    if store is None:
        return ExitCode.OK
    try:
        if args.once:
            print_watch(Snapshot.read(store))
        else:
            live_watch(lambda: Snapshot.read(store), max(0.1, args.interval))
    except KeyboardInterrupt:  # how one stops watching: not an interrupted run
        pass
    finally:
        store.dispose()
    return ExitCode.OK


def _recorded_store(args: argparse.Namespace) -> Store | None:
    """The database of the runs, without loading the pipeline; None (and the line that
    says so) if no run was recorded yet. The caller disposes of it."""
    from lauf_dvc.scheduler.store import Store

    project = _settings_only(args)
    if not _recorded(project):
        print(NO_RUN_YET, file=sys.stderr)
        return None
    return Store(project.db_url, lock=project.settings.lock)


def _settings_only(args: argparse.Namespace) -> Project:
    """The project's settings (database, lock) without loading its pipeline (a stage
    that does not parse must not keep anyone from looking at a run)."""
    from lauf_dvc.config import ProjectSettings
    from lauf_dvc.dvc.project import Project, find_root, read_lauf_vars

    root = find_root()
    settings = ProjectSettings.resolve(_settings(args), read_lauf_vars(root), source="dvc.yaml")
    return Project(root, settings, [])


def cmd_history(args: argparse.Namespace) -> int:
    from lauf_dvc.dvc.load.pipeline import LIST_HINT
    from lauf_dvc.dvc.project import open_project
    from lauf_dvc.progress import print_history

    project = open_project((), _settings(args))
    if not _recorded(project):
        if args.stage not in {s.address for s in project.stages}:
            raise PipelineError(f"unknown stage {args.stage!r}: {LIST_HINT}")
        print(NO_RUN_YET, file=sys.stderr)
        if args.json:
            print("[]")
        return ExitCode.OK
    events = project.store().history(args.stage)
    if not events:
        # a wrong name is bad input (like an unknown target), not a bug in lauf-dvc (70)
        raise PipelineError(
            f"no history for stage {args.stage!r}: check the name (lauf-dvc status)"
        )
    rows = [dict(time=e.time, state=e.state.value, worker=e.worker, reason=e.reason,
                 fingerprint=e.fingerprint) for e in events]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_history(args.stage, rows)
    return ExitCode.OK


def _recorded(project: Project) -> bool:
    """Has any run written this project's database? (Reading must not create one: a
    SQLite file that does not exist is no run yet; a server database is assumed used.)"""
    from lauf_dvc.scheduler.engine import sqlite_path

    try:
        path = sqlite_path(project.db_url)
    except Exception:  # not a URL: the store says so when it is used
        return True
    return path is None or path.exists()


def cmd_reset(args: argparse.Namespace) -> int:
    if not args.failed and not args.stages:  # a usage error (2), not a bug in lauf-dvc (70)
        print("lauf-dvc: error: say what to reset: --failed, or stage names", file=sys.stderr)
        return ExitCode.USAGE
    project = _settings_only(args)
    if not _recorded(project):
        print(NO_RUN_YET, file=sys.stderr)
        return ExitCode.OK
    store = project.store()
    known = {row.id for row in store.task_rows()}
    unknown = [s for s in args.stages if s not in known]
    if unknown:  # like `history nosuch`: bad input, not "nothing to do"
        raise PipelineError(
            f"no stage {unknown[0]!r} in the run recorded: check the name (lauf-dvc status)"
        )
    done = store.reset(None if args.failed else args.stages)
    print(f"reset {len(done)} stage(s) to pending" + (f": {', '.join(done)}" if done else ""))
    return ExitCode.OK


def cmd_prune(args: argparse.Namespace) -> int:
    project = _settings_only(args)
    if not _recorded(project):
        print(NO_RUN_YET, file=sys.stderr)
        return ExitCode.OK
    print(f"deleted {project.store().prune_history(keep=args.keep)} old event(s)")
    return ExitCode.OK


def cmd_submit(args: argparse.Namespace) -> int:
    from lauf_dvc import slurm

    if args.workers < 1:
        print("lauf-dvc: error: --workers must be at least 1", file=sys.stderr)
        return ExitCode.USAGE
    options = argparse.ArgumentParser(add_help=False)
    _repro_options(options)
    job = slurm.plan_job(args, options, _selection(args))
    _warn(job.notes)
    if args.print_only:
        print(slurm.job_script(job), end="")
        return ExitCode.OK
    script = slurm.write_script(job)
    job_id = slurm.submit(script, job.workdir)
    print(f"submitted job {job_id}: {job.workers} worker(s); script {script}, logs in "
          f"{job.log_dir}")  # fmt: skip
    print(f"follow it with: {slurm.watch_command(job.env)}")
    return ExitCode.OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from lauf_dvc.plugins import Hooks, describe_plugins, make_plugin_manager

    hooks = Hooks(make_plugin_manager(_disabled_plugins()))
    rows = describe_plugins(hooks.pm)
    provided: dict[str, list[str]] = {}
    for name, fp in sorted(hooks.fingerprinters().items()):
        provided.setdefault(hooks.plugin_of(name), []).append(f"{fp.name}@{fp.version}")
    for row in rows:
        row["fingerprinters"] = provided.get(row["name"], [])
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    width = max([len(r["name"]) for r in rows] + [6])
    for row in rows:
        fps = ", ".join(row["fingerprinters"])
        extra = f" (fingerprinters: {fps})" if fps else ""
        print(f"{row['name']:<{width}}  {row['source']}{extra}")
        for hook in row["hooks"]:
            print(f"{'':<{width}}    {hook}")
    return ExitCode.OK


def _disabled_plugins() -> tuple[str, ...]:
    """``disable_plugins`` of the repository around the cwd (env only outside one)."""
    from lauf_dvc.config import ProjectSettings
    from lauf_dvc.dvc.project import find_root, read_lauf_vars
    from lauf_dvc.errors import PipelineError

    try:
        root = find_root()
    except PipelineError:
        return ProjectSettings.resolve().disable_plugins
    yaml = read_lauf_vars(root)
    return ProjectSettings.resolve(None, yaml, source="dvc.yaml").disable_plugins


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lauf_dvc.report import analyse, summary_text
    from lauf_dvc.report_html import html_page
    from lauf_dvc.scheduler.audit import read_trail, runs

    store = _recorded_store(args)
    if store is None:
        return ExitCode.OK
    try:
        trail = read_trail(store)
    finally:
        store.dispose()
    found = runs(trail)
    if not found:  # stages synced, none run by a worker yet
        print(NO_RUN_YET, file=sys.stderr)
        return ExitCode.OK
    if isinstance(args.run, int) and args.run > len(found):
        print(f"lauf-dvc: error: no run {args.run}: the database holds {len(found)} run(s) "
              "(--run last, all, or 1 to that)", file=sys.stderr)  # fmt: skip
        return ExitCode.USAGE
    if args.run == "last":
        chosen = found[-1:]
    else:
        chosen = found if args.run == "all" else [found[int(args.run) - 1]]
    reports = [analyse(run, trail.dependencies, len(found)) for run in chosen]
    if not args.html:
        print(summary_text(reports), end="")
        return ExitCode.OK
    Path(args.html).write_text(html_page(reports, generated=trail.now), encoding="utf-8")
    bars = sum(len(r.run.attempts) for r in reports)
    which = f"run {chosen[0].number} of" if len(chosen) == 1 else f"{len(chosen)} run(s) of"
    print(f"wrote {args.html}: {which} {len(found)}, {bars} stage run(s)")
    return ExitCode.OK


def cmd_dag(args: argparse.Namespace) -> int:
    from lauf_dvc import dag
    from lauf_dvc.dvc.project import open_project
    from lauf_dvc.scheduler.store import Store

    # no targets: every stage, as `dvc dag`; targets (from the cwd): them and upstream
    selection = Selection(tuple(args.targets), cwd=os.getcwd()) if args.targets else None
    project = open_project(cli=_settings(args), selection=selection)
    states: dict[str, tuple[str, str | None]] = {}
    if project.has_database():  # a look creates nothing
        store = Store(project.db_url, lock=project.settings.lock)
        try:
            states = {r.id: (r.state.value, r.reason) for r in store.task_rows()}
        finally:
            store.dispose()
    graph = dag.nodes([(s.address, s.upstream) for s in project.stages], states)
    render = dag.mermaid if args.mermaid else dag.dot if args.dot else dag.text
    print(render(graph), end="")
    return ExitCode.OK


COMMANDS = {
    "repro": cmd_repro,
    "worker": cmd_worker,
    "status": cmd_status,
    "watch": cmd_watch,
    "history": cmd_history,
    "reset": cmd_reset,
    "prune": cmd_prune,
    "submit": cmd_submit,
    "plugins": cmd_plugins,
    "report": cmd_report,
    "dag": cmd_dag,
}
