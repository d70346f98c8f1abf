"""Bundles: the directory (or ``.tar.gz``) of files a router loads, and its hash manifest.

A bundle holds ``model.onnx``, ``tokenizer.json``, ``schema.yaml``, ``policy.yaml``,
``calibration.json`` and ``manifest.json`` (layout in docs/design.md). The manifest records the
sha256 of every other file, so a router can refuse a bundle that was tampered with, is missing a
file or was written in a format it does not know, before it serves a single request.

This module writes bundles (``write_bundle`` by file role, ``write_bundle_files`` from a name ->
content map) and their manifests, verifies them (``verify_bundle``, ``load_verified`` which also
returns the verified bytes), changes single files (``update_bundle_file`` re-hashes the manifest),
packs bundles into ``.tar.gz`` archives (``pack``) and unpacks them safely (``unpack``). It knows nothing about what the
files mean (the runtime parses them) and imports the standard library and pydantic only, so routers can use
it without torch.

**Bounded loading.** Nothing is read whole before it is checked. ``manifest.json`` must be a
regular file inside the bundle (no symlink, no hard link: ``st_nlink == 1``, its real path inside
the bundle) and at most ``LoadLimits.max_manifest_bytes``. Every other file is opened without
following links, its size (``fstat``) checked against the manifest's ``sizes`` and the
per-file and total caps, then read in chunks while it is hashed. Archives are read as a stream:
each tar header is checked (type, name, size against the caps and the manifest, sparse and special
members refused, oversized extended headers refused) before a byte of its data is written, and
members are hashed while they are extracted. Every refusal is a ``BundleError``.

Signatures (``manifest.sig``, Ed25519 over the exact bytes of ``manifest.json``) are made and
checked in ``signing.py``; this module only carries the file along (it is the one file a
manifest does not list, and rewriting the manifest removes it, since it no longer matches).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import re
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata, resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from classifier.errors import BundleError, from_validation

logger = logging.getLogger(__name__)

FORMAT = "tierwise-bundle"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
SCHEMA_FILE = "schema.yaml"
POLICY_FILE = "policy.yaml"
CALIBRATION_FILE = "calibration.json"
# Files a router cannot work without. calibration.json may be absent (temperatures 1.0).
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE, SCHEMA_FILE, POLICY_FILE)
KINDS = ("teacher", "student")
QUANTIZATIONS = (None, "int8")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")

# A bundle file name: one path component, no hidden files, nothing a shell or tar would misread.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CHUNK = 1 << 20
# tar extended headers (pax, GNU long names) are read whole by tarfile: refuse large ones first
_MAX_EXT_HEADER = 64 * 1024


@dataclass(frozen=True)
class LoadLimits:
    """Caps on what loading a bundle may read: checked from sizes (``fstat``, tar headers) before
    any data is read. Defaults fit the largest fp32 bundle with room to spare; override them with
    ``TIERWISE_BUNDLE_MAX_FILE_BYTES`` / ``TIERWISE_BUNDLE_MAX_TOTAL_BYTES`` (see ``from_env``)."""

    max_members: int = 64
    max_file_bytes: int = 512 * 1024 * 1024
    max_total_bytes: int = 1024 * 1024 * 1024
    max_manifest_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_members", "max_file_bytes", "max_total_bytes", "max_manifest_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BundleError(f"load limit {name} must be an integer >= 1, got {value!r}")

    @classmethod
    def from_env(cls) -> LoadLimits:
        kwargs: dict[str, int] = {}
        for env, name in (("TIERWISE_BUNDLE_MAX_FILE_BYTES", "max_file_bytes"),
                          ("TIERWISE_BUNDLE_MAX_TOTAL_BYTES", "max_total_bytes")):
            raw = os.environ.get(env)
            if raw:
                try:
                    kwargs[name] = int(raw)
                except ValueError:
                    raise BundleError(f"{env} must be an integer number of bytes, got {raw!r}") from None
        return cls(**kwargs)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _at_least(minimum: int) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be an integer >= {minimum}, got {value!r}")
        return value
    return BeforeValidator(check)


def _str_map(value: Any) -> Any:
    """A mapping of strings (keys and values as ``str``); None/empty -> ``{}``."""
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping, got {value!r}")
    return {str(k): str(v) for k, v in value.items()}


class InputLimits(BaseModel):
    """What the runtime accepts: tokens per prompt, characters read per prompt, prompts per batch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: Annotated[int, _at_least(1)] = 128
    max_chars: Annotated[int, _at_least(1)] = 4096
    max_batch: Annotated[int, _at_least(1)] = 256

    def to_dict(self) -> dict[str, int]:
        return self.model_dump()


class Manifest(BaseModel):
    """The parsed ``manifest.json``. Keys it does not know are kept as they are (``extra``, e.g. the
    parity report): they are signed with the rest and newer writers add them, so they are not
    refused; the fields it does know are typed and checked (nested ``input_limits``: extra="forbid")."""

    model_config = ConfigDict(extra="allow", frozen=True)

    format: Literal["tierwise-bundle"] = FORMAT
    format_version: Literal[1] = FORMAT_VERSION
    kind: Literal["teacher", "student"]
    files: dict[str, str]
    training_run_id: Annotated[str | None, BeforeValidator(_opt_str)] = None
    mlflow_model_version: Annotated[str | None, BeforeValidator(_opt_str)] = None
    library_versions: Annotated[dict[str, str], BeforeValidator(_str_map)] = {}
    input_limits: InputLimits
    quantization: Literal["int8"] | None = None
    created_at: Annotated[str, BeforeValidator(lambda v: str(v or ""))] = ""
    # bytes per file (checked from fstat / tar headers before a file is read); {} in old manifests
    sizes: Annotated[dict[str, Annotated[int, _at_least(0)]], BeforeValidator(lambda v: v or {})] = {}

    @field_validator("files")
    @classmethod
    def _files(cls, files: dict[str, str]) -> dict[str, str]:
        if not files:
            raise ValueError("must map every bundle file to its sha256")
        for name, digest in files.items():
            if not _FILE_NAME.match(name):
                raise ValueError(f"entry {name!r} is not a valid bundle file name (one path component of "
                                 "letters, digits, '.', '_' or '-')")
            if name == MANIFEST_FILE:
                raise ValueError("cannot list the manifest itself")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"entry {name} must be a sha256 hex digest, got {digest!r}")
        return files

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        files = info.data.get("files") or {}
        return {k: v for k, v in sizes.items() if k in files}  # others are never read

    @property
    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def to_dict(self) -> dict[str, Any]:
        """The manifest as written: this key order, ``files``/``sizes`` sorted, unknown keys last."""
        out: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "kind": self.kind,
            "files": dict(sorted(self.files.items())),
            "training_run_id": self.training_run_id,
            "mlflow_model_version": self.mlflow_model_version,
            "library_versions": dict(self.library_versions),
            "input_limits": self.input_limits.to_dict(),
            "quantization": self.quantization,
            "created_at": self.created_at,
        }
        if self.sizes:
            out["sizes"] = dict(sorted(self.sizes.items()))
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: str = MANIFEST_FILE) -> Manifest:
        """Parse and check a manifest; ``BundleError`` names the field at fault. The format and its
        version are checked first: a manifest of another format is not read field by field."""
        if not isinstance(data, Mapping):
            raise BundleError(f"{source}: must be a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise BundleError(f"{source}: unknown bundle format {fmt!r}; expected {FORMAT!r}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{source}: unsupported format_version {version!r}; this tierwise reads version "
                f"{FORMAT_VERSION}. Re-export the bundle with this version of tierwise"
            )
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise from_validation(exc, BundleError, source) from None


def _check_name(name: Any, source: str) -> None:
    if not isinstance(name, str) or not _FILE_NAME.match(name):
        raise BundleError(
            f"{source}: {name!r} is not a valid bundle file name (one path component of letters, "
            "digits, '.', '_' or '-')"
        )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # write-then-rename: a reader never sees half a file, a crash never leaves one
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _bundle_files(directory: Path) -> list[str]:
    """Names of the files in a bundle directory (the manifest excluded); refuses subfolders."""
    names = []
    for entry in sorted(directory.iterdir()):
        if entry.name in (MANIFEST_FILE, SIGNATURE_FILE):
            continue
        if not entry.is_file() or entry.is_symlink():
            raise BundleError(f"{directory}: {entry.name!r} is not a plain file; a bundle holds plain files only")
        _check_name(entry.name, str(directory))
        names.append(entry.name)
    return names


# -- writing ------------------------------------------------------------------------------------
def write_manifest(directory: str | Path, **meta: Any) -> Manifest:
    """Hash every file in ``directory`` and write ``manifest.json``.

    ``meta`` holds the manifest fields (``kind``, ``input_limits``, ``training_run_id``, ...);
    keys that are not manifest fields are kept as extra entries (e.g. ``parity``). Required files
    must be present.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    names = _bundle_files(directory)
    missing = [n for n in REQUIRED_FILES if n not in names]
    if missing:
        raise BundleError(f"{directory}: cannot write a manifest, required file(s) missing: {missing}")
    meta = dict(meta)
    limits = meta.pop("input_limits", None)  # a mapping or InputLimits, checked with the manifest
    data: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": meta.pop("kind", "teacher"),
        "files": {n: sha256_file(directory / n) for n in names},
        "sizes": {n: (directory / n).stat().st_size for n in names},
        "training_run_id": meta.pop("training_run_id", None),
        "mlflow_model_version": meta.pop("mlflow_model_version", None),
        "library_versions": meta.pop("library_versions", {}) or {},
        "input_limits": InputLimits() if limits is None else limits,
        "quantization": meta.pop("quantization", None),
        "created_at": meta.pop("created_at", None) or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
    }
    manifest = Manifest.from_dict(data, source=str(directory / MANIFEST_FILE))
    _write_manifest_file(directory, manifest)
    return manifest


def _write_manifest_file(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest.json``; a signature over the old manifest no longer holds and is removed."""
    _atomic_write(directory / MANIFEST_FILE, _dump(manifest))
    sig = directory / SIGNATURE_FILE
    if sig.is_file() or sig.is_symlink():
        sig.unlink()
        logger.warning("%s: the manifest changed, its signature was removed; sign the bundle again "
                       "(tierwise sign %s --key ...)", directory, directory)


def _json_default(value: Any) -> Any:
    # extras come from callers' reports: numpy scalars/arrays and paths are written as plain JSON
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, PurePosixPath)):
        return str(value)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON serialisable")


def _dump(manifest: Manifest) -> bytes:
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False, default=_json_default)
    return (text + "\n").encode("utf-8")


def write_bundle_files(directory: str | Path, files: Mapping[str, bytes | str | Path], **meta: Any) -> Manifest:
    """Create a bundle directory from ``files`` (name -> bytes, text or a source path) + manifest.

    The directory must be new, empty, or an old bundle (which is replaced as a whole).
    """
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise BundleError(f"{directory} exists and is not a directory")
        leftovers = [p.name for p in directory.iterdir()]
        if leftovers and MANIFEST_FILE not in leftovers:
            raise BundleError(
                f"{directory} is not empty and is not a bundle ({sorted(leftovers)[:5]}); "
                "choose an empty or new output directory"
            )
        for p in directory.iterdir():  # an old bundle: replace it whole, never mix files
            if p.is_file() or p.is_symlink():
                p.unlink()
            else:
                raise BundleError(f"{directory}: cannot replace old bundle, {p.name!r} is a directory")
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        _check_name(name, str(directory))
        if name in (MANIFEST_FILE, SIGNATURE_FILE):
            raise BundleError(f"write_bundle: {name} is written by tierwise, not passed as a file")
        if isinstance(content, Path):
            data = content.read_bytes()
        elif isinstance(content, str):
            data = content.encode("utf-8")
        else:
            data = bytes(content)
        _atomic_write(directory / name, data)
    return write_manifest(directory, **meta)


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that produce or read bundles (those installed)."""
    out = {"python": platform.python_version()}
    for dist in ("tierwise", "torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def identity_calibration(head_names: list[str]) -> str:
    """``calibration.json`` text with every temperature 1.0 and no ``biases`` (the identity, until
    ``tierwise calibrate`` refits)."""
    doc = {"temperatures": {h: 1.0 for h in head_names}, "fitted_on": None, "metrics": {},
           "note": "identity temperatures written at export; run tierwise calibrate"}
    return json.dumps(doc, indent=2) + "\n"


def write_bundle(
    directory: str | Path,
    files: Mapping[str, bytes | str | Path] | None = None,
    *,
    onnx_bytes: bytes | None = None,
    tokenizer_path: str | Path | None = None,
    schema: Any = None,
    policy_path: str | Path | None = None,
    calibration: str | bytes | None = None,
    kind: str = "teacher",
    max_length: int | None = None,
    extra: Mapping[str, Any] | None = None,
    **meta: Any,
) -> Path:
    """Write a complete bundle and return its directory.

    Give the files either in ``files`` (name -> bytes/text/path) or by role: ``onnx_bytes``,
    ``tokenizer_path``, ``schema`` (a ``LabelSchema`` or YAML text), ``policy_path`` (default: the
    example policy shipped in ``classifier/serving``) and ``calibration`` (default: temperatures 1.0).
    ``max_length`` sets ``input_limits`` (unless ``input_limits`` is in ``meta``); ``extra`` and
    ``meta`` become manifest entries (``training_run_id``, ``quantization``, ``parity``, ...).
    """
    out: dict[str, bytes | str | Path] = dict(files or {})
    if onnx_bytes is not None:
        out[MODEL_FILE] = bytes(onnx_bytes)
    if tokenizer_path is not None:
        out[TOKENIZER_FILE] = Path(tokenizer_path)
    head_names: list[str] | None = None
    if schema is not None:
        if hasattr(schema, "to_yaml"):
            head_names = list(schema.head_names)
            with tempfile.TemporaryDirectory() as tmp:
                schema.to_yaml(Path(tmp) / SCHEMA_FILE)
                out[SCHEMA_FILE] = (Path(tmp) / SCHEMA_FILE).read_bytes()
        else:
            out[SCHEMA_FILE] = schema
    if policy_path is not None:
        out[POLICY_FILE] = Path(policy_path)
    elif POLICY_FILE not in out:
        out[POLICY_FILE] = resources.files("classifier.serving").joinpath("policy.example.yaml").read_bytes()
    if calibration is not None:
        out[CALIBRATION_FILE] = calibration
    elif CALIBRATION_FILE not in out and head_names is not None:
        out[CALIBRATION_FILE] = identity_calibration(head_names)
    missing = [n for n in REQUIRED_FILES if n not in out]
    if missing:
        raise BundleError(f"write_bundle: required file(s) {missing} not given")
    for name, content in out.items():
        if isinstance(content, Path) and not content.is_file():
            raise BundleError(f"write_bundle: source of {name} ({content}) does not exist")
    meta = {**meta, **dict(extra or {})}
    if max_length is not None and "input_limits" not in meta:
        meta["input_limits"] = InputLimits(max_length=int(max_length), max_chars=32 * int(max_length))
    meta.setdefault("library_versions", library_versions())
    write_bundle_files(directory, out, kind=kind, **meta)
    return Path(directory)


def update_bundle_file(directory: str | Path, name: str, data: bytes | str) -> Manifest:
    """Replace (or add) one file of a verified bundle and re-hash the manifest.

    The bundle is verified first: re-hashing a tampered bundle would launder the tampering.
    """
    directory = Path(directory)
    _check_name(name, str(directory))
    if name in (MANIFEST_FILE, SIGNATURE_FILE):
        raise BundleError(f"update_bundle_file: {name} is rewritten by tierwise, not passed in")
    manifest = verify_bundle(directory)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    _atomic_write(directory / name, payload)
    files = dict(manifest.files)
    files[name] = sha256_bytes(payload)
    sizes = {n: (directory / n).stat().st_size for n in files}
    updated = manifest.model_copy(update={"files": files, "sizes": sizes})
    _write_manifest_file(directory, updated)
    archive = directory.with_name(directory.name + ".tar.gz")
    if archive.is_file():  # keep the shipped archive in step with the directory it was packed from
        pack(directory, archive)
    return updated


def update_manifest(directory: str | Path, **changes: Any) -> Manifest:
    """Change manifest metadata (not file hashes) of a verified bundle, e.g. a calibration note."""
    directory = Path(directory)
    manifest = verify_bundle(directory)
    data = manifest.to_dict()
    if "files" in changes or "format" in changes or "format_version" in changes:
        raise BundleError("update_manifest cannot change files or format; use update_bundle_file")
    data.update(changes)
    updated = Manifest.from_dict(data, source=str(directory / MANIFEST_FILE))
    _write_manifest_file(directory, updated)
    return updated


# -- reading and verifying ------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifiedBundle:
    """What ``read_verified`` returns: the manifest, its exact bytes (what a signature covers and
    what ``bundle_hash`` names), the signature file's bytes (None when unsigned) and the verified
    bytes of the files asked for."""

    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes | None
    contents: dict[str, bytes]

    @property
    def digest(self) -> str:
        """sha256 of ``manifest.json``: pins the whole bundle (the manifest hashes every file)."""
        return sha256_bytes(self.manifest_bytes)


_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open_regular(path: Path, what: str) -> tuple[int, os.stat_result]:
    """An fd of ``path`` opened without following a final symlink, and its fstat; a symlink, a
    device, a FIFO or a folder is refused before anything is read."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise BundleError(f"{path}: {what} is missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise BundleError(f"{path}: {what} is a symlink; a bundle holds regular files only")
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: {what} is not a regular file; a bundle holds regular files only")
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise BundleError(f"{path}: cannot open {what} ({exc.strerror})") from None
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
        os.close(fd)
        raise BundleError(f"{path}: {what} changed while it was opened; refusing it")
    return fd, fst


def _read_fd(fd: int, size: int, path: Path, hasher: Any = None, keep: bool = True) -> bytes:
    """Read exactly ``size`` bytes in chunks (hashing as it goes); a file that grew or shrank since
    its fstat is refused, so no more than ``size`` bytes are ever held."""
    buf = bytearray() if keep else None
    left = size
    while left > 0:
        chunk = os.read(fd, min(_CHUNK, left))
        if not chunk:
            raise BundleError(f"{path}: the file shrank while it was read; refusing it")
        if hasher is not None:
            hasher.update(chunk)
        if buf is not None:
            buf += chunk
        left -= len(chunk)
    if os.read(fd, 1):
        raise BundleError(f"{path}: the file grew while it was read; refusing it")
    return bytes(buf) if buf is not None else b""


def _read_manifest_bytes(directory: Path, limits: LoadLimits) -> bytes:
    """The bytes of ``manifest.json``, which must be a regular file of this bundle: not a symlink,
    not a hard link (``st_nlink == 1``, so it cannot be a second name of a file elsewhere), its
    real path inside the bundle, and no larger than ``limits.max_manifest_bytes``."""
    path = directory / MANIFEST_FILE
    if not os.path.lexists(path):
        raise BundleError(f"{directory} is not a tierwise bundle: {MANIFEST_FILE} is missing")
    real_dir = os.path.realpath(directory)
    if os.path.dirname(os.path.realpath(path)) != real_dir:
        raise BundleError(f"{path}: resolves outside the bundle ({os.path.realpath(path)}); "
                          f"{MANIFEST_FILE} must be a regular file inside the bundle")
    fd, st = _open_regular(path, MANIFEST_FILE)
    try:
        if st.st_nlink != 1:
            raise BundleError(f"{path}: {MANIFEST_FILE} is a hard link ({st.st_nlink} names for one file); "
                              "it must be a regular file of this bundle only. Copy the bundle instead of linking it")
        if st.st_size > limits.max_manifest_bytes:
            raise BundleError(f"{path}: {st.st_size} bytes, over the limit of {limits.max_manifest_bytes} "
                              "for a manifest; refusing to read it")
        return _read_fd(fd, st.st_size, path)
    finally:
        os.close(fd)


def _parse_manifest(data: bytes, path: Path) -> Manifest:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); the manifest is damaged, re-export the bundle") from None
    return Manifest.from_dict(doc, source=str(path))


def read_manifest(directory: str | Path) -> Manifest:
    """Parse ``manifest.json`` without checking file hashes (the manifest itself is checked:
    a regular file of the bundle, bounded in size)."""
    directory = Path(directory)
    return _parse_manifest(_read_manifest_bytes(directory, LoadLimits()), directory / MANIFEST_FILE)


def _hash_mismatch(directory: Path, name: str, digest: str, actual: str) -> BundleError:
    return BundleError(
        f"{directory}: file {name!r} does not match its manifest hash (expected {digest[:12]}..., "
        f"got {actual[:12]}...): the bundle was modified after export. Re-export it, or change "
        "files only through update_bundle_file"
    )


def read_verified(directory: str | Path, names: tuple[str, ...] | None = None,
                  limits: LoadLimits | None = None) -> VerifiedBundle:
    """Verify a bundle directory, bounded, and return its manifest (and bytes), signature bytes
    and the bytes of ``names`` (default: every file of the manifest).

    Sizes are checked (fstat against the manifest's ``sizes`` and ``limits``) before a file is
    read; files are hashed while they are read in chunks; the bytes returned are the bytes that
    were hashed (no second read a tamperer could race).
    """
    directory = Path(directory)
    limits = limits or LoadLimits.from_env()
    if not directory.is_dir():
        raise BundleError(f"bundle {directory} does not exist or is not a directory")
    manifest_bytes = _read_manifest_bytes(directory, limits)
    manifest = _parse_manifest(manifest_bytes, directory / MANIFEST_FILE)
    missing_req = [n for n in REQUIRED_FILES if n not in manifest.files]
    if missing_req:
        raise BundleError(f"{directory}: incomplete bundle, the manifest lists no {missing_req}")
    if len(manifest.files) + 2 > limits.max_members:
        raise BundleError(f"{directory}: the manifest lists {len(manifest.files)} files, over the limit of "
                          f"{limits.max_members - 2}")
    wanted = set(manifest.files if names is None else names)
    present = set(_bundle_files(directory))
    unlisted = sorted(present - set(manifest.files))
    if unlisted:
        raise BundleError(
            f"{directory}: file(s) {unlisted} are not in the manifest; a bundle may hold only the "
            "files its manifest lists (add files with update_bundle_file)"
        )
    opened: list[tuple[str, int, os.stat_result]] = []
    contents: dict[str, bytes] = {}
    try:
        total = 0
        for name in sorted(manifest.files):
            if name not in present:
                raise BundleError(f"{directory}: incomplete bundle, file {name!r} listed in the manifest is missing")
            fd, st = _open_regular(directory / name, f"bundle file {name!r}")
            opened.append((name, fd, st))
            _check_size(directory, name, st.st_size, manifest, limits)
            total += st.st_size
            if total > limits.max_total_bytes:
                raise BundleError(f"{directory}: the files add up to more than the limit of "
                                  f"{limits.max_total_bytes} bytes; refusing to read them")
        for name, fd, st in opened:
            h = hashlib.sha256()
            data = _read_fd(fd, st.st_size, directory / name, h, keep=name in wanted)
            actual = h.hexdigest()
            if actual != manifest.files[name]:
                raise _hash_mismatch(directory, name, manifest.files[name], actual)
            if name in wanted:
                contents[name] = data
    finally:
        for _, fd, _ in opened:
            os.close(fd)
    signature = None
    sig_path = directory / SIGNATURE_FILE
    if os.path.lexists(sig_path):
        fd, st = _open_regular(sig_path, SIGNATURE_FILE)
        try:
            if st.st_size > 64 * 1024:
                raise BundleError(f"{sig_path}: {st.st_size} bytes is too large for a signature")
            signature = _read_fd(fd, st.st_size, sig_path)
        finally:
            os.close(fd)
    return VerifiedBundle(manifest, manifest_bytes, signature, contents)


def _check_size(where: Any, name: str, size: int, manifest: Manifest | None, limits: LoadLimits) -> None:
    """Refuse a file from its size alone: over the per-file cap, or not the size the manifest records."""
    if size > limits.max_file_bytes:
        raise BundleError(f"{where}: file {name!r} is {size} bytes, over the limit of {limits.max_file_bytes} "
                          "bytes per bundle file; refusing to read it (raise TIERWISE_BUNDLE_MAX_FILE_BYTES "
                          "for a larger model)")
    if manifest is not None and name in manifest.sizes and manifest.sizes[name] != size:
        raise BundleError(f"{where}: file {name!r} is {size} bytes, the manifest records "
                          f"{manifest.sizes[name]}: the bundle was modified after export; refusing to read it")


def load_verified(directory: str | Path, names: tuple[str, ...] | None = None) -> tuple[Manifest, dict[str, bytes]]:
    """Verify a bundle directory and return its manifest and the bytes of ``names`` (see
    :func:`read_verified`, which also returns the manifest bytes and signature)."""
    verified = read_verified(directory, names)
    return verified.manifest, verified.contents


def verify_bundle(directory: str | Path) -> Manifest:
    """Check format, completeness, sizes and every hash of a bundle directory; return its manifest."""
    manifest, _ = load_verified(directory, names=())
    return manifest


# -- archives -----------------------------------------------------------------------------------
def is_archive(path: str | Path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def pack(directory: str | Path, out: str | Path | None = None) -> Path:
    """Verify a bundle and write it as ``<dir>.tar.gz`` (one top folder named like the bundle)."""
    directory = Path(directory)
    manifest = verify_bundle(directory)
    out = Path(out) if out is not None else directory.with_name(directory.name + ".tar.gz")
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    # fixed mtime/owner: the same bundle packs to the same archive contents
    mtime = 0
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        signed = [SIGNATURE_FILE] if (directory / SIGNATURE_FILE).is_file() else []
        # the manifest first: an unpacker checks every later member against it before extracting
        for name in [MANIFEST_FILE, *signed, *sorted(manifest.files)]:
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(f"{directory.name}/{name}")
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    _atomic_write(out, buf.getvalue())
    return out


class _GuardedTarInfo(tarfile.TarInfo):
    """tarfile reads pax and GNU long-name headers whole into memory: refuse large ones first."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                         tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) and self.size > _MAX_EXT_HEADER:
            raise BundleError(f"archive member header of {self.size} bytes (type {self.type!r}), over the limit "
                              f"of {_MAX_EXT_HEADER}; refusing to read it")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


def _member_path(archive: Path, m: tarfile.TarInfo) -> list[str]:
    p = PurePosixPath(m.name)
    if m.name.startswith(("/", "\\")) or p.is_absolute() or ".." in p.parts or "\\" in m.name:
        raise BundleError(f"{archive}: unsafe member path {m.name!r} (absolute or '..'); refusing to extract")
    if m.issparse():
        raise BundleError(f"{archive}: member {m.name!r} is a sparse file ({m.size} bytes when expanded); "
                          "refusing to extract")
    if not (m.isreg() or m.isdir()) or m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        raise BundleError(f"{archive}: member {m.name!r} is a link or special file; refusing to extract")
    return [x for x in p.parts if x not in ("", ".")]


def unpack(archive: str | Path, dest: str | Path, *, verify: bool = True,
           limits: LoadLimits | None = None) -> Path:
    """Extract a bundle archive into ``dest`` safely, bounded, and return the bundle directory.

    The archive is read as a stream. Each member's header is checked before any of its data is
    read: a safe ``<bundle>/<file>`` path (no absolute path, ``..``, links, devices, sparse
    files), at most ``limits.max_members`` members, each file at most ``limits.max_file_bytes``
    and all together at most ``limits.max_total_bytes``, no name twice, and, once the manifest
    has been read (``pack`` writes it first), only files it lists, of the size it records. Files
    are hashed while they are written and checked against the manifest. Then the extracted
    bundle is verified (``verify=False`` for callers that verify it themselves).
    """
    archive = Path(archive)
    dest = Path(dest)
    limits = limits or LoadLimits.from_env()
    if not archive.is_file():
        raise BundleError(f"bundle archive {archive} does not exist")
    try:
        tar = tarfile.open(archive, mode="r|*", tarinfo=_GuardedTarInfo)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{archive}: not a readable tar archive ({exc})") from None
    top: str | None = None
    manifest: Manifest | None = None
    hashes: dict[str, str] = {}
    count = total = 0
    try:
        with tar:
            for m in tar:
                count += 1
                if count > limits.max_members:
                    raise BundleError(f"{archive}: more than {limits.max_members} members; refusing to extract")
                parts = _member_path(archive, m)
                if not parts:
                    continue
                if top is None:
                    top = parts[0]
                    _check_name(top, str(archive))
                    (dest / top).mkdir(parents=True, exist_ok=True)
                elif parts[0] != top:
                    raise BundleError(f"{archive}: expected one top-level bundle folder, found {top!r} and {parts[0]!r}")
                if m.isdir():
                    if len(parts) != 1:
                        raise BundleError(f"{archive}: member {m.name!r} is a subfolder; a bundle holds files only")
                    continue
                if len(parts) != 2:
                    raise BundleError(
                        f"{archive}: member {m.name!r} is not '<bundle>/<file>'; a bundle archive holds one folder of files"
                    )
                name = parts[1]
                _check_name(name, str(archive))
                if name in hashes:
                    raise BundleError(f"{archive}: member {m.name!r} appears twice; refusing to extract")
                if name == MANIFEST_FILE and m.size > limits.max_manifest_bytes:
                    raise BundleError(f"{archive}: {MANIFEST_FILE} is {m.size} bytes, over the limit of "
                                      f"{limits.max_manifest_bytes}; refusing to extract")
                if name == SIGNATURE_FILE and m.size > 64 * 1024:
                    raise BundleError(f"{archive}: {SIGNATURE_FILE} is {m.size} bytes, too large for a signature")
                if name not in (MANIFEST_FILE, SIGNATURE_FILE):
                    if manifest is not None and name not in manifest.files:
                        raise BundleError(f"{archive}: member {m.name!r} is not in the manifest; refusing to extract")
                    _check_size(archive, name, m.size, manifest, limits)
                total += m.size
                if total > limits.max_total_bytes:
                    raise BundleError(f"{archive}: the members add up to more than the limit of "
                                      f"{limits.max_total_bytes} bytes; refusing to extract")
                hashes[name] = _extract_member(tar, m, dest / top / name, archive)
                if name == MANIFEST_FILE:
                    manifest = _parse_manifest((dest / top / name).read_bytes(), archive / m.name)
                    for seen, digest in hashes.items():  # members that came before the manifest
                        if seen in (MANIFEST_FILE, SIGNATURE_FILE):
                            continue
                        if seen not in manifest.files:
                            raise BundleError(f"{archive}: member {seen!r} is not in the manifest")
                        if manifest.files[seen] != digest:
                            raise _hash_mismatch(archive, seen, manifest.files[seen], digest)
                elif manifest is not None and name != SIGNATURE_FILE and manifest.files[name] != hashes[name]:
                    raise _hash_mismatch(archive, name, manifest.files[name], hashes[name])
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BundleError(f"{archive}: not a readable tar archive ({type(exc).__name__}: {exc})") from None
    if top is None:
        raise BundleError(f"{archive}: expected one top-level bundle folder, found none")
    bundle_dir = dest / top
    if verify:
        verify_bundle(bundle_dir)
    return bundle_dir


def _extract_member(tar: tarfile.TarFile, m: tarfile.TarInfo, out: Path, archive: Path) -> str:
    """Stream one regular member to ``out`` (a new file) while hashing it; return its sha256."""
    src = tar.extractfile(m)
    if src is None:  # pragma: no cover - regular members always have a file object
        raise BundleError(f"{archive}: member {m.name!r} has no data")
    h = hashlib.sha256()
    written = 0
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600)
    try:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > m.size:  # pragma: no cover - tarfile never returns more than the header says
                raise BundleError(f"{archive}: member {m.name!r} holds more data than its header says")
            h.update(chunk)
            os.write(fd, chunk)
    finally:
        os.close(fd)
    if written != m.size:
        raise BundleError(f"{archive}: member {m.name!r} is cut short ({written} of {m.size} bytes)")
    return h.hexdigest()


class OpenedBundle:
    """A bundle directory ready to read: the directory itself, or a safe, bounded temporary
    extraction of an archive (removed by :meth:`close`). Files are not verified here: read them
    through :func:`read_verified`."""

    def __init__(self, path: str | Path, limits: LoadLimits | None = None) -> None:
        path = Path(path)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path.is_file() and is_archive(path):
            self._tmp = tempfile.TemporaryDirectory(prefix="tierwise-bundle-")
            try:
                # the caller (Router.load) verifies every file as it reads it
                self.directory = unpack(path, self._tmp.name, verify=False, limits=limits)
            except BaseException:
                self._tmp.cleanup()
                raise
        elif path.is_dir():
            self.directory = path
        elif not path.exists():
            raise BundleError(f"bundle {path} does not exist (give a bundle directory or its .tar.gz)")
        else:
            raise BundleError(f"bundle {path} is neither a directory nor a .tar.gz archive")
        self.source = path

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> OpenedBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
