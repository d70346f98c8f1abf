"""Reading YAML files with errors that name the file: shared by schemas, prices, policies and
training configs. It parses only; each caller validates the structure it expects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from classifier.errors import TierwiseError


def read_yaml(path: str | Path, error: type[TierwiseError], what: str, hint: str = "") -> Any:
    """Parse ``path``; a missing file or invalid YAML raises ``error`` naming the file (and ``hint``)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist{'; ' + hint if hint else ''}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
