"""The label schema: which heads the classifier has and the ordered classes of each.

A schema is plain data, loaded from YAML (``classifier/data/schema.yaml``, package data read through
``importlib.resources``, is the shipped default: ``DEFAULT_SCHEMA_PATH``) so that
users can train on their own routing logs with their own heads and classes. It does not know how
labels are derived from sources (that is the builder's job) nor how they are routed (the policy's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from classifier.errors import SchemaError
from classifier.yaml_io import read_yaml

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# the shipped default schema (tier, task, sensitivity); pip unpacks wheels, so it is a real file
DEFAULT_SCHEMA_PATH = Path(str(files("classifier.data").joinpath("schema.yaml")))


@dataclass(frozen=True)
class Head:
    """One classification head.

    ``column`` is the data column holding the label (defaults to ``name``); a row whose label is
    null simply does not train this head. ``positive_class`` names the class whose probability the
    policy thresholds (e.g. ``frontier`` for the tier head); ``negative_class`` names the benign
    class of a gate head (e.g. ``none`` for sensitivity).
    """

    name: str
    classes: tuple[str, ...]
    column: str = ""
    description: str = ""
    positive_class: str | None = None
    negative_class: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SchemaError(
                f"head name {self.name!r} is invalid: use lower-case letters, digits and '_', "
                "starting with a letter"
            )
        classes = tuple(self.classes) if isinstance(self.classes, (list, tuple)) else None
        if not classes or len(classes) < 2:
            raise SchemaError(f"head {self.name!r}: 'classes' must list at least two class names")
        for c in classes:
            if not isinstance(c, str) or not c.strip():
                raise SchemaError(f"head {self.name!r}: class {c!r} must be a non-empty string")
        if len(set(classes)) != len(classes):
            dupes = sorted({c for c in classes if classes.count(c) > 1})
            raise SchemaError(f"head {self.name!r}: duplicate classes {dupes}")
        object.__setattr__(self, "classes", classes)
        if not self.column:
            object.__setattr__(self, "column", self.name)
        for role in ("positive_class", "negative_class"):
            value = getattr(self, role)
            if value is not None and value not in classes:
                raise SchemaError(
                    f"head {self.name!r}: {role} {value!r} is not one of its classes {list(classes)}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        """Position of ``label`` in this head's classes; ``SchemaError`` names the head if unknown."""
        try:
            return self.classes.index(label)
        except ValueError:
            raise SchemaError(
                f"unknown label {label!r} for head {self.name!r}; expected one of {list(self.classes)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "classes": list(self.classes)}
        if self.column != self.name:
            out["column"] = self.column
        for key in ("description", "positive_class", "negative_class"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class LabelSchema:
    """An ordered set of heads. The order fixes the order of model outputs."""

    heads: tuple[Head, ...]
    name: str = "tierwise-default"
    version: str = "1"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.heads:
            raise SchemaError("a schema needs at least one head under 'heads'")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise SchemaError(f"duplicate head names in schema: {names}")
        object.__setattr__(self, "heads", tuple(self.heads))

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]

    def head(self, name: str) -> Head:
        for h in self.heads:
            if h.name == name:
                return h
        raise SchemaError(f"no head named {name!r}; the schema has {self.head_names}")

    def __contains__(self, name: object) -> bool:
        return any(h.name == name for h in self.heads)

    # -- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> LabelSchema:
        if not isinstance(data, dict):
            raise SchemaError(f"{source}: a schema must be a mapping with a 'heads' list")
        raw_heads = data.get("heads")
        if not isinstance(raw_heads, list) or not raw_heads:
            raise SchemaError(f"{source}: 'heads' must be a non-empty list of heads")
        heads = []
        allowed = {"name", "classes", "column", "description", "positive_class", "negative_class"}
        for i, raw in enumerate(raw_heads):
            if not isinstance(raw, dict):
                raise SchemaError(f"{source}: heads[{i}] must be a mapping with 'name' and 'classes'")
            unknown = set(raw) - allowed
            if unknown:
                raise SchemaError(
                    f"{source}: heads[{i}] has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"
                )
            if "name" not in raw or "classes" not in raw:
                raise SchemaError(f"{source}: heads[{i}] needs both 'name' and 'classes'")
            try:
                heads.append(Head(**raw))
            except SchemaError as exc:
                raise SchemaError(f"{source}: heads[{i}]: {exc}") from None
        extra = {k: v for k, v in data.items() if k not in {"heads", "name", "version"}}
        return cls(
            heads=tuple(heads),
            name=str(data.get("name", "custom")),
            version=str(data.get("version", "1")),
            extra=extra,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> LabelSchema:
        data = read_yaml(path, SchemaError, "schema file")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "heads": [h.to_dict() for h in self.heads],
            **self.extra,
        }

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @classmethod
    def default(cls) -> LabelSchema:
        """The shipped default (``DEFAULT_SCHEMA_PATH``): tier, task and sensitivity heads."""
        return cls.from_yaml(DEFAULT_SCHEMA_PATH)

