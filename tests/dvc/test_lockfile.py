"""lauf's dvc.lock entry writer against DVC's own: byte for byte, over generated entries.

The reference is exactly what ``Lockfile.dump_stages`` does (dvc/dvcfile.py): parse the
file in round-trip mode, ``data["stages"].update(entry)``, dump with DVC's dumper.
"""

from __future__ import annotations

import io
import random
import re
import string
from typing import Any

import pytest

from lauf_dvc.dvc.commit import lockfile

# names and strings that make YAML quote, wrap, escape or fold
AWKWARD = [
    "", " ", "yes", "no", "null", "~", "1.0", "0x1F", "1e3", "-", "- a", "a: b", "a #b", "#a",
    "'quoted'", '"double"', "back\\slash", "tab\there", "new\nline", "trailing ", " leading",
    "ünïcödé", "日本語", "@at", "&anchor", "*alias", "!tag", "%percent", "{brace}", "[bracket]",
    "a" * 90, " ".join(["word"] * 40), "x" * 200,
]  # fmt: skip


def _text(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return rng.choice(AWKWARD)
    alphabet = string.ascii_letters + string.digits + " _-./:@'\"ü"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))


def _name(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(["featurize@a", "train@0", "m@lr-0.1-x", "sub.stage", "ünï", "1", "yes"])
    alphabet = string.ascii_letters + string.digits + "_-@."
    return rng.choice(string.ascii_letters) + "".join(
        rng.choice(alphabet) for _ in range(rng.randint(0, 30))
    )


def _item(rng: random.Random) -> dict[str, Any]:
    item: dict[str, Any] = {"path": _text(rng) or "p", "hash": "md5"}
    item["md5"] = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    item["size"] = rng.randint(0, 10**12)
    if rng.random() < 0.3:
        item["nfiles"] = rng.randint(1, 9999)
        item["md5"] += ".dir"
    return item


def _key(rng: random.Random) -> str:
    """A params key (ruamel 0.18 itself cannot read back some keys made of punctuation)."""
    alphabet = string.ascii_letters + string.digits + "_-. ü"
    return rng.choice(string.ascii_letters) + "".join(
        rng.choice(alphabet) for _ in range(rng.randint(0, 20))
    )


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth < 2 and kind < 0.2:
        return {_key(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if depth < 2 and kind < 0.3:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice([_text(rng), rng.randint(-5, 10**6), rng.random(), True, False, None])


def _entry(rng: random.Random, name: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    cmds = [_text(rng) or "true" for _ in range(rng.randint(1, 3))]
    data["cmd"] = cmds[0] if len(cmds) == 1 or rng.random() < 0.5 else cmds
    if rng.random() < 0.8:
        data["deps"] = [_item(rng) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.5:
        data["params"] = {
            rng.choice(["params.yaml", "conf/p.json"]): {
                _key(rng): _value(rng) for _ in range(rng.randint(1, 4))
            }
        }
    if rng.random() < 0.9:
        data["outs"] = [_item(rng) for _ in range(rng.randint(1, 3))]
    return {name: data}


def _dvc_update(text: str, entry: dict[str, Any]) -> str:
    """What DVC writes: Lockfile.dump_stages on an existing file."""
    from dvc.utils.serialize._yaml import _dump, parse_yaml_for_update

    data = parse_yaml_for_update(text, "dvc.lock") if text else {}
    if not data:
        data.update({"schema": "2.0"})
    data["stages"] = data.get("stages", {})
    data["stages"].update(entry)
    out = io.StringIO()
    _dump(data, out)
    return out.getvalue()


def _same(ours: str, dvcs: str) -> bool:
    """Byte for byte, except where DVC's round trip itself rewrites an untouched entry.

    ruamel does not reproduce its own output for a long plain string folded at a run of
    spaces: re-dumping an entry it had written moves the spaces around the line break
    (same value, different bytes). DVC re-dumps every entry at every stage, so its own
    dvc.lock drifts that way; ours keeps the untouched entries' bytes. Only that is allowed.
    """
    from ruamel.yaml import YAML

    if ours == dvcs:
        return True
    yaml = YAML(typ="safe")
    strip = lambda text: [line.rstrip(" ") for line in text.splitlines()]  # noqa: E731
    return yaml.load(ours) == yaml.load(dvcs) and strip(ours) == strip(dvcs)


@pytest.mark.parametrize("seed", range(30))
def test_splice_writes_what_dvc_writes(seed: int) -> None:
    rng = random.Random(seed)
    names = list(dict.fromkeys(_name(rng) for _ in range(rng.randint(1, 12))))
    text = ""
    for name in names:  # a file built by DVC, one entry at a time
        text = _dvc_update(text, _entry(rng, name))
    checked = 0
    for _ in range(15):
        name = rng.choice(names) if rng.random() < 0.7 else _name(rng)
        entry = _entry(rng, name)
        expected = _dvc_update(text, entry)
        spliced = lockfile.splice(text, name, entry)
        if spliced is None:  # left to DVC: only for a line that looks like a comment
            assert re.search(r"^ *#", text, re.MULTILINE), (name, text)
        else:
            assert _same(spliced[0], expected), name
            checked += 1
        text = expected
    if "#" not in text:
        assert checked == 15  # without "#", lauf wrote every entry itself


def test_unchanged_entry_is_reported_unmodified() -> None:
    rng = random.Random(7)
    entry = _entry(rng, "train")
    text = _dvc_update(_dvc_update("", _entry(rng, "prepare")), entry)
    spliced = lockfile.splice(text, "train", entry)
    assert spliced == (text, False)
    changed = _entry(rng, "train")
    assert lockfile.splice(text, "train", changed) == (_dvc_update(text, changed), True)


@pytest.mark.parametrize(
    "text",
    [
        "schema: '2.0'\nstages:\n  # a comment\n  train:\n    cmd: x\n",
        "schema: '2.0'\nstages:\n\ttrain:\n\t\tcmd: x\n",
        "schema: '2.0'\nstages: {train: {cmd: x}}\n",
        "schema: '2.0'\nstages:\n  'train':\n    cmd: x\n",  # spelled differently
        "schema: '2.0'\nstages:\n  train:\n    cmd: x",  # no final newline
    ],
    ids=["comment", "tabs", "flow-style", "quoted-key", "no-newline"],
)
def test_files_not_written_by_dvc_are_left_to_dvc(text: str) -> None:
    assert lockfile.splice(text, "train", {"train": {"cmd": "y"}}) is None


@pytest.mark.parametrize("seed", range(10))
def test_entry_by_entry_load_equals_dvcs_parse(seed: int, tmp_path: Any) -> None:
    """lauf's cached loader (lauf_dvc.dvc.load.speedups) returns what DVC's own load returns."""
    from dvc.fs import LocalFileSystem
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml

    from lauf_dvc.dvc.load.speedups import _YamlCache

    rng = random.Random(seed)
    names = list(dict.fromkeys(_name(rng) for _ in range(rng.randint(1, 12))))
    cache = _YamlCache(strictyaml.load)
    path = tmp_path / "dvc.lock"
    text = ""
    for _ in range(3 * len(names)):
        text = _dvc_update(text, _entry(rng, rng.choice(names)))
        path.write_text(text, encoding="utf-8")
        expected, _ = strictyaml.load(str(path), COMPILED_LOCKFILE_SCHEMA, LocalFileSystem())
        got, got_text = cache.load(str(path), COMPILED_LOCKFILE_SCHEMA, LocalFileSystem())
        assert got == expected and got_text == text
        got["stages"].clear()  # callers own what they get: the cache is not touched
        again, _ = cache.load(str(path), COMPILED_LOCKFILE_SCHEMA, LocalFileSystem())
        assert again == expected
    assert cache.entries  # the entry-by-entry path was taken


def test_invalid_lockfile_still_gets_dvcs_error(tmp_path: Any) -> None:
    from dvc.fs import LocalFileSystem
    from dvc.schema import COMPILED_LOCKFILE_SCHEMA
    from dvc.utils import strictyaml
    from dvc.utils.strictyaml import YAMLValidationError

    from lauf_dvc.dvc.load.speedups import _YamlCache

    path = tmp_path / "dvc.lock"
    path.write_text("schema: '2.0'\nstages:\n  train:\n    outs: 3\n", encoding="utf-8")
    with pytest.raises(YAMLValidationError):
        _YamlCache(strictyaml.load).load(str(path), COMPILED_LOCKFILE_SCHEMA, LocalFileSystem())
