"""The real SLURM cluster of ``make test-cluster``: one per test session.

These tests start daemons as root (``munged``, ``slurmctld``, ``slurmd``): they run only
when ``LAUF_DVC_TEST_CLUSTER=1`` (set by ``make test-cluster``; tests/conftest.py leaves
this folder out of every other run).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import Cluster, missing_commands, slurm_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    missing = missing_commands()
    if missing:  # make test-cluster installs them first; say so rather than skip quietly
        pytest.fail(f"SLURM is not installed: apt-get install {' '.join(missing)}")
    if os.geteuid() != 0:
        pytest.fail("the SLURM test cluster runs its daemons as root: run as root")
    with (
        tempfile.TemporaryDirectory(prefix="lauf-slurm-") as folder,
        slurm_cluster(Path(folder) / "cluster") as running,
    ):
        yield running
