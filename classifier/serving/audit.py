"""Append-only, hash-chained JSONL audit log of routing decisions, and its verifier.

Every routing decision can be appended as one JSON line holding: a sequence number, the request id,
the UTC time, the SHA-256 of the prompt (the text itself only with ``store_text=True``), the model
version and bundle hash, the head probabilities, thresholds, policy version, the rule that fired,
the decision, and ``prev_hash`` + ``hash``. ``hash`` is the SHA-256 of the entry's canonical JSON
(sorted keys, no whitespace, ``hash`` itself left out, ``prev_hash`` included), and ``prev_hash``
is the previous line's ``hash`` (64 zeros for the first line). Editing, removing, reordering or
inserting a line therefore breaks the chain at that line, and ``verify`` names it.

A chain alone cannot notice that its last lines were cut off, so the log keeps a small sidecar
``<log>.head`` (entry count and last hash, replaced atomically on every append). ``verify`` checks
the log against it when present, and against ``expected_head`` (a hash kept somewhere else, e.g.
a monitoring system) when given. Someone who can rewrite both the log and the sidecar can rebuild
a consistent chain: anchoring the head hash outside the machine is what defends against that.

Appends are serialised across threads (a lock) and processes (``fcntl.flock`` on the log file),
and each line is written with one ``write`` on an ``O_APPEND`` descriptor. POSIX only.

``tierwise audit verify LOG`` exits 0 when the log is intact and 1 naming the first broken line.

What is left out: rotation, shipping logs elsewhere, and signing. Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.errors import AuditError

GENESIS = "0" * 64
HEAD_SUFFIX = ".head"
# how far back from the end of the file to look for the last line (grown when needed)
_TAIL_CHUNK = 64 * 1024

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "canonical_json", "entry_hash", "prompt_sha256", "verify"]


def canonical_json(entry: Mapping[str, Any]) -> str:
    """Sorted keys, compact separators, UTF-8 text, no NaN: the bytes the hash is taken over."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def prompt_sha256(prompt: str | bytes) -> str:
    data = prompt.encode("utf-8", errors="surrogatepass") if isinstance(prompt, str) else bytes(prompt)
    return hashlib.sha256(data).hexdigest()


def _plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, tuples lists, numpy scalars numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy scalar (no numpy import here)
        return _plain(value.item())
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _read_last_line(fd: int, size: int) -> bytes:
    """The last complete line of the file open at ``fd`` (of ``size`` bytes), without newline."""
    if size == 0:
        return b""
    chunk = _TAIL_CHUNK
    while True:
        start = max(0, size - chunk)
        data = os.pread(fd, size - start, start)
        body = data[:-1] if data.endswith(b"\n") else data
        cut = body.rfind(b"\n")
        if cut >= 0 or start == 0:
            return body[cut + 1:]
        chunk *= 4


class AuditLog:
    """An append-only audit log at ``path`` (created with its folder if missing)."""

    def __init__(self, path: str | Path, *, store_text: bool = False) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + HEAD_SUFFIX)
        self.store_text = bool(store_text)
        self._lock = threading.Lock()

    def append(
        self,
        decision: Any,
        *,
        request_id: str,
        prompt: str | bytes,
        model_version: str | None = None,
        bundle_hash: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Append one decision (a ``Decision`` or its ``to_dict()``); returns the written entry.

        ``extra`` keyword fields (e.g. ``latency_ms``, ``client``) are stored under ``extra``.
        """
        if not isinstance(request_id, str) or not request_id:
            raise AuditError("audit entry needs a non-empty request_id string")
        d = decision.to_dict() if hasattr(decision, "to_dict") else dict(decision)
        entry: dict[str, Any] = {
            "request_id": request_id,
            "time": _utc_now(),
            "prompt_sha256": prompt_sha256(prompt),
            "model_version": model_version,
            "bundle_hash": bundle_hash,
            "policy_version": d.get("policy_version"),
            "rule": d.get("rule"),
            "decision": {"tier": d.get("tier"), "model": d.get("model"), "blocked": bool(d.get("blocked", False))},
            "reason": d.get("reason"),
            "flags": list(d.get("flags") or []),
            "probabilities": d.get("probabilities") or {},
            "thresholds": d.get("thresholds") or {},
        }
        if d.get("detections"):  # detector rule names and offsets only, never the matched text
            entry["detections"] = [dict(x) for x in d["detections"]]
        if self.store_text:
            entry["prompt"] = prompt if isinstance(prompt, str) else bytes(prompt).decode("utf-8", "replace")
        if extra:
            entry["extra"] = extra
        entry = _plain(entry)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    entry["seq"], entry["prev_hash"] = self._tail(fd)
                    entry["hash"] = entry_hash(entry)
                    line = (canonical_json(entry) + "\n").encode("utf-8")
                    written = os.write(fd, line)
                    if written != len(line):  # disk full and the like: the line is torn
                        raise AuditError(f"{self.path}: short write ({written} of {len(line)} bytes)")
                    os.fsync(fd)
                    self._write_head(entry["seq"], entry["hash"])
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return entry

    def _tail(self, fd: int) -> tuple[int, str]:
        """(next sequence number, previous hash) read from the file under the lock."""
        size = os.fstat(fd).st_size
        if size == 0:
            return 1, GENESIS
        rfd = os.open(self.path, os.O_RDONLY)
        try:
            last = _read_last_line(rfd, size)
        finally:
            os.close(rfd)
        try:
            prev = json.loads(last.decode("utf-8"))
            return int(prev["seq"]) + 1, str(prev["hash"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise AuditError(
                f"{self.path}: the last line is not a valid audit entry; run 'tierwise audit verify "
                f"{self.path}' and start a new log rather than appending to a broken one"
            ) from None

    def _write_head(self, seq: int, last_hash: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps({"entries": seq, "hash": last_hash}) + "\n", encoding="utf-8")
        os.replace(tmp, self.head_path)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``. ``line`` is the 1-based first broken line (None when ``ok``)."""

    ok: bool
    entries: int
    last_hash: str
    line: int | None = None
    error: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    def message(self, path: str | Path = "") -> str:
        where = f"{path}: " if path else ""
        if self.ok:
            return f"{where}OK: {self.entries} entries, chain intact, head {self.last_hash}"
        return f"{where}BROKEN at line {self.line}: {self.error}"


def _check_line(raw: bytes, lineno: int, prev: str) -> tuple[str | None, dict[str, Any]]:
    """(problem or None, parsed entry) for one raw line that should continue the chain at ``prev``."""
    if not raw.endswith(b"\n"):
        return "the line is incomplete (no newline): the log was truncated mid-entry", {}
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not valid JSON ({exc})", {}
    if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str) or "prev_hash" not in entry:
        return "not an audit entry (needs 'hash' and 'prev_hash')", {}
    try:
        recomputed = entry_hash(entry)
    except ValueError as exc:
        return f"entry cannot be hashed: {exc}", {}
    if recomputed != entry["hash"]:
        return "content does not match its hash: the entry was edited", entry
    if entry["prev_hash"] != prev:
        if lineno == 1:
            return "the first entry must start the chain (prev_hash of 64 zeros)", entry
        return ("prev_hash does not match the previous line's hash: a line was removed, inserted "
                "or reordered"), entry
    if entry.get("seq") != lineno:
        return f"sequence number {entry.get('seq')!r} where {lineno} was expected", entry
    return None, entry


def verify(path: str | Path, *, expected_head: str | None = None, check_head_file: bool = True) -> VerifyResult:
    """Walk the chain of the log at ``path`` and report the first line that breaks it.

    Raises ``AuditError`` only when the file cannot be read at all.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"audit log {path} does not exist")
    head_n: int | None = None
    head_hash = ""
    head_path = path.with_name(path.name + HEAD_SUFFIX)
    if check_head_file and head_path.is_file():
        try:
            head = json.loads(head_path.read_text(encoding="utf-8"))
            head_n, head_hash = int(head["entries"]), str(head["hash"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return VerifyResult(False, 0, GENESIS, 1, f"head file {head_path} is unreadable ({exc})")
    prev = GENESIS
    n = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            problem, entry = _check_line(raw, lineno, prev)
            if problem is None and lineno == head_n and entry["hash"] != head_hash:
                problem = f"hash differs from the one {head_path.name} records for entry {head_n}"
            if problem is not None:
                return VerifyResult(False, n, prev, lineno, problem)
            prev = entry["hash"]
            n = lineno

    # A head file ahead of the log means lines were cut off the end. (Behind it is harmless: an
    # append in progress, or a crash between writing the line and updating the head file.)
    if head_n is not None and head_n > n:
        return VerifyResult(False, n, prev, n + 1,
                            f"missing: {head_path.name} records {head_n} entries, the log has {n} "
                            "(lines were cut off the end)")
    if expected_head is not None and expected_head != prev:
        return VerifyResult(False, n, prev, n + 1,
                            f"the chain ends at {prev}, not at the expected head {expected_head}")
    return VerifyResult(True, n, prev)


# -- CLI: tierwise audit verify ---------------------------------------------------------------
def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help="path of the JSONL audit log")
    parser.add_argument("--expected-head", default=None,
                        help="hash the chain must end at (kept outside this machine)")
    parser.add_argument("--no-head-file", action="store_true",
                        help="do not compare against the <log>.head sidecar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_verify(args: argparse.Namespace) -> int:
    result = verify(args.log, expected_head=args.expected_head, check_head_file=not args.no_head_file)
    if args.json:
        sys.stdout.write(json.dumps({"ok": result.ok, "entries": result.entries, "last_hash": result.last_hash,
                                     "line": result.line, "error": result.error}) + "\n")
    else:
        sys.stdout.write(result.message(args.log) + "\n")
    return 0 if result.ok else 1

