"""The one exception hierarchy of tierwise.

Every error a user can cause (bad data, bad config, bad policy, bad bundle, bad request) is a
``TierwiseError``. The CLI prints its message and exits 2; the HTTP app maps it to a 4xx JSON
answer (400 unless the subclass says otherwise). Messages name the file, row or field at fault
and say how to fix it. Programming errors are left as ordinary Python exceptions.
"""

from __future__ import annotations


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


def from_validation(exc: ValueError, error: type[TierwiseError], source: str) -> TierwiseError:
    """One ``error`` for a pydantic ``ValidationError`` of a typed config (prices, label schema,
    bundle manifest): ``source: <problem>; <problem>``, each problem as ``<field path> <what is
    wrong>``, e.g. ``models.gpt-4.tier must be one of 'cheap' or 'frontier', got 'gold'`` or
    ``heads[1] has unknown keys ['colour']``. A validator's own ``ValueError`` message is used as
    is (it is written to follow the field path)."""
    def dotted(loc: tuple) -> str:
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
    return error(f"{source}: {'; '.join(problems)}")
