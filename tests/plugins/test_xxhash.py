"""The xxhash fingerprinter: content hashes, deterministic directories, the stat cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash
from plugin_helpers import stage

from lauf_dvc.builtin.xxhash_fingerprint import (
    ContentHasher,
    XxhashFingerprinter,
    hash_file,
    hasher_for,
)
from lauf_dvc.errors import PipelineError
from lauf_dvc.fingerprint import MISSING, FingerprintContext, StatCache, diff
from lauf_dvc.plugins import Hooks

HOUR = 3600 * 10**9


def write(root: Path, files: dict[str, str], age_ns: int = HOUR) -> None:
    """Write files dated ``age_ns`` ago: old enough for the stat cache to vouch for them."""
    stamp = time.time_ns() - age_ns
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, ns=(stamp, stamp))


def touch(path: Path, age_ns: int) -> None:
    stamp = time.time_ns() - age_ns
    os.utime(path, ns=(stamp, stamp))


TRAIN = stage(
    "train",
    deps=("data/raw.csv", "data/features", "src/train.py"),
    outs=("models/model.json",),
    params=("params.yaml:train.lr", "params.yaml:train.layers", "config.json"),
)

FILES = {
    "data/raw.csv": "a,b\n1,2\n",
    "data/features/a.txt": "alpha",
    "data/features/sub/b.txt": "beta",
    "data/features/sub/c.txt": "gamma",
    "src/train.py": "print('train')\n",
    "models/model.json": "{}",
    "params.yaml": "train:\n  lr: 0.1\n  layers: [64, 32]\nother: 1\n",
    "config.json": '{"seed": 7}',
}


def fingerprint(root: Path, stage_info=TRAIN, **kwargs):
    """One fingerprint in a fresh context (one pass); returns it and the hasher's counts."""
    with FingerprintContext(root, **kwargs) as ctx:
        fp = XxhashFingerprinter().fingerprint(stage_info, ctx)
        hasher = hasher_for(ctx)
        cache = ctx.stat_cache
        return fp, hasher.files_read, (cache.stats if cache else None)


# -- hashing ---------------------------------------------------------------------------------


def test_file_hash_is_xxh3_128_of_the_content(tmp_path: Path) -> None:
    blob = os.urandom(3 * (1 << 20) + 17)  # several read chunks
    (tmp_path / "f").write_bytes(blob)
    assert hash_file(tmp_path / "f") == xxhash.xxh3_128_hexdigest(blob)


def test_directory_hash_is_deterministic(tmp_path: Path) -> None:
    names = ["b/2.txt", "a.txt", "b/1.txt", "c/d/e.txt"]
    write(tmp_path / "one", {n: n.upper() for n in names})
    write(tmp_path / "two", {n: n.upper() for n in reversed(names)})  # other creation order
    first = ContentHasher().hash_path(tmp_path / "one")
    assert first.endswith(".dir")
    assert ContentHasher().hash_path(tmp_path / "two") == first
    assert ContentHasher().hash_path(tmp_path / "one") == first

    (tmp_path / "two" / "b" / "1.txt").rename(tmp_path / "two" / "b" / "3.txt")
    renamed = ContentHasher().hash_path(tmp_path / "two")
    (tmp_path / "one" / "c" / "d" / "e.txt").write_text("other")
    edited = ContentHasher().hash_path(tmp_path / "one")
    (tmp_path / "one" / "c" / "d" / "e.txt").unlink()
    (tmp_path / "one" / "empty").mkdir()  # empty directories hold no content
    removed = ContentHasher().hash_path(tmp_path / "one")
    assert len({first, renamed, edited, removed}) == 4


def test_missing_paths(tmp_path: Path) -> None:
    hasher = ContentHasher()
    assert hasher.hash_path(tmp_path / "nope") == MISSING
    (tmp_path / "file").write_text("x")
    assert hasher.hash_path(tmp_path / "file" / "below") == MISSING


# -- the fingerprint ---------------------------------------------------------------------------


def test_parts_name_every_input(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    fp, _, _ = fingerprint(tmp_path)
    assert fp.label == "xxhash@1"
    assert dict(fp.parts) == {
        "cmd": '["python train.py"]',
        "param:params.yaml:train.lr": "0.1",
        "param:params.yaml:train.layers": "[64,32]",
        "param:config.json": '{"seed":7}',
        "dep:data/raw.csv": xxhash.xxh3_128_hexdigest(b"a,b\n1,2\n"),
        "dep:data/features": ContentHasher().hash_path(tmp_path / "data/features"),
        "dep:src/train.py": hash_file(tmp_path / "src/train.py"),
        "out:models/model.json": hash_file(tmp_path / "models/model.json"),
    }


def test_changes_are_named(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    before, _, _ = fingerprint(tmp_path)
    write(tmp_path, {
        "params.yaml": "train:\n  lr: 0.01\n  layers: [64, 32]\nother: 2\n",
        "data/raw.csv": "a,b\n1,3\n",
        "data/features/sub/c.txt": "GAMMA",
    })  # fmt: skip
    (tmp_path / "models/model.json").unlink()
    after, _, _ = fingerprint(tmp_path)
    assert diff(before, after) == [
        "params.yaml:train.lr 0.1 -> 0.01",
        "dependency data/features content changed",
        "dependency data/raw.csv content changed",
        "output models/model.json deleted",
    ]


def test_params_of_every_format_dvc_reads(tmp_path: Path) -> None:
    write(tmp_path, {
        "p.toml": "[train]\nlr = 0.5\n",
        "p.json": '{"train": {"lr": 0.25}}',
        "p.py": "LR = 0.125\n\nclass Train:\n    epochs = 4\n",
        "p.yml": "train: {lr: 1.0}\n",
    })  # fmt: skip
    params = ("p.toml:train.lr", "p.json:train.lr", "p.py:LR", "p.py:Train.epochs",
              "p.yml:train.lr", "p.yml:train.missing", "absent.yaml:x")  # fmt: skip
    fp, _, _ = fingerprint(tmp_path, stage("s", params=params))
    assert {k: v for k, v in fp.parts.items() if k.startswith("param:")} == {
        "param:p.toml:train.lr": "0.5",
        "param:p.json:train.lr": "0.25",
        "param:p.py:LR": "0.125",
        "param:p.py:Train.epochs": "4",
        "param:p.yml:train.lr": "1",
        "param:p.yml:train.missing": MISSING,
        "param:absent.yaml:x": MISSING,
    }


def test_broken_params_file_is_a_pipeline_error(tmp_path: Path, hooks: Hooks) -> None:
    write(tmp_path, {"params.yaml": "train: [unclosed\n"})
    ctx = FingerprintContext(tmp_path, stat_cache=None)
    with ctx, pytest.raises(PipelineError, match=r"params file params\.yaml"):
        hooks.fingerprint(stage(params=("params.yaml:train",)), ctx, "xxhash")


# -- the stat cache ----------------------------------------------------------------------------


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    first, read, stats = fingerprint(tmp_path)
    assert read == 6 and stats.stored == 6  # raw.csv, 3 feature files, train.py, model.json
    again, read, stats = fingerprint(tmp_path)  # another pass, as another worker would
    assert again == first
    assert read == 0 and stats.hits == 6 and stats.misses == 0
    assert (tmp_path / ".dvc/tmp/lauf/statcache.sqlite").is_file()


@pytest.mark.parametrize(("fstype", "journal"), [("ext4", "wal"), ("nfs4", "delete")])
def test_the_cache_on_a_network_filesystem_uses_a_rollback_journal(tmp_path, fstype, journal):
    """WAL needs shared memory, which a network filesystem does not share between the
    machines whose workers use one cache."""
    import sqlite3

    write(tmp_path, FILES)
    path = tmp_path / "cache.sqlite"
    mounts = f"server:/export {tmp_path} {fstype} rw 0 0\n"
    first, _, _ = fingerprint(tmp_path, stat_cache=StatCache(path, mounts=mounts))
    again, read, stats = fingerprint(tmp_path, stat_cache=StatCache(path, mounts=mounts))
    assert again == first and read == 0 and stats.hits == 6  # it works as a cache
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == journal
    con.close()


def test_touching_a_file_changes_nothing(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    first, _, _ = fingerprint(tmp_path)
    touch(tmp_path / "data/raw.csv", age_ns=HOUR // 2)  # new mtime, same content
    touch(tmp_path / "data/features/sub/b.txt", age_ns=HOUR // 2)
    again, read, stats = fingerprint(tmp_path)
    assert again == first and diff(first, again) == []
    assert read == 2 and stats.hits == 4  # only the touched files were read, once
    _, read, _ = fingerprint(tmp_path)
    assert read == 0  # and their new stat is remembered


def test_content_change_is_detected_despite_the_cache(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    first, _, _ = fingerprint(tmp_path)
    write(tmp_path, {"data/raw.csv": "a,b\n9,9\n"}, age_ns=HOUR // 2)  # same size
    again, read, _ = fingerprint(tmp_path)
    assert read == 1
    assert diff(first, again) == ["dependency data/raw.csv content changed"]


def test_recently_modified_files_are_not_cached(tmp_path: Path) -> None:
    """A file written just now could change again within the same mtime tick."""
    write(tmp_path, FILES)
    write(tmp_path, {"data/raw.csv": "fresh"}, age_ns=0)
    _, read, stats = fingerprint(tmp_path)
    assert read == 6 and stats.stored == 5
    _, read, _ = fingerprint(tmp_path)
    assert read == 1  # the fresh file, hashed again rather than trusted


def test_without_a_stat_cache_everything_is_read(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    fingerprint(tmp_path)
    _, read, stats = fingerprint(tmp_path, stat_cache=None)
    assert read == 6 and stats is None


def test_one_pass_hashes_a_shared_path_once(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    consumers = [stage(f"s{i}", deps=("data/features",)) for i in range(5)]
    with FingerprintContext(tmp_path, stat_cache=None) as ctx:
        fps = {XxhashFingerprinter().fingerprint(s, ctx) for s in consumers}
        assert hasher_for(ctx).files_read == 3
    assert len({fp.parts["dep:data/features"] for fp in fps}) == 1


def test_an_unusable_cache_only_costs_time(tmp_path: Path) -> None:
    write(tmp_path, FILES)
    bad = tmp_path / "not-a-dir"
    bad.write_text("")
    first, _, _ = fingerprint(tmp_path, stat_cache=None)
    again, read, stats = fingerprint(tmp_path, stat_cache=StatCache(bad / "cache.sqlite"))
    assert again == first and read == 6 and stats.stored == 0


WORKER = """
import json, sys
from lauf_dvc.builtin.xxhash_fingerprint import ContentHasher
from lauf_dvc.fingerprint import StatCache
cache = StatCache(sys.argv[1])
hasher = ContentHasher(cache)
print(json.dumps([hasher.hash_path(sys.argv[2]), hasher.files_read, cache.stats.errors]))
"""


def test_workers_share_the_cache(tmp_path: Path) -> None:
    write(tmp_path, {f"data/{i:03}.txt": str(i) * 50 for i in range(300)})
    db = tmp_path / ".dvc/tmp/lauf/statcache.sqlite"
    args = [sys.executable, "-c", WORKER, str(db), str(tmp_path / "data")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    results = [json.loads(p.communicate()[0]) for p in procs]  # concurrent writers
    assert len({r[0] for r in results}) == 1 and all(r[2] == 0 for r in results)
    later = json.loads(subprocess.run(args, capture_output=True, text=True).stdout)
    assert later == [results[0][0], 0, 0]  # another process: nothing read
