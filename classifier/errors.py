"""The one exception hierarchy of tierwise.

Every error a user can cause (bad data, bad config, bad policy, bad bundle, bad request) is a
``TierwiseError``. The CLI prints its message and exits 2; the HTTP app maps it to a 4xx JSON
answer (400 unless the subclass says otherwise). Messages name the file, row or field at fault
and say how to fix it. Programming errors are left as ordinary Python exceptions.

``TypedConfig`` is the base of the small keyword-built settings (the data build's sections, the
model view, drift, export...): a pydantic model whose invalid values raise one of these errors.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError


class TierwiseError(Exception):
    """Base class of every user-facing error. ``http_status`` is what the server answers."""

    http_status: int = 400


class ConfigError(TierwiseError, ValueError):
    """A configuration value (dataclass field, YAML key, CLI flag) is missing or invalid."""


class SchemaError(TierwiseError, ValueError):
    """A label schema is malformed, or data does not match it."""


class DataError(TierwiseError, ValueError):
    """A data file cannot be read, or (in strict mode) holds a bad row."""


class PolicyError(TierwiseError, ValueError):
    """A routing policy file is malformed."""


class BundleError(TierwiseError):
    """A model bundle is missing, incomplete, tampered with or of an unknown format."""


class ExportValidationError(TierwiseError):
    """An exported ONNX model disagrees with the PyTorch model beyond tolerance."""


class InputError(TierwiseError, ValueError):
    """A request to the runtime or server is malformed (type, size, encoding)."""


class PayloadTooLargeError(InputError):
    """A request body or batch is over the configured limit."""

    http_status = 413


class AuditError(TierwiseError):
    """An audit log is unreadable or its hash chain is broken."""


def from_validation(exc: ValueError, error: type[TierwiseError], source: str, prefix: str = "") -> TierwiseError:
    """One ``error`` for a pydantic ``ValidationError`` of a typed config (prices, label schema,
    bundle manifest): ``source: <problem>; <problem>``, each problem as ``<field path> <what is
    wrong>``, e.g. ``models.gpt-4.tier must be one of 'cheap' or 'frontier', got 'gold'`` or
    ``heads[1] has unknown keys ['colour']``. A validator's own ``ValueError`` message is used as
    is (it is written to follow the field path). ``prefix`` starts every path (``dedup`` gives
    ``dedup.num_perm``); an empty ``source`` is left out."""
    def dotted(loc: tuple) -> str:
        loc = (prefix, *loc) if prefix else loc
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")

    problems: list[str] = []
    unknown: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):  # type: ignore[attr-defined]
        loc, ctx = err["loc"], err.get("ctx") or {}
        path = dotted(loc)
        if err["type"] == "extra_forbidden":
            unknown.setdefault(dotted(loc[:-1]) or "the top level", []).append(str(loc[-1]))
            continue
        if err["type"] == "missing":
            what = "is missing"
        elif isinstance(ctx.get("error"), (ValueError, TierwiseError)):
            what = str(ctx["error"])
        elif err["type"] == "literal_error":
            what = f"must be one of {ctx.get('expected')}, got {err['input']!r}"
        else:
            what = f"is invalid: {err['msg']} (got {err['input']!r})"
        problems.append(f"{path or 'the top level'} {what}")
    problems += [f"{parent} has unknown keys {sorted(keys)}" for parent, keys in unknown.items()]
    return error(f"{source}: {'; '.join(problems)}" if source else "; ".join(problems))


class TypedConfig(BaseModel):
    """A settings model built with keywords: unknown keys and invalid values raise ``_error``
    naming each field as ``<_path>.<field>`` (``dedup.num_perm is invalid: ...``). Nested in
    another ``TypedConfig`` its fields are named from the outer model's path."""

    model_config = ConfigDict(extra="forbid")
    _path: ClassVar[str] = ""
    _error: ClassVar[type[TierwiseError]] = ConfigError

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise from_validation(exc, self._error, "", self._path) from None

    # nested in another model, pydantic validates the fields directly (the outer __init__ maps the error)
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> Any:
        """``cls(**data)`` for a parsed file (None: the defaults); errors name ``source`` first."""
        if data is not None and not isinstance(data, dict):
            raise cls._error(f"{source}: must be a mapping of keys to values, got {type(data).__name__}")
        try:
            return cls(**(data or {}))
        except cls._error as exc:
            raise cls._error(f"{source}: {exc}") from None
