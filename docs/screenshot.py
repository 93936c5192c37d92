"""Make docs/report.png, the picture of ``lauf-dvc report --html`` in the README: the
example pipeline (examples/dvc_project) run with ``lauf-dvc repro -P -j 4`` in a fresh
git + DVC repository in a temporary folder, its report written there and opened in
headless Chromium (Debian's ``chromium``; ``make test-browser`` installs it).

    .venv/bin/python docs/screenshot.py [--out docs/report.png] [--keep]

tests/browser runs the same steps (it imports :func:`example_report`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dvc_project"
WIDTH, HEIGHT = 1240, 1000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _run(args: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    proc = subprocess.run(args, cwd=cwd, env=dict(env), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def example_env(home: Path) -> dict[str, str]:
    """The environment of the example's commands: no analytics, no user config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUF_DVC_")}
    env["DVC_NO_ANALYTICS"] = "1"
    for key in ("GLOBAL_CONFIG", "SYSTEM_CONFIG", "SITE_CACHE"):
        env[f"DVC_{key}_DIR"] = str(home / key.lower())
    for who in ("AUTHOR", "COMMITTER"):
        env.update({f"GIT_{who}_NAME": "lauf demo", f"GIT_{who}_EMAIL": "demo@example.invalid"})
    return env


def example_report(dest: Path) -> Path:
    """Copy the example pipeline to ``dest`` (which must not exist), make it a git + DVC
    repository, run it with four workers, write its report: the report's path."""
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    env = example_env(dest.parent / f"{dest.name}-home")
    lauf = [sys.executable, "-m", "lauf_dvc"]
    steps = [["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
             ["git", "add", "-A"], ["git", "commit", "-qm", "example pipeline"],
             [*lauf, "repro", "-P", "-j", "4"],
             [*lauf, "report", "--html", "report.html"]]  # fmt: skip
    for args in steps:
        _run(args, dest, env)
    return dest / "report.html"


def find_chromium() -> str:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    raise SystemExit(
        "no Chromium found: install Debian's chromium (apt-get install chromium) or run "
        "`make test-browser`, which does"
    )


def browser_flags() -> list[str]:
    """Headless, offline-safe flags; root needs --no-sandbox (CI runs as root)."""
    flags = ["--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-dev-shm-usage", "--hide-scrollbars",
             "--force-device-scale-factor=1"]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def screenshot(html: Path, png: Path, *, width: int = WIDTH, height: int = HEIGHT) -> None:
    """``html`` as headless Chromium shows it in a ``width`` x ``height`` window."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lauf-chromium-") as profile:
        args = [find_chromium(), *browser_flags(), f"--user-data-dir={profile}",
                f"--window-size={width},{height}", f"--screenshot={png.resolve()}",
                html.resolve().as_uri()]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not png.exists():
        raise SystemExit(f"chromium wrote no screenshot ({proc.returncode}):\n{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    p.add_argument("--keep", action="store_true", help="keep the example repository")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lauf-screenshot-"))
    try:
        html = example_report(work / "example")
        screenshot(html, args.out)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}" + (f" (the example: {work / 'example'})" if args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
