"""One YAML parser per thread, the one DVC's ``parse_yaml`` uses."""

from __future__ import annotations

import threading
from typing import Any

from ruamel.yaml import YAML

_parsers = threading.local()


def safe_yaml() -> Any:
    """This thread's ``ruamel.yaml.YAML(typ="safe")``: the parser DVC's ``parse_yaml``
    uses, made once (DVC makes one per file, a good part of parsing a small file)."""
    parser = getattr(_parsers, "safe", None)
    if parser is None:
        parser = _parsers.safe = YAML(typ="safe")
    return parser
