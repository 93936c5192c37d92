"""The fingerprint value: canonical text, digest, and the reasons a diff names."""

from __future__ import annotations

import pytest

from lauf_dvc.fingerprint import MISSING, Fingerprint, diff, json_value, reasons


def fp(parts: dict[str, str], name: str = "xxhash", version: str = "1") -> Fingerprint:
    return Fingerprint(name, version, parts)


BASE = {
    "cmd": json_value(["python train.py"]),
    "param:params.yaml:train.lr": json_value(0.1),
    "param:params.yaml:train.optimizer": json_value("adam"),
    "dep:data/raw.csv": "aa11",
    "dep:src/train.py": "bb22",
    "out:models/model.json": "cc33",
}


def changed(updates: dict[str, str | None]) -> Fingerprint:
    """BASE with some parts replaced (``None``: removed)."""
    parts = dict(BASE)
    for key, value in updates.items():
        if value is None:
            parts.pop(key)
        else:
            parts[key] = value
    return fp(parts)


def test_text_round_trips_and_is_canonical() -> None:
    a = fp(BASE)
    b = fp(dict(reversed(list(BASE.items()))))  # other insertion order
    assert a == b and hash(a) == hash(b)
    assert a.to_json() == b.to_json()
    text = a.to_json()
    assert isinstance(text, str)
    back = Fingerprint.from_json(text)
    assert back == a and back.digest == a.digest and back.to_json() == text
    assert dict(back.parts) == BASE


def test_digest_covers_name_version_and_every_part() -> None:
    a = fp(BASE)
    assert fp(BASE, version="2").digest != a.digest
    assert fp(BASE, name="dvc").digest != a.digest
    assert changed({"dep:data/raw.csv": "ff"}).digest != a.digest
    assert fp(BASE).digest == a.digest  # stable


def test_parts_are_frozen_and_typed() -> None:
    a = fp(BASE)
    with pytest.raises(TypeError):
        a.parts["cmd"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        fp({"param:p.yaml:x": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "text",
    ["", "dvc-lock:abc123", "{}", '{"fingerprinter": "x"}', "[1, 2]"],
)
def test_foreign_text_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        Fingerprint.from_json(text)


def test_tampered_text_is_rejected() -> None:
    text = fp(BASE).to_json().replace('"aa11"', '"aa12"')
    with pytest.raises(ValueError, match="format"):
        Fingerprint.from_json(text)


def test_equal_fingerprints_have_no_reasons() -> None:
    assert diff(fp(BASE), fp(dict(BASE))) == []


def test_param_change_shows_old_and_new_value() -> None:
    new = changed({"param:params.yaml:train.lr": json_value(0.01)})
    assert diff(fp(BASE), new) == ["params.yaml:train.lr 0.1 -> 0.01"]


def test_string_param_values_are_shown_as_json() -> None:
    new = changed({"param:params.yaml:train.optimizer": json_value("sgd")})
    assert diff(fp(BASE), new) == ['params.yaml:train.optimizer "adam" -> "sgd"']


def test_whole_params_file_names_the_changed_leaves() -> None:
    old = fp({"param:params.yaml": json_value({"train": {"lr": 0.1, "epochs": 3}, "seed": 1})})
    new = fp({"param:params.yaml": json_value({"train": {"lr": 0.01, "epochs": 3}, "x": 2})})
    assert diff(old, new) == [
        "params.yaml:seed 1 -> missing",
        "params.yaml:train.lr 0.1 -> 0.01",
        "params.yaml:x missing -> 2",
    ]


def test_integral_floats_equal_ints_as_for_dvc() -> None:
    assert json_value(1.0) == json_value(1) == "1"
    assert json_value({"lr": 2.0, "xs": (1.0, 0.5)}) == '{"lr":2,"xs":[1,0.5]}'


def test_dependency_and_output_reasons() -> None:
    old = fp(BASE)
    assert diff(old, changed({"dep:data/raw.csv": "zz"})) == [
        "dependency data/raw.csv content changed"
    ]
    assert diff(old, changed({"dep:data/raw.csv": MISSING})) == ["dependency data/raw.csv deleted"]
    assert diff(old, changed({"out:models/model.json": MISSING})) == [
        "output models/model.json deleted"
    ]
    assert diff(old, changed({"out:models/model.json": "dd"})) == [
        "output models/model.json changed"
    ]
    assert diff(fp({**BASE, "out:models/model.json": MISSING}), old) == [
        "output models/model.json created"
    ]


def test_added_and_removed_inputs() -> None:
    old = fp(BASE)
    new = changed({"dep:src/train.py": None, "dep:data/extra.csv": "ee"})
    assert diff(old, new) == [
        "dependency data/extra.csv added",
        "dependency src/train.py removed",
    ]
    new = changed({"param:params.yaml:train.seed": "1"})
    assert diff(old, new) == ["param params.yaml:train.seed added"]


def test_command_change_comes_first() -> None:
    new = changed({"cmd": json_value(["python train.py --fast"]), "dep:src/train.py": "x"})
    assert diff(fp(BASE), new) == ["command changed", "dependency src/train.py content changed"]


def test_plugin_defined_parts() -> None:
    old, new = fp({"registry:model": "v1"}), fp({"registry:model": "v2"})
    assert diff(old, new) == ["registry:model changed"]


def test_fingerprinter_change_is_the_one_reason() -> None:
    old = fp(BASE, name="xxhash")
    new = fp({**BASE, "dep:data/raw.csv": "md5"}, name="dvc")
    assert diff(old, new) == ["fingerprinter changed xxhash@1 -> dvc@1"]
    assert diff(old, fp(BASE, version="2")) == ["fingerprinter changed xxhash@1 -> xxhash@2"]


def test_reasons_against_stored_text() -> None:
    current = changed({"param:params.yaml:train.lr": json_value(0.01)})
    assert reasons(fp(BASE).to_json(), current) == ["params.yaml:train.lr 0.1 -> 0.01"]
    assert reasons(current.to_json(), current) == []
    assert reasons(None, current) == ["no fingerprint recorded yet"]
    assert reasons("dvc-lock:0123", current) == [
        "stored fingerprint has an older format; now xxhash@1"
    ]
