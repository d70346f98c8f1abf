"""Read JSONL/Parquet files or directories as numbered records, and write decision files, with Ray Data.

:func:`read_records` gives one row per input record: ``path`` (the file), ``line`` (1-based line
of a JSONL file, or row of a Parquet file), ``row`` (0-based index among the records kept: blank
lines and rows of other splits are skipped, as the single-process readers do) and ``raw`` (the
record as JSON bytes, exactly as read for JSONL). Each file is read sequentially by one task, in
blocks of a multiple of ``align`` records, so that routing can form the very batches the
single-process commands form (bit-identical probabilities). Bad lines are kept (``raw`` as it is)
so that routing answers them with the safe decision, like ``tierwise route`` does.

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


def _datasource_class() -> Any:
    from ray.data.datasource import FileBasedDatasource

    class RecordsDatasource(FileBasedDatasource):
        """JSONL lines or Parquet rows with their file, line and kept-record index."""

        _FILE_EXTENSIONS = [*JSONL_EXTENSIONS, *PARQUET_EXTENSIONS]

        def __init__(self, paths: list[str], *, align: int, block_records: int, split: str | None,
                     skip_blank: bool) -> None:
            super().__init__(paths)
            self._block = max(align, (block_records // align) * align)
            self._split = split
            self._skip_blank = skip_blank

        def _read_stream(self, f: Any, path: str) -> Iterator[Any]:
            import pyarrow as pa

            lines: list[int] = []
            rows: list[int] = []
            raws: list[bytes] = []
            kept = 0

            def block() -> Any:
                out = pa.table({"path": pa.array([path] * len(lines), pa.string()),
                                "line": pa.array(lines, pa.int64()), "row": pa.array(rows, pa.int64()),
                                "raw": pa.array(raws, pa.binary())})
                lines.clear(), rows.clear(), raws.clear()
                return out

            for n, raw in self._records(f, path):
                if self._skip_blank and not raw.strip():
                    continue
                if self._split is not None and _split_of(raw) != self._split:
                    continue
                lines.append(n), rows.append(kept), raws.append(raw)
                kept += 1
                if len(lines) >= self._block:
                    yield block()
            if lines:
                yield block()

        @staticmethod
        def _records(f: Any, path: str) -> Iterator[tuple[int, bytes]]:
            if _is_parquet(path):
                import pyarrow.parquet as pq

                n = 0
                for batch in pq.ParquetFile(f).iter_batches(batch_size=4096):
                    for rec in batch.to_pylist():
                        n += 1
                        yield n, json.dumps(rec, ensure_ascii=False, default=str).encode("utf-8")
                return
            buffer = b""
            n = 0
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    n += 1
                    yield n, raw
            if buffer:
                yield n + 1, buffer

    return RecordsDatasource


def _split_of(raw: bytes) -> Any:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec.get("split") if isinstance(rec, dict) else None


def read_records(paths: Sequence[str | Path], *, align: int = 64, block_records: int = 1024,
                 split: str | None = None, skip_blank: bool = False) -> Any:
    """A Ray Dataset of ``path, line, row, raw`` rows (see the module docstring)."""
    import ray.data

    files = [f for p in paths for f in input_files(p)]
    if align < 1 or block_records < 1:
        raise ConfigError("align and block_records must be >= 1")
    source = _datasource_class()(files, align=align, block_records=block_records, split=split,
                                 skip_blank=skip_blank)
    # reading is light next to inference: a 0-CPU task, so that the routing actors may take every
    # CPU without starving the reader (Ray Data would otherwise wait for a free CPU forever)
    return ray.data.read_datasource(source, ray_remote_args={"num_cpus": 0},
                                     # one read task per file and no re-splitting of its aligned blocks
                                     override_num_blocks=len(files))


def jsonl_datasink(path: str | Path, column: str = "json") -> Any:
    """A Ray datasink writing ``column`` (strings) as JSON lines, one ``.jsonl`` file per block."""
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonLinesDatasink(BlockBasedFileDatasink):
        def __init__(self, out: str) -> None:
            super().__init__(out, file_format="jsonl")

        def write_block_to_file(self, block: Any, file: Any) -> None:
            values = block.to_arrow().column(column).to_pylist()
            if values:
                file.write(("\n".join(values) + "\n").encode("utf-8"))

    return JsonLinesDatasink(str(path))


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
