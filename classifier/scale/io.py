"""Read JSONL/Parquet files or directories as numbered records, and write decision files, with Ray Data.

:func:`read_records` gives one row per input record: ``path`` (the file), ``line`` (1-based line
of a JSONL file, or row of a Parquet file), ``row`` (0-based index among the records kept: blank
lines and rows of other splits are skipped, as the single-process readers do) and ``raw`` (the
record as JSON bytes, exactly as read for JSONL). The driver first plans the read in one
streaming pass (:func:`plan_chunks`: where every chunk of ``block_records`` kept records starts,
as byte offsets or row ranges); each chunk is then one read task and one block, a multiple of
``align`` records, so that the blocks are spread over the routing actors and routing still forms
the very batches the single-process commands form (bit-identical probabilities). Bad lines are
kept (``raw`` as it is) so that routing answers them with the safe decision, like ``tierwise
route`` does.

:class:`JsonLinesDatasink` writes a string column, one line per row, without re-encoding (Ray's
``write_json`` would round floats through pandas).

What it leaves out: interpreting records (``route``, ``stats``) and Ray setup (``engine``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from classifier.errors import ConfigError, InputError

JSONL_EXTENSIONS = ("jsonl", "json", "ndjson")
PARQUET_EXTENSIONS = ("parquet", "pq")
# decision columns written as JSON text in Parquet (nested dicts of varying keys)
JSON_COLUMNS = ("probabilities", "thresholds", "detections")


def input_files(path: str | Path) -> list[str]:
    """The files one input argument names: a file, or the JSONL/Parquet files of a directory."""
    p = Path(path)
    if p.is_file():
        return [str(p.resolve())]
    if p.is_dir():
        files = sorted(str(f.resolve()) for f in p.rglob("*") if f.is_file()
                       and f.suffix.lstrip(".").lower() in (*JSONL_EXTENSIONS, *PARQUET_EXTENSIONS))
        if not files:
            raise InputError(f"{p} holds no .jsonl or .parquet file")
        return files
    raise InputError(f"input {p} does not exist (give a JSONL/Parquet file or a directory of them)")


def _is_parquet(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in PARQUET_EXTENSIONS


# a chunk also ends, at a routing-group boundary, once it holds this many bytes: Ray Data slices a
# read block past ~1.5x its target block size (128 MiB), which would cut a routing group in two
CHUNK_MAX_BYTES = 32 << 20
# read (and write) tasks take no CPU slot; this bounds how many run, and so how many worker
# processes Ray starts for them
IO_CONCURRENCY = 2


def _jsonl_lines(f: Any, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line without its newline) of a binary file, from ``start`` up to ``end``."""
    f.seek(start)
    pos = start
    for raw in f:
        if end is not None and pos >= end:
            return
        yield pos, raw[:-1] if raw.endswith(b"\n") else raw
        pos += len(raw)


def _parquet_rows(path: str, start: int = 0, stop: int | None = None,
                  columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows ``start..stop`` (0-based) of a Parquet file, reading only the row groups they lie in."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    meta = pf.metadata
    stop = meta.num_rows if stop is None else stop
    if columns is not None:
        columns = [c for c in columns if c in pf.schema_arrow.names]
    groups, first, offset = [], 0, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset + n > start and offset < stop:
            first = first if groups else offset
            groups.append(g)
        offset += n
    i = first
    for batch in (pf.iter_batches(batch_size=4096, row_groups=groups, columns=columns) if groups else ()):
        for rec in batch.to_pylist():
            if i >= stop:
                return
            if i >= start:
                yield rec
            i += 1


def _parquet_raw(rec: dict[str, Any]) -> bytes:
    return json.dumps(rec, ensure_ascii=False, default=str).encode("utf-8")


def plan_chunks(path: str, *, align: int, block: int, split: str | None,
                skip_blank: bool) -> list[tuple[str, int, int, int, int]]:
    """The read chunks of one file: ``(path, start, stop, first line, first row)``, a byte range
    of a JSONL file or a row range of a Parquet file holding ``block`` kept records (fewer once a
    chunk holds ``CHUNK_MAX_BYTES``, and always a multiple of ``align``, so that no routing group
    is cut). One streaming pass on the driver, keeping one tuple per chunk, never the records."""
    chunks: list[tuple[str, int, int, int, int]] = []
    if _is_parquet(path):
        import pyarrow.parquet as pq

        total = pq.ParquetFile(path).metadata.num_rows
        if split is None:  # every row is kept
            return [(path, a, min(total, a + block), a + 1, a) for a in range(0, total, block)]
        items: Iterator[tuple[int, Any, int]] = (
            (i, rec.get("split") == split, 0) for i, rec in enumerate(_parquet_rows(path, columns=["split"])))
        fh = None
    else:
        fh = open(path, "rb")  # noqa: SIM115 - closed in the finally below
        total = fh.seek(0, 2)
        items = ((pos, (not skip_blank or bool(raw.strip())) and (split is None or _split_of(raw) == split),
                  len(raw) + 1) for pos, raw in _jsonl_lines(fh))
    kept = in_chunk = nbytes = 0
    cur: tuple[int, int, int] | None = None  # start, first line, first row
    try:
        for n, (pos, keep, size) in enumerate(items, start=1):
            if not keep:
                continue
            if cur is not None and in_chunk % align == 0 and (in_chunk >= block or nbytes >= CHUNK_MAX_BYTES):
                chunks.append((path, cur[0], pos, cur[1], cur[2]))
                cur = None
            if cur is None:
                cur, in_chunk, nbytes = (pos, n, kept), 0, 0
            kept += 1
            in_chunk += 1
            nbytes += size
    finally:
        if fh is not None:
            fh.close()
    if cur is not None:
        chunks.append((path, cur[0], total, cur[1], cur[2]))
    return chunks


def read_chunk(chunk: tuple[str, int, int, int, int], *, split: str | None, skip_blank: bool) -> Any:
    """One chunk as a ``path, line, row, raw`` table (the same filters as :func:`plan_chunks`)."""
    import pyarrow as pa

    path, start, stop, line, row = chunk
    lines: list[int] = []
    rows: list[int] = []
    raws: list[bytes] = []
    with open(path, "rb") as fh:
        if _is_parquet(path):
            source: Iterator[bytes] = (_parquet_raw(rec) for rec in _parquet_rows(path, start, stop))
        else:
            source = (raw for _, raw in _jsonl_lines(fh, start, stop))
        for n, raw in enumerate(source, start=line):
            if skip_blank and not raw.strip():
                continue
            if split is not None and _split_of(raw) != split:
                continue
            lines.append(n), rows.append(row), raws.append(raw)
            row += 1
    return pa.table({"path": pa.array([path] * len(lines), pa.string()), "line": pa.array(lines, pa.int64()),
                     "row": pa.array(rows, pa.int64()), "raw": pa.array(raws, pa.binary())})


def _datasource(chunks: list[tuple[str, int, int, int, int]], *, split: str | None, skip_blank: bool,
                size: int) -> Any:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class RecordsDatasource(Datasource):
        """One read task, and so one block, per chunk (in input order)."""

        def get_name(self) -> str:
            return "ReadRecords"

        def estimate_inmemory_data_size(self) -> int:
            return size

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            each = max(1, size // len(chunks))
            return [ReadTask(lambda c=c: [read_chunk(c, split=split, skip_blank=skip_blank)],
                             BlockMetadata(num_rows=None, size_bytes=each, input_files=[c[0]], exec_stats=None))
                    for c in chunks]

    return RecordsDatasource()


def _split_of(raw: bytes) -> Any:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec.get("split") if isinstance(rec, dict) else None


def read_records(paths: Sequence[str | Path], *, align: int = 64, block_records: int = 1024,
                 split: str | None = None, skip_blank: bool = False) -> Any:
    """A Ray Dataset of ``path, line, row, raw`` rows (see the module docstring), one block per chunk."""
    import os

    import ray.data

    if align < 1 or block_records < 1:
        raise ConfigError("align and block_records must be >= 1")
    files = [f for p in paths for f in input_files(p)]
    block = max(align, (block_records // align) * align)
    chunks = [c for f in files for c in plan_chunks(f, align=align, block=block, split=split, skip_blank=skip_blank)]
    if not chunks:  # nothing kept: one empty chunk, so that the Dataset still has its columns
        chunks = [(files[0], 0, 0, 1, 0)]
    source = _datasource(chunks, split=split, skip_blank=skip_blank, size=sum(os.path.getsize(f) for f in files))
    # reading is light next to inference: 0-CPU tasks, so that the routing actors may take every
    # CPU without starving the reader (Ray Data would otherwise wait for a free CPU forever); at
    # most IO_CONCURRENCY at a time, or Ray starts a worker process for each of them at once
    return ray.data.read_datasource(source, num_cpus=0, override_num_blocks=len(chunks), concurrency=IO_CONCURRENCY)


def decode_record(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(record, error) of one JSON line; Parquet decision columns stored as JSON text are decoded."""
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(rec, dict):
        return None, f"expected a JSON object, got {type(rec).__name__}"
    for key in JSON_COLUMNS:
        if isinstance(rec.get(key), str):
            try:
                rec[key] = json.loads(rec[key])
            except ValueError:
                pass
    if rec.get("flags") is None and "tier" in rec and "rule" in rec:
        rec["flags"] = []
    return rec, None


def parse_route_line(raw: bytes, n: int, text_field: str, id_field: str) -> tuple[Any, Any, str | None]:
    """(text or chat body, id, error) of one ``tierwise route --input`` line; error is None when
    the line is usable. Shared by the in-process and the Ray paths, so both read lines alike."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, None, f"line {n}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
    if not line.strip():
        return None, None, f"line {n}: empty line; expected a JSON object with a {text_field!r} field"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, None, f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return None, None, f"line {n}: expected a JSON object, got {type(record).__name__}"
    rid = record.get(id_field)
    if text_field not in record and "messages" in record:
        return record, rid, None  # a chat-completions body: the router parses it (and answers bad ones)
    if text_field not in record:
        return None, rid, (f"line {n}: no {text_field!r} or 'messages' field (fields: {sorted(record)[:10]}); "
                           "set --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        return None, rid, f"line {n}: {text_field!r} must be a string, got {type(text).__name__}"
    return text, rid, None
