"""``tierwise feedback join --engine ray``: the outcome join on a Ray cluster, by hash partitions.

The inputs are read with Ray Data (:func:`classifier.scale.io.read_records`: JSONL or Parquet
files, or directories of them such as the part files of ``route --engine ray``), every record is
checked by the per-record functions of :mod:`classifier.training.feedback` (the in-process join
calls the same ones), and the join runs as three shuffles keyed by a hash of the join key:

1. decision records (keys ``i:<request id>`` and ``h:<prompt hash>``), prompt-store entries (same
   keys) and outcomes (by their lookup key) meet in one partition: each outcome gets its decision
   and, when the log holds no prompt text, the store's text by id or by hash;
2. only when some outcome's text must be found by a prompt hash that lives in another partition
   (an outcome named by request id whose decision carries no prompt): those outcomes go to the
   partition of that hash, with the prompt entries once more;
3. accepted outcomes meet by request: the first one makes the training row, a second one of the
   same tier is rejected as a duplicate (in outcome order, as in process).

Why a hash partition (``groupby`` of a partition number) and not ``Dataset.join``: the local
rules are order-dependent (a later decision or prompt of the same id replaces an earlier one; the
first outcome of a request wins), which needs all records of a key in one place and sorted, and a
partition handled by one function call runs the very same dictionary logic as the in-process join,
so the two cannot drift apart. ``Dataset.join`` would need a de-duplication pass per side and a
group-by afterwards anyway.

Records cross the shuffles as JSON text (``ensure_ascii``: any id or text survives Arrow), with
their file and line, so rejects are reported with the file name as given on the command line and
the 1-based line, exactly as in process, and sorted into the in-process order. The training rows
(one per request, at most one per outcome) are gathered on the driver and written there with the
in-process writer, so the file is the same; the driver holds them, as ``adapt`` will.

What it leaves out: CSV prompt stores (the in-process reader's pandas types cannot be matched on
the cluster; convert to JSONL or Parquet), and files with bare-CR line ends (the in-process reader
splits those lines, the chunked reader does not).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classifier.errors import ConfigError

# bytes of input per hash partition (beyond two partitions per CPU): one partition is one call
PARTITION_BYTES = 64 << 20
READ_BLOCK_RECORDS = 50_000
COLUMNS = ("part", "kind", "file", "line", "data")


def partition(key: str, parts: int) -> int:
    """The partition of a join key: a hash that is the same in every process (``hash`` is salted)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % parts


def _table(out: Mapping[str, list[Any]]) -> Any:
    import pyarrow as pa

    types = {"part": pa.int64(), "kind": pa.string(), "file": pa.int64(), "line": pa.int64(), "data": pa.string()}
    return pa.table({c: pa.array(out[c], types[c]) for c in COLUMNS})


def _emit(out: dict[str, list[Any]], part: int, kind: str, file: int, line: int, data: Any) -> None:
    for c, v in zip(COLUMNS, (part, kind, file, line, json.dumps(data)), strict=True):
        out[c].append(v)


def _reject_row(out: dict[str, list[Any]], order: Sequence[int], rejected: Any) -> None:
    # order: (0 decisions | 1 outcomes, file #, 0 malformed | 1 other, line): the in-process order
    _emit(out, 0, "r", order[1], order[3], {"s": list(order), "r": rejected.to_dict()})


def parse_batch(batch: Any, *, role: str, files: Mapping[str, tuple[int, str]], parts: int) -> Any:
    """Records (``io.read_records``) -> partition rows: ``d`` decision, ``p`` prompt, ``o`` outcome,
    ``r`` reject (a malformed decision or outcome line; a prompt store's are skipped, as in process)."""
    from classifier.training.feedback import (
        decision_record,
        outcome_lookup_key,
        parse_line,
        prompt_entry,
    )

    out: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    for path, line, raw in zip(*(batch.column(c).to_pylist() for c in ("path", "line", "raw")), strict=True):
        index, shown = files[path]
        obj, rejected = parse_line(raw.decode("utf-8", errors="replace"), shown, line)
        if rejected is not None:
            if role != "p":
                _reject_row(out, (0 if role == "d" else 1, index, 0, line), rejected)
            continue
        if obj is None:
            continue
        if role == "d":
            rid, digest, rec = decision_record(obj, shown, line)
            for key in ([f"i:{rid}"] if rid is not None else []) + ([f"h:{digest}"] if digest is not None else []):
                _emit(out, partition(key, parts), "d", index, line, {"k": key, "rec": rec})
        elif role == "p":
            entry = prompt_entry(obj)
            if entry is not None:
                rid, digest, text = entry
                for key in ([f"i:{rid}"] if rid is not None else []) + [f"h:{digest}"]:
                    _emit(out, partition(key, parts), "p", index, line, {"k": key, "t": text})
        else:
            key = outcome_lookup_key(obj)
            _emit(out, 0 if key is None else partition(key, parts), "o", index, line, {"o": obj, "f": shown})
    return _table(out)


class _Elsewhere(Exception):  # noqa: N818 - control flow, not an error: the key lives in another partition
    def __init__(self, key: str) -> None:
        self.key = key


def lookup_group(table: Any, *, parts: int, store: bool, tiers: Sequence[str], model_tiers: Mapping[str, str]) -> Any:
    """One partition of shuffle 1 or 2: outcomes (``o``; ``f``: sent on from shuffle 1) meet their
    decision and prompt text -> ``a`` accepted (partitioned by request), ``r``, or ``f`` (the text
    is to be found by a hash of another partition). Rejects pass through."""
    from classifier.training.feedback import outcome_lookup_key, resolve_outcome

    rows = sorted(table.to_pylist(), key=lambda r: (r["file"], r["line"]))
    out: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    if not rows:
        return _table(out)
    here = rows[0]["part"]
    decisions: dict[str, Any] = {}
    prompts: dict[str, str] = {}
    for r in rows:  # in file and line order: a later record of a key replaces an earlier one
        if r["kind"] == "d":
            d = json.loads(r["data"])
            decisions[d["k"]] = d["rec"]
        elif r["kind"] == "p":
            d = json.loads(r["data"])
            prompts[d["k"]] = d["t"]
        elif r["kind"] == "r":
            _emit(out, 0, "r", r["file"], r["line"], json.loads(r["data"]))
    for r in rows:
        if r["kind"] not in ("o", "f"):
            continue
        d = json.loads(r["data"])
        obj, where = d["o"], (d["f"], r["line"])
        known: dict[str, str | None] = dict(d.get("known", {}))  # prompt lookups answered upstream

        def text(key: str, known: dict[str, str | None] = known) -> str | None:
            if not store:  # no prompt store: the log's text or nothing, as in process
                return None
            if partition(key, parts) == here:
                known[key] = prompts.get(key)
                return known[key]
            if key in known:
                return known[key]
            raise _Elsewhere(key)

        def decision(key: str, d: dict[str, Any] = d) -> Any:
            return d["rec"] if "rec" in d else decisions.get(key)

        try:
            acc, rejected = resolve_outcome(obj, where, decision, lambda rid: text(f"i:{rid}"),
                                            lambda digest: text(f"h:{digest}"), tiers=tiers, model_tiers=model_tiers)
        except _Elsewhere as moved:
            _emit(out, partition(moved.key, parts), "f", r["file"], r["line"],
                  {**d, "rec": decision(outcome_lookup_key(obj) or ""), "known": known})
            continue
        if rejected is not None:
            _reject_row(out, (1, r["file"], 1, r["line"]), rejected)
        else:
            assert acc is not None
            _emit(out, partition(f"k:{acc['key']}", parts), "a", r["file"], r["line"], {**d, "acc": acc})
    return _table(out)


def rows_group(table: Any) -> Any:
    """One partition of shuffle 3: a request's accepted outcomes in order -> its training row
    (``t``; ``file``/``line`` of the outcome that made it), duplicate rejects, and ``c``: how
    many accepted outcomes the partition held."""
    from classifier.training.feedback import add_outcome

    rows = sorted(table.to_pylist(), key=lambda r: (r["file"], r["line"]))
    out: dict[str, list[Any]] = {c: [] for c in COLUMNS}
    made: dict[str, dict[str, Any]] = {}
    first: dict[str, tuple[int, int]] = {}
    for r in rows:
        d = json.loads(r["data"])
        if r["kind"] == "r":
            _emit(out, 0, "r", r["file"], r["line"], d)
            continue
        key = d["acc"]["key"]
        first.setdefault(key, (r["file"], r["line"]))
        rejected = add_outcome(made, d["acc"], (d["f"], r["line"]), d["o"])
        if rejected is not None:
            _reject_row(out, (1, r["file"], 1, r["line"]), rejected)
    for key, row in made.items():
        _emit(out, 0, "t", *first[key], row)
    _emit(out, 0, "c", 0, 0, sum(r["kind"] == "a" for r in rows))  # accepted outcomes (for the counts)
    return _table(out)


def _files(paths: Sequence[str | Path]) -> dict[str, tuple[int, str]]:
    """Each input file (as ``io.read_records`` names it) -> (its number, the name rejects show):
    the path as given for a file, the directory as given joined with the file's place in it."""
    from classifier.scale.io import input_files

    files: dict[str, tuple[int, str]] = {}
    for p in paths:
        root = Path(p)
        for f in input_files(p):
            shown = str(root) if root.is_file() else str(root / Path(f).relative_to(root.resolve()))
            files.setdefault(f, (len(files), shown))
    return files


def _kind(ds: Any, *kinds: str) -> Any:
    def keep(batch: Any) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        return batch.filter(pc.is_in(batch.column("kind"), value_set=pa.array(list(kinds))))

    return ds.map_batches(keep, batch_format="pyarrow", batch_size=None)


def join_feedback_ray(outcomes: Sequence[str | Path], decisions: Sequence[str | Path], *,
                      prompts: str | Path | None = None, tiers: Sequence[str] = ("cheap", "frontier"),
                      model_tiers: Mapping[str, str] | None = None, weight_cap: float = 50.0,
                      parts: int | None = None) -> Any:
    """:func:`classifier.training.feedback.join_feedback` on the connected Ray cluster (module
    docstring): the same ``JoinResult`` (rows in the in-process order, rejects likewise).
    ``parts``: hash partitions (default: two per cluster CPU, more for inputs over 64 MiB each)."""
    import ray

    from classifier.data.validation import RejectedRow
    from classifier.scale.engine import cluster_cpus
    from classifier.scale.io import read_records
    from classifier.training.feedback import (
        JoinResult,
        check_join_options,
        join_counts,
        training_frame,
    )

    check_join_options(tiers, weight_cap)
    model_tiers = dict(model_tiers or {})
    if prompts is not None and Path(prompts).suffix.lower() == ".csv":
        raise ConfigError(f"--engine ray reads JSONL or Parquet prompt stores; convert {prompts} (CSV)")
    roles = {"d": list(decisions), "o": list(outcomes), "p": [] if prompts is None else [prompts]}
    files = {role: _files(paths) for role, paths in roles.items()}
    size = sum(os.path.getsize(f) for fs in files.values() for f in fs)
    parts = parts or max(2 * cluster_cpus(ray), size // PARTITION_BYTES + 1)

    def parsed(role: str) -> Any:
        return read_records(roles[role], align=1, block_records=READ_BLOCK_RECORDS).map_batches(
            parse_batch, fn_kwargs={"role": role, "files": files[role], "parts": parts},
            batch_format="pyarrow", batch_size=None)

    kw = {"fn_kwargs": {"parts": parts, "store": prompts is not None, "tiers": list(tiers), "model_tiers": model_tiers},
          "batch_format": "pyarrow"}
    inputs = [parsed("d"), parsed("o")] + ([parsed("p")] if prompts is not None else [])
    first = inputs[0].union(*inputs[1:]).groupby("part", num_partitions=parts).map_groups(lookup_group, **kw).materialize()
    settled = _kind(first, "a", "r")
    moved = _kind(first, "f")
    if prompts is not None and moved.count():
        settled = settled.union(parsed("p").union(moved).groupby("part", num_partitions=parts).map_groups(lookup_group, **kw))
    final = settled.groupby("part", num_partitions=parts).map_groups(rows_group, batch_format="pyarrow").take_all()
    rows = sorted((r for r in final if r["kind"] == "t"), key=lambda r: (r["file"], r["line"]))
    rejects = sorted((json.loads(r["data"]) for r in final if r["kind"] == "r"), key=lambda d: d["s"])
    # every outcome line that parsed was accepted (a duplicate too) or rejected before (not malformed)
    n_outcomes = sum(json.loads(r["data"]) for r in final if r["kind"] == "c") + \
        sum(1 for d in rejects if d["s"][0] == 1 and d["s"][2] == 1 and d["r"]["kind"] != "duplicate")
    frame = training_frame([json.loads(r["data"]) for r in rows], weight_cap)
    found = [RejectedRow(**d["r"]) for d in rejects]
    return JoinResult(frame, found, join_counts(n_outcomes, frame, len(found)))
