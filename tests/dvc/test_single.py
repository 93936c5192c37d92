"""One stage loaded from a worker's resolved dvc.yaml (lauf_dvc.dvc.load.single): the same
stage as ``repo.stage.load_one``, refreshed after every change DVC would see, on real
repositories."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from dvc_repos import init_repo, reproduce

from lauf_dvc.dvc import compat
from lauf_dvc.dvc.load import single
from lauf_dvc.dvc.load.pipeline import address_of, make_repo
from lauf_dvc.dvc.load.single import collect_stage, split_address

pytestmark = pytest.mark.filterwarnings("ignore:_NoneStep.value:DeprecationWarning")

FILES = {
    "params.yaml": "x: 1\nmodel:\n  depth: 3\n",
    "extra.yaml": "word: hello\n",
    "dvc.yaml": """\
vars:
  - extra.yaml
stages:
  plain:
    cmd: echo ${x} ${word} > plain.txt
    params: [x]
    outs: [plain.txt]
  each:
    foreach: [a, b]
    do:
      cmd: echo ${item} ${model.depth} > each-${item}.txt
      deps: [plain.txt]
      params: [model.depth]
      outs:
        - each-${item}.txt
  grid:
    matrix:
      n: [1, 2]
    cmd: echo ${item.n} > grid-${item.n}.txt
    outs:
      - grid-${item.n}.txt
""",
    "sub/dvc.yaml": """\
stages:
  inner:
    cmd: echo inner > inner.txt
    outs: [inner.txt]
""",
}
ADDRESSES = ["plain", "each@a", "each@b", "grid@1", "grid@2", "sub/dvc.yaml:inner"]


def _age(root: Path, seconds: float = 60) -> None:
    """Date the repository's files back (the loader distrusts a file changed just now)."""
    past = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (past, past))


def _edit(path: Path, text: str) -> None:
    """Change a file and date it back: only its content (and size) tells."""
    path.write_text(text)
    past = time.time() - 30
    os.utime(path, (past, past))


def _seen(stage: Any) -> dict[str, Any]:
    """Everything of a loaded stage that DVC's status, run and dump use."""
    from dvc.stage.serialize import to_single_stage_lockfile

    return {
        "addressing": stage.addressing,
        "cmd": stage.cmd,
        "wdir": stage.wdir,
        "dumpd": stage.dumpd(),
        "deps": [(str(d), d.def_path, d.hash_info) for d in stage.deps],
        "outs": [(str(o), o.def_path, o.hash_info, o.use_cache) for o in stage.outs],
        "lock": to_single_stage_lockfile(stage) if stage.cmd_changed is not None else None,
        "tracked_vars": stage.tracked_vars,
        "parametrized": stage.raw_data.parametrized,
        "generated_from": stage.raw_data.generated_from,
    }


def _by_dvc(repo: Any, address: str) -> dict[str, Any]:
    dvcfile, name = split_address(address)
    return _seen(repo.stage.load_one(path=os.path.join(repo.root_dir, dvcfile), name=name))


def _by_loader(loader: single.StageLoader, repo: Any, address: str) -> dict[str, Any]:
    dvcfile, name = split_address(address)
    stage = loader.load(repo, dvcfile, name)
    assert stage is not None, address
    return _seen(stage)


@pytest.mark.parametrize("locked", [False, True], ids=["no-dvc.lock", "dvc.lock"])
def test_same_stage_as_dvc_loads(tmp_path: Path, locked: bool) -> None:
    root = init_repo(tmp_path / "r", FILES)
    if locked:
        reproduce(root)
        reproduce(root / "sub")
        assert "each@b" in (root / "dvc.lock").read_text()
    _age(root)
    loader = single.StageLoader()
    repo = make_repo(root)
    try:
        for _ in range(2):  # built, then from what the loader kept
            for address in ADDRESSES:
                assert _by_loader(loader, repo, address) == _by_dvc(repo, address), address
                assert address_of(repo, collect_stage(repo, address, loader)) == address
    finally:
        repo.close()
    assert set(loader._built) == {str(root / "dvc.yaml"), str(root / "sub" / "dvc.yaml")}


def test_kept_while_unchanged_and_rebuilt_after_each_change(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "r", FILES)
    reproduce(root)
    _age(root)
    loader = single.StageLoader()
    repo = make_repo(root)
    path = str(root / "dvc.yaml")

    def cmd(address: str) -> str:
        seen = _by_loader(loader, repo, address)
        assert seen == _by_dvc(repo, address)
        return str(seen["cmd"])

    try:
        assert cmd("plain") == "echo 1 hello > plain.txt"
        built = loader._built[path]
        assert cmd("each@a") == "echo a 3 > each-a.txt"
        assert loader._built[path] is built  # nothing changed: nothing rebuilt

        _edit(root / "params.yaml", "x: 2\nmodel:\n  depth: 3\n")  # the default params
        assert cmd("plain") == "echo 2 hello > plain.txt"
        assert loader._built[path] is not built
        built = loader._built[path]

        _edit(root / "extra.yaml", "word: world\n")  # a vars file
        assert cmd("plain") == "echo 2 world > plain.txt"
        assert loader._built[path] is not built

        text = (root / "dvc.yaml").read_text().replace("> grid-", ">> grid-", 1)
        _edit(root / "dvc.yaml", text)  # the file itself
        assert cmd("grid@1") == "echo 1 >> grid-1.txt"

        (root / "extra.yaml").write_text("word: fresh\n")  # just now: not trusted, read
        assert cmd("plain") == "echo 2 fresh > plain.txt"
        assert path not in loader._built
        assert cmd("plain") == "echo 2 fresh > plain.txt"
    finally:
        repo.close()


def test_lock_entry_follows_the_file(tmp_path: Path) -> None:
    """The stage's own dvc.lock entry, read afresh each time (another worker wrote it)."""
    root = init_repo(tmp_path / "r", FILES)
    _age(root)
    loader = single.StageLoader()
    repo = make_repo(root)
    try:
        before = _by_loader(loader, repo, "plain")
        assert before["outs"][0][2].value is None
        reproduce(root)
        after = _by_loader(loader, repo, "plain")
        assert after == _by_dvc(repo, "plain")
        assert after["outs"][0][2].value
    finally:
        repo.close()


def test_what_it_cannot_read_goes_dvcs_way(tmp_path: Path) -> None:
    """An entry that fails DVC's schema, or a dvc.lock of another shape: None (the caller
    loads through DVC, which reports it as it does); a stage no longer there: DVC's error."""
    from dvc.stage.exceptions import StageNotFound

    root = init_repo(tmp_path / "r", FILES)
    reproduce(root)
    _age(root)
    loader = single.StageLoader()
    repo = make_repo(root)
    lock = root / "dvc.lock"
    good = lock.read_text()
    try:
        lock.write_text(good.replace("  plain:\n    cmd:", "  plain:\n    bogus: 1\n    cmd:"))
        assert loader.load(repo, "dvc.yaml", "plain") is None
        assert loader.load(repo, "dvc.yaml", "each@a") is not None  # its entry is fine
        lock.write_text("{schema: '2.0', stages: {plain: {cmd: x}}}\n")  # flow style
        assert loader.load(repo, "dvc.yaml", "plain") is None
        lock.write_text(good)
        with pytest.raises(StageNotFound):
            loader.load(repo, "dvc.yaml", "gone")
    finally:
        repo.close()


def test_off_when_dvc_moved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = init_repo(tmp_path / "r", FILES)
    monkeypatch.setenv("LAUF_DVC_COMPAT_BREAK", "stage-loader")
    compat.reset()
    repo = make_repo(root)
    try:
        assert single.StageLoader().load(repo, "dvc.yaml", "plain") is None
        assert address_of(repo, collect_stage(repo, "plain", single.StageLoader())) == "plain"
    finally:
        repo.close()
        monkeypatch.delenv("LAUF_DVC_COMPAT_BREAK")
        compat.reset()


def test_config_kept_between_lock_holds_until_it_changes(tmp_path: Path) -> None:
    """speedups.keep_between_locks: ``repo._reset()`` (each take and release of DVC's
    lock) keeps the configuration while its files are unchanged."""
    from lauf_dvc.dvc.load import speedups

    root = init_repo(tmp_path / "r", FILES)
    _age(root)
    past = time.time() - 60
    os.utime(root / ".dvc" / "config", (past, past))
    repo = make_repo(root)
    try:
        speedups.keep_between_locks(repo)
        config = repo.config
        repo._reset()
        assert repo.config is config
        assert repo.config["feature"]["machine"] is False
        text = (root / ".dvc" / "config").read_text() + "[feature]\n    machine = true\n"
        _edit(root / ".dvc" / "config", text)
        repo._reset()
        assert repo.config is not config
        assert repo.config["feature"]["machine"] is True
        config = repo.config
        repo._reset()
        assert repo.config is config
        (root / ".dvc" / "config").write_text(text)  # just now: read again each time
        repo._reset()
        assert repo.config is not config
    finally:
        repo.close()
