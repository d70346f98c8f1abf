"""Loading users' labelled data (their own routing logs) into the frame the trainer reads.

``load_labelled(source, schema, config)`` reads JSON lines (``.jsonl``/``.json``), CSV, Parquet, a
directory written by ``datasets.Dataset.save_to_disk`` or an in-memory ``datasets.Dataset``,
renames the file's columns to ours (``LoadConfig.column_map``), checks every row against the label
schema (``classifier.data.validation``) and returns a ``LoadResult``: the good rows as a pandas
frame and every bad row as a ``RejectedRow`` naming file, row, field, reason and fix. Nothing is
dropped silently: ``n_read == n_ok + len(rejects)``. By default rejects are written to
``<input>.rejects.jsonl``; with ``strict=True`` the first bad row raises ``DataError``. It also
holds the ``tierwise data validate`` command.

Row numbers in rejects and errors: JSON lines give the 1-based line number (blank lines are not
records but are counted as lines); CSV gives the 1-based data record number, header excluded and
blank lines not counted (the reason names the physical line where the record starts, since a quoted
field may span lines); Parquet and Hugging Face datasets give the 0-based row index.

Values: in CSV an empty field is a null for every column but ``text`` (where it is an empty prompt),
and a soft target is written as a JSON list, ``"[0.2, 0.8]"``. In JSON lines ``""`` is not a null
label: write ``null``. Integer labels of a Hugging Face ``ClassLabel`` column are turned into their
class names (``-1`` is null). A ``.json`` file must be JSON lines; a JSON array is refused with a
hint. Invalid UTF-8 costs only the line (JSON lines) or record (CSV) that holds it.

It leaves out splitting, de-duplication, tokenisation and label derivation (the builder's job);
the whole file is read into memory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

from classifier.data.schema import LabelSchema
from classifier.data.validation import (
    ROW_UNITS,
    Problem,
    RejectedRow,
    RowValidator,
    label_counts,
    reject_counts,
    write_rejects,
)
from classifier.errors import ConfigError, DataError, TypedConfig

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("auto", "jsonl", "csv", "parquet", "hf")
FORMAT_ALIASES: dict[str, str] = {"json": "jsonl", "ndjson": "jsonl", "arrow": "hf"}
EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
    ".parquet": "parquet", ".pq": "parquet",
}
DEFAULT_MAX_CHARS = 20_000
IN_MEMORY = "<in-memory dataset>"
_UTF8_BOM = b"\xef\xbb\xbf"
# Bytes that are not valid UTF-8, as decoded with errors="surrogateescape".
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_UNIT_OF_FORMAT = {"jsonl": "line", "csv": "record", "parquet": "index", "hf": "index"}


# -- configuration ----------------------------------------------------------------------------
def parse_column_map(spec: str) -> dict[str, str]:
    """Parse the CLI form ``text=prompt,tier=label`` into ``{"text": "prompt", "tier": "label"}``."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        ours, sep, theirs = part.partition("=")
        ours, theirs = ours.strip(), theirs.strip()
        if not sep or not ours or not theirs:
            raise ValueError(f"{part!r} is not of the form our_column=file_column (e.g. --columns text=prompt,tier=label)")
        if ours in out:
            raise ValueError(f"column {ours!r} is mapped twice")
        out[ours] = theirs
    return out


def _one_to_one(cmap: dict[str, str]) -> dict[str, str]:
    sources = list(cmap.values())
    if dupes := sorted({s for s in sources if sources.count(s) > 1}):
        raise ValueError(f"file column(s) {dupes} are mapped to more than one column")
    return cmap


def _a_path(value: Any) -> Any:
    if value == "":
        raise ValueError("must be a file path, got ''")
    return value


Name = Annotated[str, Field(min_length=1)]


class LoadConfig(TypedConfig):
    """How to read a labelled file.

    ``format``: ``auto`` (by extension; a ``save_to_disk`` directory is ``hf``), ``jsonl``,
    ``csv``, ``parquet`` or ``hf``. ``column_map``: our column -> the file's column (a mapping, or
    the CLI string ``"text=prompt,tier=label"``); our columns are ``text``, each head's
    ``Head.column``, ``<column>_soft``, or any other name to rename a passthrough column.
    ``max_chars``: longest accepted prompt. ``strict``: raise on the first bad row instead of
    collecting rejects. ``rejects_path``: where rejects go (default ``<input>.rejects.jsonl``).
    """

    model_config = ConfigDict(frozen=True)

    format: Annotated[Literal[FORMATS], BeforeValidator(
        lambda v: FORMAT_ALIASES.get(v.strip().lower(), v.strip().lower()) if isinstance(v, str) else v)] = "auto"
    column_map: Annotated[dict[Name, Name], BeforeValidator(lambda v: parse_column_map(v) if isinstance(v, str) else v),
                          AfterValidator(_one_to_one)] = {}
    max_chars: int = Field(DEFAULT_MAX_CHARS, ge=1, strict=True)
    strict: bool = Field(False, strict=True)
    rejects_path: Annotated[Path | None, BeforeValidator(_a_path)] = None


@dataclass
class LoadResult:
    """Good rows as a frame plus every bad row.

    ``frame`` has ``text``, one column per head (``Head.column``; class-name strings or ``None``,
    object dtype), ``<column>_soft`` (list of floats or ``None``) where the file has it, then the
    file's other columns unchanged. ``rejects_path`` is where rejects were written (``None`` if
    there were none, or the source was in memory and no path was given).
    """

    frame: pd.DataFrame
    rejects: list[RejectedRow]
    n_read: int
    n_ok: int
    source: str = ""
    format: str = ""
    rejects_path: Path | None = None

    def reject_counts(self) -> dict[str, int]:
        return reject_counts(self.rejects)

    def label_counts(self, schema: LabelSchema) -> dict[str, dict[str, int]]:
        return label_counts(self.frame, schema)


# -- readers: each yields the file's rows, or the decode/parse problem of a row ----------------
@dataclass
class _RawRow:
    row: int
    record: dict[str, Any] | None  # keyed by the file's column names; None when unparseable
    raw: Any
    problem: Problem | None = None
    line: int | None = None  # physical start line (CSV)


@dataclass
class _Table:
    name: str
    format: str
    columns: list[str]
    rows: Iterator[_RawRow] | list[_RawRow]
    total: int | None
    n_parsed: int | None = None  # JSONL: lines that parsed to an object


def detect_format(path: str | Path) -> str:
    """The format ``auto`` picks for ``path``: by extension, or ``hf`` for a save_to_disk dir."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf"
        raise DataError(
            f"{path} is a directory but not one written by datasets' save_to_disk (no state.json "
            "or dataset_dict.json); point at a .jsonl, .csv or .parquet file instead"
        )
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; use one of "
            f"{sorted(EXTENSIONS)} or pass --format {{jsonl,csv,parquet,hf}}"
        )
    return fmt


def _unescape(text: str) -> str:
    """Show undecodable bytes (kept by surrogateescape) as \\xNN so the text is valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _read_jsonl(path: Path) -> _Table:
    data = path.read_bytes()
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    rows: list[_RawRow] = []
    columns: dict[str, None] = {}
    n_parsed = 0
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue  # a blank line is not a record (e.g. the file's final newline)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(_RawRow(lineno, None, line.decode("utf-8", "backslashreplace"), Problem(
                "invalid_utf8", None,
                f"line is not valid UTF-8 (byte {exc.start}: {line[exc.start:exc.start + 1]!r})",
            )))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rows.append(_RawRow(lineno, None, text, Problem(
                "malformed_json", None, f"malformed JSON at column {exc.colno}: {exc.msg}"
            )))
            continue
        except RecursionError:
            rows.append(_RawRow(lineno, None, text, Problem(
                "malformed_json", None, "JSON nested too deeply to read"
            )))
            continue
        if not isinstance(obj, dict):
            rows.append(_RawRow(lineno, None, text, Problem(
                "malformed_json", None,
                f"line is a JSON {type(obj).__name__}, but each line must be one JSON object",
            )))
            continue
        n_parsed += 1
        columns.update(dict.fromkeys(obj))
        rows.append(_RawRow(lineno, obj, obj))
    if rows and n_parsed == 0 and data.lstrip().startswith(b"["):
        raise DataError(
            f"{path}: this looks like one JSON array, not JSON lines; write one object per line "
            "(e.g. jq -c '.[]' in.json > out.jsonl)"
        )
    return _Table(str(path), "jsonl", list(columns), rows, len(rows), n_parsed)


def _read_csv(path: Path) -> _Table:
    data = path.read_bytes()
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM):]
    # surrogateescape keeps bad bytes in place, so only the record holding them is rejected.
    text = data.decode("utf-8", "surrogateescape")
    old_limit = csv.field_size_limit()
    # A long prompt is a row problem (text_too_long), not a reason for csv to give up on the file.
    csv.field_size_limit(max(old_limit, min(len(text) + 1, 2**31 - 1)))
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"{path}: cannot read the CSV header: {exc}") from None
        if header is None:
            raise DataError(f"{path} is empty: expected a header line and data records")
        if any(_ESCAPED_BYTE.search(h) for h in header):
            raise DataError(f"{path}: the header line is not valid UTF-8; re-encode the file as UTF-8")
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise DataError(f"{path}: the header names column(s) {dupes} more than once; rename them")
        rows: list[_RawRow] = []
        record_no = 0
        while True:
            start_line = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if reader.line_num < start_line:  # no progress: cannot resynchronise
                    raise DataError(f"{path}: line {start_line}: unreadable CSV: {exc}") from None
                record_no += 1
                rows.append(_RawRow(record_no, None, None, Problem(
                    "malformed_csv", None, f"unreadable CSV record: {exc}"), line=start_line))
                continue
            if not fields:
                continue  # blank line
            record_no += 1
            bad = [i for i, f in enumerate(fields) if _ESCAPED_BYTE.search(f)]
            if bad:
                col = header[bad[0]] if bad[0] < len(header) else None
                raw = {(header[i] if i < len(header) else f"field_{i + 1}"): _unescape(f)
                       for i, f in enumerate(fields)}
                rows.append(_RawRow(record_no, None, raw, Problem(
                    "invalid_utf8", col,
                    f"record is not valid UTF-8 (in column {col!r})" if col else
                    "record is not valid UTF-8"), line=start_line))
                continue
            if len(fields) != len(header):
                raw = {(header[i] if i < len(header) else f"field_{i + 1}"): f
                       for i, f in enumerate(fields)}
                rows.append(_RawRow(record_no, None, raw, Problem(
                    "malformed_csv", None,
                    f"record has {len(fields)} fields but the header has {len(header)}"),
                    line=start_line))
                continue
            record = dict(zip(header, fields, strict=True))  # lengths checked above
            rows.append(_RawRow(record_no, record, record, line=start_line))
    finally:
        csv.field_size_limit(old_limit)
    return _Table(str(path), "csv", list(header), rows, len(rows))


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from None

    def rows() -> Iterator[_RawRow]:
        index = 0
        try:
            for batch in pf.iter_batches(batch_size=4096):
                for record in batch.to_pylist():
                    yield _RawRow(index, record, record)
                    index += 1
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read rows from index {index} on: {exc}") from None

    return _Table(str(path), "parquet", list(pf.schema_arrow.names), rows(), pf.metadata.num_rows)


def _read_hf(dataset: Any, name: str) -> _Table:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        splits = list(dataset)
        where = (f"point at one split's directory, e.g. {name}/{splits[0]}" if name != IN_MEMORY
                 else f"pass one split, e.g. dataset[{splits[0]!r}]") if splits else "add a split"
        raise DataError(f"{name} holds a DatasetDict with splits {splits}; {where}")
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(
            f"{name}: expected a datasets.Dataset, got {type(dataset).__name__}; streaming "
            "(Iterable) datasets are not supported: materialise them first"
        )
    ds = dataset.with_format(None)  # plain Python values, whatever format the caller set
    class_labels = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}

    def label_name(feature: Any, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value == -1:  # the datasets convention for "no label"
                return None
            if 0 <= value < feature.num_classes:
                return feature.int2str(value)
        return value

    def rows() -> Iterator[_RawRow]:
        index = 0
        for batch in ds.iter(batch_size=1024):
            columns = list(batch)
            n = len(batch[columns[0]]) if columns else 0
            for i in range(n):
                raw = {c: batch[c][i] for c in columns}
                record = dict(raw)
                for c, feature in class_labels.items():
                    record[c] = label_name(feature, record[c])
                yield _RawRow(index, record, raw)
                index += 1

    return _Table(name, "hf", list(ds.column_names), rows(), ds.num_rows)


def _open(source: Any, config: LoadConfig) -> tuple[_Table, Path | None]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory")
        fmt = detect_format(path) if config.format == "auto" else config.format
        if fmt == "hf":
            import datasets

            try:
                dataset = datasets.load_from_disk(str(path))
            except (FileNotFoundError, ValueError, OSError) as exc:
                raise DataError(f"{path}: cannot load with datasets.load_from_disk: {exc}") from None
            return _read_hf(dataset, str(path)), path
        if path.is_dir():
            raise DataError(f"{path} is a directory; --format {fmt} needs a file")
        try:
            reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
            return reader(path), path
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
    if config.format not in {"auto", "hf"}:
        raise ConfigError(
            f"format: {config.format!r} was given but the source is an in-memory "
            f"{type(source).__name__}; use 'auto' or 'hf'"
        )
    module = type(source).__module__ or ""
    if not module.startswith("datasets"):
        raise DataError(
            f"cannot load a {type(source).__name__}: pass a file path or a datasets.Dataset"
        )
    return _read_hf(source, IN_MEMORY), None


# -- column mapping ---------------------------------------------------------------------------
def _resolve_columns(table: _Table, schema: LabelSchema, cmap: Mapping[str, str]) -> dict[str, str]:
    """File column -> our column. Raises ``DataError`` for a column the whole file lacks."""
    file_cols = table.columns
    missing = {ours: theirs for ours, theirs in cmap.items() if theirs not in file_cols}
    if missing:
        pairs = ", ".join(f"{ours}={theirs}" for ours, theirs in missing.items())
        raise DataError(
            f"{table.name}: mapped column(s) {sorted(missing.values())} ({pairs}) not in the file; "
            f"its columns are {file_cols}"
        )
    rename = {theirs: ours for ours, theirs in cmap.items()}
    for col in file_cols:
        if col in rename:
            continue
        if col in cmap:
            raise DataError(
                f"{table.name}: column {col!r} is mapped from {cmap[col]!r}, but the file also has "
                f"a column named {col!r}; map that one to another name too, e.g. "
                f"--columns {col}={cmap[col]},original_{col}={col}"
            )
        rename[col] = col
    ours = set(rename.values())
    if "text" not in ours:
        raise DataError(
            f"{table.name}: no 'text' column; the file's columns are {file_cols}. Map your prompt "
            "column with --columns text=<column> (column_map={'text': ...})"
        )
    label_cols = [h.column for h in schema.heads]
    if not ours.intersection(label_cols):
        raise DataError(
            f"{table.name}: none of the label columns {label_cols} is in the file; its columns are "
            f"{file_cols}. Map yours with --columns {label_cols[0]}=<column>"
        )
    absent = [c for c in label_cols if c not in ours]
    if absent:
        logger.info("%s: no column for %s: those heads are null on every row", table.name, absent)
    return rename


# -- the loader -------------------------------------------------------------------------------
def default_rejects_path(path: str | Path) -> Path:
    """``<input>.rejects.jsonl`` next to the input (for a directory, next to the directory)."""
    path = Path(path)
    return path.with_name(path.name + ".rejects.jsonl")


def load_labelled(
    source: str | Path | Any, schema: LabelSchema, config: LoadConfig | None = None
) -> LoadResult:
    """Read labelled rows from ``source`` (a path, or an in-memory ``datasets.Dataset``).

    Raises ``DataError`` for a file that cannot be read at all (missing, unknown format, no rows,
    a mapped or required column absent from the whole file) and, when ``config.strict``, for the
    first bad row. Otherwise bad rows are returned as ``rejects`` and written to the rejects file.
    """
    from tqdm import tqdm

    config = config or LoadConfig()
    if not isinstance(schema, LabelSchema):
        raise ConfigError(f"schema: expected a LabelSchema, got {type(schema).__name__}")
    table, path = _open(source, config)
    if table.total == 0:
        raise DataError(f"{table.name} holds no data rows")
    if path is not None and config.rejects_path is not None \
            and Path(config.rejects_path).resolve() == path.resolve():
        raise ConfigError(f"rejects_path: {config.rejects_path} is the input itself; pick another path")

    if table.n_parsed == 0:
        # Every JSON line is malformed: there are no columns to check; each line is a reject.
        rename = {theirs: ours for ours, theirs in config.column_map.items()}
    else:
        rename = _resolve_columns(table, schema, config.column_map)
    unit = _UNIT_OF_FORMAT[table.format]
    validator = RowValidator(
        schema, max_chars=config.max_chars, empty_label_is_null=table.format == "csv"
    )

    ok_rows: list[dict[str, Any]] = []
    rejects: list[RejectedRow] = []
    n_read = 0
    progress = tqdm(table.rows, total=table.total, desc=f"validating {Path(table.name).name}",
                    unit="rows", disable=None, leave=False)
    for raw_row in progress:
        n_read += 1
        problems: list[Problem]
        if raw_row.problem is not None:
            problems = [raw_row.problem]
        else:
            record = {rename.get(k, k): v for k, v in (raw_row.record or {}).items()}
            if table.format == "csv":
                record = {k: (None if v == "" and k != "text" else v) for k, v in record.items()}
            clean, problems = validator.check(record)
            if clean is not None:
                ok_rows.append(clean)
                continue
        rejected = RejectedRow.from_problem(
            problems[0], others=problems[1:], file=table.name, row=raw_row.row,
            raw=raw_row.raw, unit=unit,
        )
        if raw_row.line is not None:
            rejected = _with_line(rejected, raw_row.line)
        if config.strict:
            raise DataError(f"{rejected} (row = {ROW_UNITS[unit]})")
        rejects.append(rejected)

    if n_read != len(ok_rows) + len(rejects):  # the no-silent-drop promise; a bug if broken
        raise RuntimeError(f"row accounting broken: {n_read} read, {len(ok_rows)} ok, {len(rejects)} rejected")
    frame = _build_frame(ok_rows, schema, table.columns, rename)
    result = LoadResult(frame=frame, rejects=rejects, n_read=n_read, n_ok=len(ok_rows),
                        source=table.name, format=table.format)
    _report_rejects(result, path, config)
    return result


def _with_line(rejected: RejectedRow, line: int) -> RejectedRow:
    from dataclasses import replace

    return replace(rejected, reason=f"{rejected.reason} (record starts on line {line})")


def _build_frame(
    rows: list[dict[str, Any]], schema: LabelSchema, file_columns: list[str],
    rename: Mapping[str, str],
) -> pd.DataFrame:
    import pandas as pd

    label_cols = [h.column for h in schema.heads]
    present = {rename.get(c, c) for c in file_columns}
    soft_cols = [f"{c}_soft" for c in label_cols if f"{c}_soft" in present]
    fixed = ["text", *label_cols, *soft_cols]
    passthrough = [c for c in dict.fromkeys(rename.get(c, c) for c in file_columns)
                   if c not in fixed]
    data: dict[str, Any] = {"text": [r["text"] for r in rows]}
    for col in [*label_cols, *soft_cols]:
        # object dtype keeps None as the one null, the same for every head and pandas version.
        data[col] = pd.Series([r.get(col) for r in rows], dtype=object)
    for col in passthrough:
        data[col] = [r.get(col) for r in rows]
    return pd.DataFrame(data, columns=[*fixed, *passthrough])


def _report_rejects(result: LoadResult, path: Path | None, config: LoadConfig) -> None:
    target = Path(config.rejects_path) if config.rejects_path is not None else (
        default_rejects_path(path) if path is not None else None)
    if not result.rejects:
        logger.info("%s: all %d rows ok", result.source, result.n_read)
        if target is not None and target.is_file():
            # A rejects file left by an earlier run would describe rows that are now fixed.
            target.unlink()
        return
    counts = ", ".join(f"{k}: {v}" for k, v in result.reject_counts().items())
    if target is None:
        logger.warning("%s: %d of %d rows rejected (%s); not written (in-memory source, no "
                       "rejects_path)", result.source, len(result.rejects), result.n_read, counts)
        return
    result.rejects_path = write_rejects(target, result.rejects)
    logger.warning("%s: %d of %d rows rejected (%s); details in %s", result.source,
                   len(result.rejects), result.n_read, counts, result.rejects_path)


# -- tierwise data validate -------------------------------------------------------------------
def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="labelled data: .jsonl/.json (JSON lines), .csv, .parquet, "
                        "or a datasets save_to_disk directory")
    parser.add_argument("--schema", default=None,
                        help="label schema YAML (default: the shipped classifier/data/schema.yaml)")
    parser.add_argument("--columns", default="", metavar="OURS=THEIRS,...",
                        help="map our columns to the file's, e.g. text=prompt,tier=label")
    parser.add_argument("--format", default="auto", choices=[*FORMATS, *FORMAT_ALIASES],
                        help="file format (default: by extension)")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                        help=f"longest accepted prompt in characters (default {DEFAULT_MAX_CHARS})")
    parser.add_argument("--strict", action="store_true",
                        help="stop with an error (exit 2) at the first bad row")
    parser.add_argument("--rejects", default=None, metavar="PATH",
                        help="where to write rejected rows (default: <FILE>.rejects.jsonl)")


def _load_schema(path: str | None) -> LabelSchema:
    return LabelSchema.from_yaml(path) if path is not None else LabelSchema.default()


def format_summary(result: LoadResult, schema: LabelSchema, *, max_examples: int = 5) -> str:
    """The short text report ``tierwise data validate`` prints."""
    unit = ROW_UNITS[_UNIT_OF_FORMAT.get(result.format, "line")]
    lines = [
        f"{result.source} ({result.format}; row numbers are the {unit})",
        f"rows read: {result.n_read}  ok: {result.n_ok}  rejected: {len(result.rejects)}",
    ]
    if result.rejects:
        lines.append("rejected by reason:")
        lines += [f"  {kind:<16} {n}" for kind, n in result.reject_counts().items()]
        lines.append(f"first rejects{' (all in the rejects file)' if result.rejects_path else ''}:")
        lines += [f"  {rej}" for rej in result.rejects[:max_examples]]
    lines.append("labels per head (ok rows):")
    for head, counts in result.label_counts(schema).items():
        parts = [f"{cls}={n}" for cls, n in counts.items() if cls is not None]
        parts.append(f"null={counts[None]}")
        lines.append(f"  {head:<16} {' '.join(parts)}")
    if result.rejects_path is not None:
        lines.append(f"rejects written to {result.rejects_path}")
    return "\n".join(lines) + "\n"


def run_validate(args: argparse.Namespace) -> int:
    """Exit 0 when every row is good, 1 when rejects were found (and written)."""
    schema = _load_schema(args.schema)
    config = LoadConfig(
        format=args.format, column_map=args.columns or "",
        max_chars=args.max_chars, strict=args.strict, rejects_path=args.rejects,
    )
    result = load_labelled(args.file, schema, config)
    sys.stdout.write(format_summary(result, schema))
    return 1 if result.rejects else 0
