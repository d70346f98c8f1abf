"""Route a Ray Dataset of records with one verified ``Router`` per actor (``tierwise route --engine ray``).

:func:`route_dataset` maps the records of :func:`classifier.scale.io.read_records` through an actor
pool (``map_batches`` with ``ActorPoolStrategy``): each actor loads and verifies the bundle once and
keeps it. Rows are routed in the groups the single-process commands use (``tierwise route``: every
``--batch-size`` input lines of a file; ``drift``: every 256 kept records), so the ONNX batches, and
therefore the probabilities, are bit-identical to a single-process run with the same ``--threads``.

Each output row holds the decision as the JSON line ``tierwise route`` writes (``json``) and as
flat columns (``tier``, ``blocked``, ``flags``, ``p::<head>::<class>`` ...) for Parquet and for the
statistics in :mod:`classifier.scale.stats`. With an audit directory each actor appends to its own
hash-chained log (``worker-<id>.jsonl``); :func:`write_audit_checkpoint` then writes the merged
checkpoint (every worker log's entry count and head hash, and one hash over them).

What it leaves out: the decision logic (``classifier.serving``), reading and writing files
(``io``) and the statistics (``stats``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classifier.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

AUDIT_CHECKPOINT = "checkpoint.json"
DRIFT_CHUNK = 256  # classifier.evaluation.drift routes prompt logs in chunks of this many records


class RouteActor:
    """One Router for the life of the actor; called on blocks of ``path, line, row, raw`` rows.

    ``mode="route"``: records are parsed as ``tierwise route`` does (``text_field``, ``id_field``;
    a bad line gets the safe decision, flagged ``invalid_input``); ``mode="prompts"``: the prompt
    is the ``text`` / ``prompt`` / ``input`` field, as ``tierwise drift`` reads prompt logs.
    """

    def __init__(self, bundle: str, *, threads: int = 1, policy: Any = None, mode: str = "route",
                 text_field: str = "text", id_field: str = "id", group_size: int = 64,
                 audit_dir: str | None = None, store_text: bool = False, keep_raw: bool = False) -> None:
        from classifier.serving.runtime import Router

        if mode not in ("route", "prompts"):
            raise ConfigError(f"mode must be 'route' or 'prompts', got {mode!r}")
        self.router = Router.load(bundle, threads=threads, policy=policy)
        self.mode, self.text_field, self.id_field, self.group_size = mode, text_field, id_field, group_size
        self.keep_raw = keep_raw  # pass the input record through (the report's labels)
        self.heads = [(h, list(self.router.schema.head(h).classes)) for h in self.router.head_names]
        self.audit = None
        if audit_dir is not None:
            from classifier.serving.audit import AuditLog

            self.audit = AuditLog(Path(audit_dir) / f"worker-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl",
                                  store_text=store_text)

    def _parse(self, raw: bytes, n: int) -> tuple[Any, Any, str | None]:
        if self.mode == "route":
            from classifier.scale.io import parse_route_line as _parse

            return _parse(raw, n, self.text_field, self.id_field)
        from classifier.evaluation.drift import _text_of
        from classifier.scale.io import decode_record

        rec, error = decode_record(raw)
        if rec is None:
            return None, None, f"line {n}: {error}"
        return _text_of(rec), rec.get("id"), None

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        from classifier.evaluation.report_common import length_bucket
        from classifier.serving.runtime import FLAG_INVALID_INPUT

        paths = batch.column("path").to_pylist()
        lines = batch.column("line").to_pylist()
        rows = batch.column("row").to_pylist()
        raws = batch.column("raw").to_pylist()
        key = lines if self.mode == "route" else rows
        base = 1 if self.mode == "route" else 0
        out: dict[str, list[Any]] = {c: [] for c in ("path", "line", "id", "tier", "model", "blocked", "rule",
                                                      "reason", "policy_version", "flags", "error", "length",
                                                      "probabilities", "thresholds", "json")}
        probs: dict[str, list[float | None]] = {f"p::{h}::{c}": [] for h, cs in self.heads for c in cs}
        start = 0
        while start < len(raws):  # consecutive rows of one file and one group are one router call
            g = (paths[start], (key[start] - base) // self.group_size)
            end = start + 1
            while end < len(raws) and (paths[end], (key[end] - base) // self.group_size) == g:
                end += 1
            pending = [(lines[i], *self._parse(raws[i], lines[i]), paths[i]) for i in range(start, end)]
            if self.mode == "prompts":
                # drift routes whatever the prompt field holds (None included): the router answers
                texts = [p[1] for p in pending]
                decisions = self.router.route(texts)
                errors = [None] * len(pending)
            else:
                texts = [p[1] for p in pending if p[3] is None]
                routed = iter(self.router.route(texts)) if texts else iter(())
                decisions, errors = [], []
                for _, _, _, error, _ in pending:
                    decisions.append(next(routed) if error is None
                                     else self.router.safe_decision(error, [FLAG_INVALID_INPUT]))
                    errors.append(error)
            for (n, text, rid, _, path), decision, error in zip(pending, decisions, errors, strict=True):
                doc = decision.to_dict()
                if error is None and FLAG_INVALID_INPUT in doc["flags"] and self.mode == "route":
                    error = f"line {n}: {doc['reason']}"
                if error is not None:
                    doc["error"] = error
                if self.audit is not None:
                    self.audit.append(decision, request_id=f"{Path(path).name}:{n}" if rid is None else str(rid),
                                      prompt=text if isinstance(text, str) else "",
                                      model_version=self.router.model_version,
                                      bundle_hash=self.router.bundle_hash, line=n)
                out["json"].append(json.dumps({"line": n, "id": rid, **doc}, ensure_ascii=False))
                out["path"].append(path)
                out["line"].append(n)
                out["id"].append(None if rid is None else str(rid))
                for k in ("tier", "model", "rule", "reason", "policy_version"):
                    out[k].append(doc.get(k))
                out["blocked"].append(bool(doc["blocked"]))
                out["flags"].append(list(doc["flags"]))
                out["error"].append(error)
                out["length"].append(length_bucket([text])[0])
                out["probabilities"].append(json.dumps(doc["probabilities"]))
                out["thresholds"].append(json.dumps(doc["thresholds"]))
                p = doc["probabilities"]
                for h, cs in self.heads:
                    for c in cs:
                        probs[f"p::{h}::{c}"].append(p.get(h, {}).get(c))
            start = end
        strings = pa.string()
        types = {"line": pa.int64(), "blocked": pa.bool_(), "flags": pa.list_(strings)}
        table = {k: pa.array(v, types.get(k, strings)) for k, v in out.items()}
        table.update({k: pa.array(v, pa.float64()) for k, v in probs.items()})
        if self.keep_raw:
            table["raw"] = pa.array(raws, pa.binary())
        return pa.table(table)


def route_dataset(records: Any, bundle: str | Path, *, actors: int, threads: int = 1, policy: Any = None,
                  mode: str = "route", text_field: str = "text", id_field: str = "id", group_size: int = 64,
                  audit_dir: str | Path | None = None, store_text: bool = False, keep_raw: bool = False) -> Any:
    """``records`` (``io.read_records``) -> a Dataset of decisions, one actor-held Router per actor
    (``keep_raw``: with the input record as column ``raw``)."""
    import ray.data

    if isinstance(policy, Path):
        policy = str(policy)
    return records.map_batches(
        RouteActor,
        fn_constructor_kwargs={"bundle": str(bundle), "threads": threads, "policy": policy, "mode": mode,
                               "text_field": text_field, "id_field": id_field, "group_size": group_size,
                               "audit_dir": None if audit_dir is None else str(audit_dir),
                               "store_text": store_text, "keep_raw": keep_raw},
        batch_size=None,  # whole blocks: io.read_records aligns them with the routing groups
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=threads,
        zero_copy_batch=True,
    )


# -- writing decisions ------------------------------------------------------------------------------
def _counts(table: Any) -> dict[str, Any]:
    tiers = Counter()
    invalid = 0
    for tier, blocked, error in zip(table.column("tier").to_pylist(), table.column("blocked").to_pylist(),
                                    table.column("error").to_pylist(), strict=True):
        tiers["blocked" if blocked else str(tier)] += 1
        invalid += error is not None
    return {"lines": table.num_rows, "invalid": invalid, "tiers": dict(tiers)}


def merge_counts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    tiers: Counter = Counter()
    for p in parts:
        tiers.update(p["tiers"])
    return {"lines": sum(p["lines"] for p in parts), "invalid": sum(p["invalid"] for p in parts),
            "tiers": dict(tiers)}


def decisions_datasink(path: str | Path, fmt: str, inputs: Sequence[str]) -> Any:
    """A datasink writing decisions as JSON lines or Parquet; ``.counts`` after the write.

    Part files are named ``part-<input file #>-<first line>.<fmt>``, so that the names sort in
    input order (``inputs``: the input files, as ``io.read_records`` lists them).
    """
    import posixpath

    from ray.data.datasource import BlockBasedFileDatasink

    index = {p: i for i, p in enumerate(inputs)}

    class DecisionsDatasink(BlockBasedFileDatasink):
        def __init__(self, out: str) -> None:
            super().__init__(out, file_format=fmt)
            self.counts: dict[str, Any] = {"lines": 0, "invalid": 0, "tiers": {}}

        def write_block(self, block: Any, block_index: int, ctx: Any) -> None:
            table = block.to_arrow()
            if table.num_rows == 0:
                return
            name = f"part-{index.get(table.column('path')[0].as_py(), 0):05d}-{table.column('line')[0].as_py():012d}.{fmt}"
            with self.open_output_stream(posixpath.join(self.path, name)) as file:
                self.write_block_to_file(block, file)

        def write(self, blocks: Any, ctx: Any) -> Any:
            from ray.data.block import BlockAccessor

            blocks = list(blocks)
            super().write(blocks, ctx)
            return merge_counts([_counts(BlockAccessor.for_block(b).to_arrow()) for b in blocks])

        def write_block_to_file(self, block: Any, file: Any) -> None:
            table = block.to_arrow()
            if fmt == "jsonl":
                values = table.column("json").to_pylist()
                file.write(("\n".join(values) + "\n").encode("utf-8"))
            else:
                import pyarrow.parquet as pq

                pq.write_table(table.drop_columns(["json", "path", "length"]), file)

        def on_write_complete(self, write_result: Any) -> None:
            self.counts = merge_counts([r for r in write_result.write_returns if r])
            super().on_write_complete(write_result)

    return DecisionsDatasink(str(path))


def write_audit_checkpoint(audit_dir: str | Path) -> dict[str, Any]:
    """Verify every worker log of ``audit_dir`` and write the merged checkpoint (``checkpoint.json``).

    The checkpoint lists each log with its entry count and head hash, and ``hash``: the SHA-256 of
    those lines (sorted by file name), which an operator can anchor outside the machine.
    """
    from classifier.errors import AuditError
    from classifier.serving.audit import verify

    audit_dir = Path(audit_dir)
    logs = []
    for log in sorted(audit_dir.glob("worker-*.jsonl")):
        result = verify(log)
        if not result.ok:
            raise AuditError(f"{log}: {result.message()}")
        logs.append({"log": log.name, "entries": result.entries, "head": result.last_hash})
    body = "\n".join(f"{x['log']} {x['entries']} {x['head']}" for x in logs)
    checkpoint = {"format": "tierwise-audit-checkpoint", "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "logs": logs, "entries": sum(x["entries"] for x in logs),
                  "hash": hashlib.sha256(body.encode("utf-8")).hexdigest()}
    (audit_dir / AUDIT_CHECKPOINT).write_text(json.dumps(checkpoint, indent=1) + "\n", encoding="utf-8")
    return checkpoint


def output_format(output: str) -> str:
    return "parquet" if output.rstrip("/").lower().endswith((".parquet", ".pq")) else "jsonl"


def run_route_ray(args: argparse.Namespace) -> int:
    """``tierwise route --input PATH --output DIR --engine ray``: decisions as part files in DIR."""
    from classifier.scale.engine import actor_count, check_engine_args, ray_session
    from classifier.scale.io import IO_CONCURRENCY, input_files, read_records

    check_engine_args(args)
    if args.input is None:
        raise ConfigError("--engine ray routes files: pass --input FILE_OR_DIR (one prompt is routed locally)")
    if args.output is None or args.output == "-":
        raise ConfigError("--engine ray writes a directory of part files: pass --output DIR "
                          "(DIR ending in .parquet: Parquet, otherwise JSON lines)")
    out = Path(args.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--output {out} exists and is not an empty directory; pick a new one")
    if not Path(args.input).exists():
        raise InputError(f"input {args.input} does not exist")
    audit_dir = getattr(args, "audit_log", None)
    fmt = output_format(args.output)
    t0 = time.perf_counter()
    with ray_session(args.address, args.ray_cpus) as ray:
        actors = actor_count(ray, args.threads, args.actors)
        records = read_records([args.input], align=args.batch_size, block_records=max(1024, args.batch_size))
        decisions = route_dataset(records, args.bundle, actors=actors, threads=args.threads,
                                  policy=args.policy, text_field=args.text_field, id_field=args.id_field,
                                  group_size=args.batch_size, audit_dir=audit_dir)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # part files in input order
        ctx.enable_progress_bars = not args.no_progress
        sink = decisions_datasink(out, fmt, input_files(args.input))
        # I/O only, see io.read_records
        decisions.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=IO_CONCURRENCY)
        stats = sink.counts
    if audit_dir is not None:
        checkpoint = write_audit_checkpoint(audit_dir)
        sys.stderr.write(f"audit: {len(checkpoint['logs'])} worker log(s), {checkpoint['entries']} entries, "
                         f"checkpoint {Path(audit_dir) / AUDIT_CHECKPOINT}\n")
    tiers = ", ".join(f"{k}: {v}" for k, v in sorted(stats["tiers"].items()))
    took = time.perf_counter() - t0
    sys.stderr.write(f"routed {stats['lines']} line(s), {stats['invalid']} invalid -> {out}/ ({fmt}; {tiers}) "
                     f"with {actors} actor(s) in {took:.1f}s\n")
    return 0
