"""Parameter files read as DVC reads them (its loaders, its error messages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dvc.exceptions import DvcException
from dvc.utils.serialize import LOADERS
from ruamel.yaml import YAMLError

from lauf_dvc.dvc.yamlparse import safe_yaml
from lauf_dvc.errors import PipelineError


def load_params_file(root: Path, path: str) -> Any:
    """``path`` (relative to ``root``) parsed by DVC's loader for its extension; None if absent."""
    full = root / path
    suffix = full.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):  # DVC's parse (ruamel, safe), one parser object
            fast = _parse_yaml(full)
            if fast is not _FAILED:
                return fast
        return LOADERS[suffix](str(full))  # other formats, and DVC's own error messages
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise PipelineError(f"params file {path} is a directory, expected a file") from None
    except DvcException as exc:
        raise PipelineError(f"params file {path}: {exc}; fix its syntax") from None


_FAILED = object()


def _parse_yaml(path: Path) -> Any:
    """``path`` parsed as DVC's ``parse_yaml`` does (``YAML(typ="safe").load(text) or {}``),
    with one parser object instead of a new one per file; ``_FAILED`` on any error."""
    try:
        text = path.read_text(encoding="utf-8")
        return safe_yaml().load(text) or {}
    except (YAMLError, UnicodeDecodeError, ValueError):
        return _FAILED
