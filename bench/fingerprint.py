"""Fingerprint hashing: xxh3-128 (the ``xxhash`` fingerprinter) vs DVC's md5, and the
stat-cache hit path. Side by side in one run (the machine is shared: compare ratios).

1. Throughput on one large file (256 MiB by default), read from the page cache (it is
   read once before timing), best of ``--repeat`` runs each: lauf's ``hash_file``
   (xxh3-128) and dvc_data's ``file_md5`` (what ``dvc status``/``dvc repro`` use).
2. A directory of 1000 small files: hashed cold (every file read, stat cache filled),
   then again by a new hasher (a new pass / another worker) with the stat cache warm;
   the same for DVC (dvc_data ``build`` with DVC's state database, as ``dvc status``).

Usage:

    python bench/fingerprint.py [--size-mib 256] [--files 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

from dvc_data.hashfile.hash import file_md5

from lauf_dvc.builtin.xxhash_fingerprint import ContentHasher, hash_file
from lauf_dvc.fingerprint import StatCache

MIB = 1 << 20


def best_of(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as fobj:
        for _ in range(size // MIB):
            fobj.write(os.urandom(MIB))


def throughput(work: Path, size_mib: int, repeat: int) -> dict[str, float]:
    path = work / "big.bin"
    make_file(path, size_mib * MIB)
    hash_file(path)  # into the page cache
    xx = best_of(repeat, hash_file, path)
    md5 = best_of(repeat, file_md5, str(path))
    return {"xxh3": size_mib * MIB / xx / 1e6, "md5": size_mib * MIB / md5 / 1e6}


def stat_cache(work: Path, files: int) -> dict[str, float]:
    tree = work / "tree"
    old = time.time_ns() - 3600 * 10**9  # older than the racy window: cacheable
    for i in range(files):
        path = tree / f"d{i % 20:02}" / f"f{i:05}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
        os.utime(path, ns=(old, old))
    cache = StatCache(work / "statcache.sqlite")
    result = {}
    for label in ("cold", "warm"):
        hasher = ContentHasher(cache)
        start = time.perf_counter()
        digest = hasher.hash_path(tree)
        result[f"{label}_ms"] = (time.perf_counter() - start) * 1e3
        result[f"{label}_read"] = hasher.files_read
        result[f"{label}_digest"] = digest  # type: ignore[assignment]
    assert result["cold_digest"] == result["warm_digest"]
    uncached = ContentHasher(None)
    start = time.perf_counter()
    uncached.hash_path(tree)
    result["nocache_ms"] = (time.perf_counter() - start) * 1e3
    cache.close()
    result.update(dvc_state(work, tree))
    return result


def dvc_state(work: Path, tree: Path) -> dict[str, float]:
    """The same directory through dvc_data's build with DVC's state database."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_data.hashfile.state import State
    from dvc_objects.fs import localfs

    state = State(str(work), str(work / "dvc-state"))
    odb = HashFileDB(localfs, str(work / "dvc-cache"), state=state)
    result = {}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        build(odb, str(tree), localfs, "md5", dry_run=True)
        result[f"dvc_{label}_ms"] = (time.perf_counter() - start) * 1e3
    state.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"# bench/fingerprint.py  {datetime.date.today()}  {platform.node()}  "
          f"{platform.python_version()}  {os.cpu_count()} cpus")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="lauf-bench-fp-") as tmp:
        work = Path(tmp)
        t = throughput(work, args.size_mib, args.repeat)
        print(f"\n| {args.size_mib} MiB file | MB/s |\n|---|---|")
        print(f"| xxh3-128 (lauf xxhash) | {t['xxh3']:.0f} |")
        print(f"| md5 (dvc_data file_md5) | {t['md5']:.0f} |")
        print(f"| ratio xxh3 / md5 | {t['xxh3'] / t['md5']:.1f}x |")
        s = stat_cache(work, args.files)
        print(f"\n| {args.files}-file directory | ms | files read |\n|---|---|---|")
        print(f"| first pass (reads all, fills stat cache) | {s['cold_ms']:.1f} | "
              f"{s['cold_read']} |")  # fmt: skip
        print(f"| second pass (stat cache hits) | {s['warm_ms']:.1f} | {s['warm_read']} |")
        print(f"| no stat cache (reads all) | {s['nocache_ms']:.1f} | {args.files} |")
        print(f"| DVC md5, first pass (fills its state db) | {s['dvc_cold_ms']:.1f} | "
              f"{args.files} |")  # fmt: skip
        print(f"| DVC md5, second pass (state db hits) | {s['dvc_warm_ms']:.1f} | - |")
        print(f"| ratio DVC / lauf, second pass | {s['dvc_warm_ms'] / s['warm_ms']:.1f}x | |")


if __name__ == "__main__":
    main()
