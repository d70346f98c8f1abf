"""``tierwise route``: route one prompt, or a JSONL file of prompts, with a bundle.

One prompt::

    tierwise route "Write a haiku about the sea" --bundle bundles/teacher

prints the decision as JSON. A file::

    tierwise route --bundle B --input in.jsonl --output out.jsonl [--text-field text] [--batch-size 64]

reads one JSON object per line (a prompt under ``--text-field``, or an OpenAI chat-completions
body: a line with ``messages`` and no ``--text-field`` field is routed as the whole request,
optional ``tools`` included) and writes one line per input line, in order:
``{"line": n, "id": <the --id-field value or null>, **decision}``. A line that is not valid JSON or
UTF-8, not an object, or has no string under ``--text-field`` gets the policy's explicit safe
decision, flagged ``invalid_input``, with an ``error`` naming the line (and, for a malformed chat
body, the field: ``line 3: ... messages[0].role: unknown role 'bot'``); the file is never aborted.
``--audit-log`` appends every decision to a hash-chained audit log.

What this module leaves out: the decisions themselves (``runtime``/``policy``). Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from classifier.errors import ConfigError, InputError
from classifier.scale.io import parse_route_line as _parse

FLAG_INVALID_INPUT = "invalid_input"


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="?", default=None, help="one prompt to route (or use --input)")
    parser.add_argument("--bundle", required=True, type=Path, help="bundle directory or .tar.gz")
    parser.add_argument("--input", type=Path, default=None, help="JSONL file of prompts")
    parser.add_argument("--output", type=str, default=None, help="JSONL file of decisions ('-' for stdout)")
    parser.add_argument("--text-field", default="text", help="field holding the prompt (default: text)")
    parser.add_argument("--id-field", default="id", help="field copied to the output as 'id' (default: id)")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per inference batch (default 64)")
    parser.add_argument("--policy", type=Path, default=None, help="routing policy YAML replacing the bundle's own")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--audit-log", type=Path, default=None, help="append every decision to this audit log")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    from classifier.scale.engine import add_engine_arguments  # no Ray import: options only

    add_engine_arguments(parser)


def run_route(args: argparse.Namespace) -> int:
    if getattr(args, "engine", "local") == "ray":
        from classifier.scale.route import run_route_ray

        return run_route_ray(args)
    if (args.text is None) == (args.input is None):
        raise ConfigError("give either one prompt as an argument or --input FILE.jsonl (not both)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.input is not None:
        if args.output is None:
            raise ConfigError("--input needs --output (a JSONL path, or '-' for stdout)")
        if not args.input.is_file():
            raise InputError(f"input file {args.input} does not exist")
    from classifier.serving.runtime import Router

    audit = None
    if args.audit_log is not None:
        from classifier.serving.audit import AuditLog

        audit = AuditLog(args.audit_log)
    with Router.load(args.bundle, threads=args.threads, policy=args.policy) as router:
        if args.text is not None:
            decision = router.route(args.text)
            if audit is not None:
                audit.append(decision, request_id=f"cli-{uuid.uuid4().hex[:16]}", prompt=args.text,
                             model_version=router.model_version, bundle_hash=router.bundle_hash)
            sys.stdout.write(json.dumps(decision.to_dict(), indent=2, ensure_ascii=False) + "\n")
            return 0
        if args.output == "-":
            stats = route_file(router, args.input, sys.stdout, text_field=args.text_field, id_field=args.id_field,
                               batch_size=args.batch_size, audit=audit, progress=False)
        else:
            out_path = Path(args.output)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            with open(out_path, "w", encoding="utf-8") as out:
                stats = route_file(router, args.input, out, text_field=args.text_field, id_field=args.id_field,
                                   batch_size=args.batch_size, audit=audit, progress=not args.no_progress)
    tiers = ", ".join(f"{k}: {v}" for k, v in sorted(stats["tiers"].items()))
    sys.stderr.write(f"routed {stats['lines']} line(s), {stats['invalid']} invalid -> {args.output} ({tiers})\n")
    return 0


def _lines(path: Path, progress: bool) -> Iterator[tuple[int, bytes]]:
    from tqdm import tqdm

    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc="routing",
                                      disable=not progress, file=sys.stderr) as bar:
        for n, raw in enumerate(fh, start=1):
            bar.update(len(raw))
            yield n, raw




def _prompt_text(item: Any) -> str:
    """What the audit log hashes (or stores) for an input: the prompt, or a chat body's messages."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return json.dumps({k: item[k] for k in ("messages", "tools") if k in item}, ensure_ascii=False,
                          sort_keys=True, default=str)
    return ""


def route_file(router: Any, path: Path, out: IO[str], *, text_field: str = "text", id_field: str = "id",
               batch_size: int = 64, audit: Any = None, progress: bool = True) -> dict[str, Any]:
    """Route every line of a JSONL file into ``out``; returns counts (lines, invalid, tiers)."""
    stats: dict[str, Any] = {"lines": 0, "invalid": 0, "tiers": Counter()}
    pending: list[tuple[int, Any, Any, str | None]] = []

    def flush() -> None:
        texts = [p[1] for p in pending if p[3] is None]
        routed = iter(router.route(texts)) if texts else iter(())
        for n, text, rid, error in pending:
            if error is None:
                decision = next(routed)
                doc = decision.to_dict()
                if FLAG_INVALID_INPUT in doc["flags"]:
                    doc["error"] = f"line {n}: {doc['reason']}"
                    stats["invalid"] += 1
            else:
                decision = router.safe_decision(error, [FLAG_INVALID_INPUT])
                doc = decision.to_dict()
                doc["error"] = error
                stats["invalid"] += 1
            stats["tiers"]["blocked" if doc["blocked"] else str(doc["tier"])] += 1
            if audit is not None:
                audit.append(decision, request_id=f"{path.name}:{n}" if rid is None else str(rid),
                             prompt=_prompt_text(text), model_version=router.model_version,
                             bundle_hash=router.bundle_hash, line=n)
            out.write(json.dumps({"line": n, "id": rid, **doc}, ensure_ascii=False) + "\n")
        pending.clear()

    for n, raw in _lines(path, progress):
        text, rid, error = _parse(raw, n, text_field, id_field)
        pending.append((n, text, rid, error))
        stats["lines"] += 1
        if len(pending) >= batch_size:
            flush()
    flush()
    out.flush()
    stats["tiers"] = dict(stats["tiers"])
    return stats
