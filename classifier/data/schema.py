"""The label schema: which heads the classifier has and the ordered classes of each.

A schema is plain data, loaded from YAML (``classifier/data/schema.yaml``, package data read through
``importlib.resources``, is the shipped default: ``DEFAULT_SCHEMA_PATH``) so that
users can train on their own routing logs with their own heads and classes. It does not know how
labels are derived from sources (that is the builder's job) nor how they are routed (the policy's).
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from classifier.errors import SchemaError, from_validation
from classifier.yaml_io import read_yaml

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# the shipped default schema (tier, task, sensitivity); pip unpacks wheels, so it is a real file
DEFAULT_SCHEMA_PATH = Path(str(files("classifier.data").joinpath("schema.yaml")))


class Head(BaseModel):
    """One classification head.

    ``column`` is the data column holding the label (defaults to ``name``); a row whose label is
    null simply does not train this head. ``positive_class`` names the class whose probability the
    policy thresholds (e.g. ``frontier`` for the tier head); ``negative_class`` names the benign
    class of a gate head (e.g. ``none`` for sensitivity).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    classes: tuple[str, ...]
    column: str = ""
    description: str = ""
    positive_class: str | None = None
    negative_class: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"is not a valid head name: use lower-case letters, digits and '_', starting "
                             f"with a letter; got {name!r}")
        return name

    @field_validator("classes")
    @classmethod
    def _classes(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if len(classes) < 2:
            raise ValueError("must list at least two class names")
        if not all(c.strip() for c in classes):
            raise ValueError(f"must be non-empty strings, got {list(classes)}")
        if len(set(classes)) != len(classes):
            raise ValueError(f"has duplicate classes {sorted({c for c in classes if classes.count(c) > 1})}")
        return classes

    @model_validator(mode="before")
    @classmethod
    def _column(cls, data: Any) -> Any:
        return {**data, "column": data.get("column") or data.get("name")} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _roles(self) -> Head:
        for role in ("positive_class", "negative_class"):
            value = getattr(self, role)
            if value is not None and value not in self.classes:
                raise ValueError(f"{role} {value!r} is not one of its classes {list(self.classes)}")
        return self

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


class LabelSchema(BaseModel):
    """An ordered set of heads. The order fixes the order of model outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    heads: tuple[Head, ...]
    name: str = "tierwise-default"
    version: str = "1"

    @field_validator("heads")
    @classmethod
    def _heads(cls, heads: tuple[Head, ...]) -> tuple[Head, ...]:
        names = [h.name for h in heads]
        if not heads:
            raise ValueError("must list at least one head")
        if len(set(names)) != len(names):
            raise ValueError(f"has duplicate head names {names}")
        return heads

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
        """Validate a schema; ``SchemaError`` names every field at fault and ``source``."""
        try:
            return cls.model_validate({"name": "custom", **data} if isinstance(data, dict) else data)
        except ValidationError as exc:
            raise from_validation(exc, SchemaError, source) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> LabelSchema:
        data = read_yaml(path, SchemaError, "schema file")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "heads": [h.to_dict() for h in self.heads],
        }

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @classmethod
    def default(cls) -> LabelSchema:
        """The shipped default (``DEFAULT_SCHEMA_PATH``): tier, task and sensitivity heads."""
        return cls.from_yaml(DEFAULT_SCHEMA_PATH)

