"""``make test-dvc``: DVC's own tests of ``dvc repro``, once on plain DVC, once through lauf.

Takes ``tests/`` from the source distribution of the DVC installed here (downloaded
once into ``.cache/dvc-tests/``), runs the selected test files with the pytest plugin
``lauf_route`` (this folder): first as DVC ships them, then with ``Repo.reproduce``
routed to :func:`lauf_dvc.reproduce` (2 parallel workers). Prints both counts and the
share of the tests passing on plain DVC that pass through lauf; tests that no runner
with workers in other processes can pass (they count calls to DVC internals spied on
inside the test process) are listed with the reason in ``unroutable.txt``, counted
apart, and must fail through lauf (a listed test that passes is a stale entry).

Exit status 0 only if at least :data:`TARGET` of the routable tests pass through lauf.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
CACHE = PROJECT / ".cache" / "dvc-tests"
TARGET = 0.95
#: The DVC test files that call ``reproduce`` (``dvc repro`` on the command line, too),
#: experiments excepted (``dvc exp run`` reproduces in its own executor).
SELECTED = (
    "tests/func/repro",
    "tests/func/test_run_cache.py",
    "tests/func/test_lockfile.py",
    "tests/func/test_dvcfile.py",
    "tests/func/test_run.py",
    "tests/func/test_dataset.py",
    "tests/func/api/test_show.py",
    "tests/func/plots/test_diff.py",
    "tests/integration/plots",
    "tests/unit/repo/test_reproduce.py",
    "tests/unit/test_params.py",
    "tests/func/test_cli.py",
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--workers", default="2", help="pytest-xdist processes (default 2)")
    p.add_argument("--only", choices=("plain", "lauf"), help="run one pass only")
    p.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k NAME)")
    args = p.parse_args()
    import dvc

    work = prepare(dvc.__version__)
    unroutable = read_unroutable(HERE / "unroutable.txt")
    reports = {}
    for mode in ("plain", "lauf"):
        if args.only and args.only != mode:
            continue
        started = time.monotonic()
        reports[mode] = run_pass(work, mode, args.workers, args.pytest_args)
        print(f"{mode}: {len(reports[mode])} tests in {time.monotonic() - started:.0f} s",
              flush=True)  # fmt: skip
    if len(reports) < 2:
        return 0
    return summarize(dvc.__version__, reports["plain"], reports["lauf"], unroutable)


def prepare(version: str) -> Path:
    """``.cache/dvc-tests/<version>/``: DVC's ``tests/`` and its pytest settings."""
    work = CACHE / version
    if (work / "pytest.ini").exists():
        return work
    CACHE.mkdir(parents=True, exist_ok=True)
    sdist = CACHE / f"dvc-{version}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary",
                        ":all:", "--no-deps", f"dvc=={version}", "-d", str(CACHE)],
                       check=True)  # fmt: skip
    tmp = CACHE / f"{version}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        top = f"dvc-{version}"
        wanted = (f"{top}/tests/", f"{top}/pyproject.toml")
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        tar.extractall(tmp, members=members, filter="data")
    (tmp / top / "pytest.ini").write_text(pytest_ini(tmp / top / "pyproject.toml"))
    shutil.rmtree(work, ignore_errors=True)
    (tmp / top).rename(work)
    shutil.rmtree(tmp)
    return work


def pytest_ini(pyproject: Path) -> str:
    """DVC's ``[tool.pytest.ini_options]`` as a pytest.ini (without its coverage flags):
    the suite runs next to, not inside, DVC's source tree, so the installed DVC is tested."""
    options = tomllib.loads(pyproject.read_text())["tool"]["pytest"]["ini_options"]
    lines = ["[pytest]"]
    for key, value in options.items():
        if key == "addopts":
            value = "-ra"
        if isinstance(value, list):
            lines.append(f"{key} =\n" + "\n".join(f"    {v}" for v in value))
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def read_unroutable(path: Path) -> dict[str, str]:
    """``{test id: reason}`` from lines ``<test id>  # <reason>``."""
    out = {}
    for line in path.read_text().splitlines():
        test, _, reason = line.partition("#")
        if test.strip():
            out[test.strip()] = reason.strip()
    return out


def run_pass(work: Path, mode: str, workers: str, extra: list[str]) -> dict[str, dict]:
    report = CACHE / f"report-{mode}.jsonl"
    report.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(HERE), "LAUF_DVC_ROUTE_REPORT": str(report)}
    env.pop("LAUF_DVC_ROUTE", None)
    if mode == "lauf":
        env["LAUF_DVC_ROUTE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-p", "lauf_route", "-p", "no:cacheprovider",
           "-q", "-n", workers, *SELECTED, *extra]  # fmt: skip
    log = CACHE / f"pytest-{mode}.log"
    with open(log, "w") as fh:
        subprocess.run(cmd, cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
    results: dict[str, dict] = {}
    for line in report.read_text().splitlines() if report.exists() else ():
        row = json.loads(line)
        results[row["test"]] = row
    return results


def summarize(version: str, plain: dict, lauf: dict, unroutable: dict[str, str]) -> int:
    def passed(rows: dict, test: str) -> bool:
        return rows.get(test, {}).get("outcome") == "passed"

    ok_plain = {t for t in plain if passed(plain, t)}
    listed = ok_plain & set(unroutable)
    routable = ok_plain - listed
    ok_lauf = {t for t in routable if passed(lauf, t)}
    calling = {t for t in routable if plain[t].get("reproduce_calls", 0) > 0}
    ok_calling = calling & ok_lauf
    share = len(ok_lauf) / len(routable) if routable else 0.0
    print(f"DVC {version}'s tests of reproduce ({len(SELECTED)} files/folders, "
          f"{len(plain)} tests):")  # fmt: skip
    print(f"  plain DVC: {len(ok_plain)} passed, {len(plain) - len(ok_plain)} did not "
          "(skipped or failing without lauf: not counted)")  # fmt: skip
    print(f"  through lauf: {len(ok_lauf)} of {len(routable)} passed ({share:.1%}), of them "
          f"{len(ok_calling)} of {len(calling)} that call reproduce")  # fmt: skip
    print(f"  unroutable (listed in unroutable.txt, not counted): {len(listed)}")
    failed = sorted(routable - ok_lauf)
    for test in failed:
        print(f"  FAILED through lauf: {test}")
    stale = sorted(t for t in listed if passed(lauf, t))
    for test in stale:
        print(f"  listed as unroutable but passes through lauf (remove it): {test}")
    missing = sorted(set(unroutable) - set(plain))
    for test in missing:
        print(f"  listed as unroutable but not run here: {test}")
    summary = dict(dvc=version, tests=len(plain), passed_plain=len(ok_plain),
                   unroutable=len(listed), routable=len(routable), passed_lauf=len(ok_lauf),
                   calling_reproduce=len(calling), passed_lauf_calling=len(ok_calling),
                   failed=failed, share=round(share, 4))  # fmt: skip
    (CACHE / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if share >= TARGET and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
