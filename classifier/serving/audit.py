"""Append-only, chained JSONL audit log of routing decisions: keyed (HMAC) and anchored by
checkpoints kept elsewhere; and its verifier.

Every routing decision can be appended as one JSON line holding: a sequence number, the request
id, the UTC time, a digest of the prompt (the text itself only with ``store_text=True``), the
model version and bundle hash, the head probabilities, thresholds, policy version, the rule that
fired, the decision, and ``prev_hash`` + ``hash``. The line is the entry's canonical JSON (sorted
keys, no whitespace); ``hash`` is taken over the canonical JSON of the entry without ``hash``
(``prev_hash`` and ``seq`` included), and ``prev_hash`` is the previous line's ``hash`` (64
zeros for the first line). Editing, removing, reordering or inserting a line breaks the chain at
that line, and ``verify`` names the line and what happened to it.

**Keyed mode** (``key=``, a secret of >= 32 bytes kept *outside* the log directory): ``hash`` is
an HMAC-SHA256 with that key, the entries say so (``"chain": "hmac-sha256"``, ``key_id``), and
the ``.head`` sidecar carries an HMAC too. Someone who can write the log directory but does not
hold the key cannot write an entry (or a head) that verifies: a forged or recomputed line is
caught. **Checkpoints** (``checkpoints=`` another path, on storage the log writer's attacker
cannot rewrite: another volume or user, an append-only file, a log shipper): every
``checkpoint_every`` entries, every ``checkpoint_seconds`` seconds when there are new entries, and
at ``close``, one HMAC'd, chained line records the entry count and the head hash. Cutting lines
off the end (and deleting or rewinding ``.head``) is then caught for every entry up to the last
checkpoint; only the entries written since it (at most ``checkpoint_every`` entries or
``checkpoint_seconds`` seconds) can be cut unnoticed. ``status()`` gives the latest checkpoint for
``/metrics`` (a monitoring system that scrapes it holds a second copy of the anchor).

**Prompt digests.** With ``prompt_key=`` (a separate per-deployment secret) the prompt is stored
as ``prompt_hmac`` = HMAC-SHA256(prompt_key, prompt) with its ``prompt_key_id``: whoever holds the
log but not that key cannot confirm a guessed prompt. Without it, the legacy unsalted
``prompt_sha256`` is written (guessable: a warning is logged). Rotation: start a new log (or keep
appending; ``prompt_key_id`` names the key of each entry) with the new key and keep the old key
as long as the old entries must be matchable; a digest cannot be re-keyed without the prompt.

**Verification reads raw bytes.** Each line must be exactly the canonical JSON of the entry it
parses to (so an inserted duplicate key, reordered keys or changed whitespace are edits), and
``hash`` must verify. Without a key (legacy logs) the chain is plain SHA-256 and anyone can
rebuild it; ``.head`` then only catches careless truncation.

Appends are serialised across threads (a lock) and processes (``fcntl.flock`` on the log file),
and each line is written with one ``write`` on an ``O_APPEND`` descriptor. POSIX only.

``tierwise audit verify LOG [--key K --checkpoints C]`` exits 0 when the log is intact, 1 naming
the first broken line and what was done to it (edited, deleted, reordered, inserted, truncated,
forged), 2 when it cannot be read. ``tierwise audit keygen OUT`` writes a new key.

What is left out: rotation of the log file, shipping logs or checkpoints elsewhere (point
``checkpoints`` at such a sink), public-key signatures of checkpoints (an HMAC needs the key to
verify). Standard library only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from classifier.errors import AuditError, ConfigError

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD_SUFFIX = ".head"
CHAIN_HMAC = "hmac-sha256"
MIN_KEY_BYTES = 32
DEFAULT_CHECKPOINT_EVERY = 1000
DEFAULT_CHECKPOINT_SECONDS = 60.0
# how far back from the end of the file to look for the last line (grown when needed)
_TAIL_CHUNK = 64 * 1024

__all__ = ["GENESIS", "AuditLog", "VerifyResult", "canonical_json", "entry_hash", "generate_key", "key_id",
           "load_key", "prompt_digest", "prompt_sha256", "verify"]


def canonical_json(entry: Mapping[str, Any]) -> str:
    """Sorted keys, compact separators, UTF-8 text, no NaN: the bytes the hash is taken over."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _mac(key: bytes | None, data: bytes) -> str:
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def entry_hash(entry: Mapping[str, Any], key: bytes | None = None) -> str:
    """SHA-256 (no key) or HMAC-SHA256 (with ``key``), hex, of the canonical JSON of ``entry``
    without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return _mac(key, canonical_json(body).encode("utf-8"))


def _prompt_bytes(prompt: str | bytes) -> bytes:
    return prompt.encode("utf-8", errors="surrogatepass") if isinstance(prompt, str) else bytes(prompt)


def prompt_sha256(prompt: str | bytes) -> str:
    """Unsalted SHA-256 of a prompt (legacy: anyone can confirm a guess; prefer ``prompt_digest``)."""
    return hashlib.sha256(_prompt_bytes(prompt)).hexdigest()


def prompt_digest(prompt: str | bytes, key: bytes) -> str:
    """HMAC-SHA256 of a prompt with the deployment's prompt key: matchable only with the key."""
    return hmac.new(key, _prompt_bytes(prompt), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A short public name of a secret key (does not reveal it)."""
    return hashlib.sha256(b"tierwise-key-id\n" + key).hexdigest()[:16]


def generate_key(path: str | Path) -> Path:
    """Write a new random 32-byte key as hex to ``path`` (mode 0600); refuses to overwrite."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return path


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False


def load_key(path: str | Path, *, log_path: str | Path | None = None, what: str = "audit key") -> bytes:
    """Read a key file (hex text, or raw bytes) of at least 32 bytes. With ``log_path``, a key
    inside the log's directory is refused: whoever can write the log must not read its key there."""
    path = Path(path)
    if log_path is not None and _inside(path, Path(log_path).parent):
        raise ConfigError(f"the {what} {path} is inside the audit log's directory {Path(log_path).parent}; keep "
                          "it outside (anyone who can write the log directory could read it)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"the {what} {path} holds {len(key)} bytes; at least {MIN_KEY_BYTES} are needed "
                          "(make one with tierwise audit keygen)")
    return key


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


def _head_mac(key: bytes, entries: int, head: str) -> str:
    return hmac.new(key, f"tierwise-audit-head\n{entries}\n{head}".encode(), hashlib.sha256).hexdigest()


class AuditLog:
    """An append-only audit log at ``path`` (created with its folder if missing).

    ``key``: chain entries with HMAC-SHA256 (bytes, >= 32; see :func:`load_key`).
    ``checkpoints``: path of the checkpoint sink (needs ``key``; not in the log's directory).
    ``prompt_key``: store prompts as keyed digests (``prompt_hmac``) instead of unsalted SHA-256.
    ``on_checkpoint``: called with each checkpoint written (e.g. to publish it in ``/metrics``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        store_text: bool = False,
        key: bytes | None = None,
        prompt_key: bytes | None = None,
        checkpoints: str | Path | None = None,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_seconds: float | None = DEFAULT_CHECKPOINT_SECONDS,
        on_checkpoint: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + HEAD_SUFFIX)
        self.store_text = bool(store_text)
        for name, value in (("key", key), ("prompt_key", prompt_key)):
            if value is not None and (not isinstance(value, bytes) or len(value) < MIN_KEY_BYTES):
                raise ConfigError(f"audit {name} must be at least {MIN_KEY_BYTES} bytes")
        self.key = key
        self.key_id = key_id(key) if key is not None else None
        self.prompt_key = prompt_key
        self.prompt_key_id = key_id(prompt_key) if prompt_key is not None else None
        if checkpoints is not None:
            if key is None:
                raise ConfigError("audit checkpoints need a key (they are HMAC'd with it)")
            checkpoints = Path(checkpoints)
            if _inside(checkpoints.parent, self.path.parent):
                raise ConfigError(f"the checkpoint sink {checkpoints} is in the audit log's directory; put it on "
                                  "storage that whoever can write the log cannot rewrite")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
        if checkpoint_seconds is not None and not checkpoint_seconds > 0:
            raise ConfigError(f"checkpoint_seconds must be > 0 (or None), got {checkpoint_seconds!r}")
        self.checkpoints = checkpoints
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.on_checkpoint = on_checkpoint
        self.last_checkpoint: dict[str, Any] | None = None
        self.entries = 0
        self.head = GENESIS
        self._pending = 0  # entries appended by this process since its last checkpoint
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if key is None and checkpoints is None:
            logger.debug("audit log %s is not keyed: its chain can be rebuilt by anyone who can write it", self.path)
        if prompt_key is None and not self.store_text:
            logger.warning("audit log %s stores unsalted prompt SHA-256 digests (a guessed prompt can be confirmed); "
                           "configure a prompt key", self.path)
        if self.checkpoints is not None and self.checkpoint_seconds:
            self._timer = threading.Thread(target=self._timer_loop, name="tierwise-audit-checkpoint", daemon=True)
            self._timer.start()

    # -- appending ---------------------------------------------------------------------------
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
        entry: dict[str, Any] = {"request_id": request_id, "time": _utc_now()}
        if self.prompt_key is not None:
            entry["prompt_hmac"] = prompt_digest(prompt, self.prompt_key)
            entry["prompt_key_id"] = self.prompt_key_id
        else:
            entry["prompt_sha256"] = prompt_sha256(prompt)
        entry.update({
            "model_version": model_version,
            "bundle_hash": bundle_hash,
            "policy_version": d.get("policy_version"),
            "rule": d.get("rule"),
            "decision": {"tier": d.get("tier"), "model": d.get("model"), "blocked": bool(d.get("blocked", False))},
            "reason": d.get("reason"),
            "flags": list(d.get("flags") or []),
            "probabilities": d.get("probabilities") or {},
            "thresholds": d.get("thresholds") or {},
        })
        if d.get("detections"):  # detector rule names and offsets only, never the matched text
            entry["detections"] = [dict(x) for x in d["detections"]]
        if self.store_text:
            entry["prompt"] = prompt if isinstance(prompt, str) else bytes(prompt).decode("utf-8", "replace")
        if extra:
            entry["extra"] = extra
        if self.key is not None:
            entry["chain"] = CHAIN_HMAC
            entry["key_id"] = self.key_id
        entry = _plain(entry)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = None
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    entry["seq"], entry["prev_hash"] = self._tail(fd)
                    entry["hash"] = entry_hash(entry, self.key)
                    line = (canonical_json(entry) + "\n").encode("utf-8")
                    written = os.write(fd, line)
                    if written != len(line):  # disk full and the like: the line is torn
                        raise AuditError(f"{self.path}: short write ({written} of {len(line)} bytes)")
                    os.fsync(fd)
                    self._write_head(entry["seq"], entry["hash"])
                    self.entries, self.head = entry["seq"], entry["hash"]
                    self._pending += 1
                    if self.checkpoints is not None and entry["seq"] % self.checkpoint_every == 0:
                        checkpoint = self._write_checkpoint(entry["seq"], entry["hash"])
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        if checkpoint is not None:
            self._published(checkpoint)
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
        doc: dict[str, Any] = {"entries": seq, "hash": last_hash}
        if self.key is not None:
            doc["mac"] = _head_mac(self.key, seq, last_hash)
        tmp = self.head_path.with_name(self.head_path.name + f".tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        os.replace(tmp, self.head_path)

    # -- checkpoints -------------------------------------------------------------------------
    def _write_checkpoint(self, entries: int, head: str) -> dict[str, Any]:
        """Append one checkpoint line (caller holds the log's lock); returns it."""
        assert self.checkpoints is not None and self.key is not None  # noqa: S101 - callers check
        self.checkpoints.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.checkpoints, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(fd).st_size
                seq, prev = 1, GENESIS
                if size:
                    try:
                        last = json.loads(_read_last_line(fd, size).decode("utf-8"))
                        seq, prev = int(last["seq"]) + 1, str(last["mac"])
                    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                        raise AuditError(f"{self.checkpoints}: the last checkpoint line is damaged; "
                                         "verify the log and start a new checkpoint file") from None
                cp: dict[str, Any] = {"type": "checkpoint", "log": self.path.name, "seq": seq, "entries": entries,
                                      "head": head, "time": _utc_now(), "key_id": self.key_id, "prev": prev}
                cp["mac"] = _mac(self.key, canonical_json(cp).encode("utf-8"))
                line = (canonical_json(cp) + "\n").encode("utf-8")
                if os.write(fd, line) != len(line):
                    raise AuditError(f"{self.checkpoints}: short write of a checkpoint")
                os.fsync(fd)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        self._pending = 0
        self.last_checkpoint = cp
        return cp

    def _published(self, checkpoint: dict[str, Any]) -> None:
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint(checkpoint)
            except Exception:  # noqa: BLE001 - publishing must never lose an audit write
                logger.exception("publishing audit checkpoint failed")

    def checkpoint(self) -> dict[str, Any] | None:
        """Write a checkpoint of the log's current end now (None without a sink or entries)."""
        if self.checkpoints is None or not self.path.is_file():
            return None
        with self._lock:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    size = os.fstat(fd).st_size
                    if size == 0:
                        return None
                    entries, head = self._tail(fd)
                    entries -= 1
                    if self.last_checkpoint is not None and self.last_checkpoint["entries"] == entries:
                        self._pending = 0
                        return None
                    cp = self._write_checkpoint(entries, head)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._published(cp)
        return cp

    def _timer_loop(self) -> None:
        while not self._stop.wait(self.checkpoint_seconds):
            if self._pending:
                try:
                    self.checkpoint()
                except (AuditError, OSError) as exc:
                    logger.error("audit checkpoint failed: %s", exc)

    def status(self) -> dict[str, Any]:
        """Entries and head seen by this process, and the latest checkpoint (for ``/metrics``)."""
        return {"entries": self.entries, "head": self.head, "keyed": self.key is not None,
                "prompt_keyed": self.prompt_key is not None, "checkpoint": self.last_checkpoint}

    def close(self) -> None:
        """Stop the checkpoint timer and write a final checkpoint when entries are pending."""
        self._stop.set()
        if self._pending and self.checkpoints is not None:
            self.checkpoint()


# -- verification ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``. ``line`` is the 1-based first broken line (None when ``ok``);
    ``kind`` says what happened: edited, deleted, reordered, inserted, truncated, forged, damaged."""

    ok: bool
    entries: int
    last_hash: str
    line: int | None = None
    error: str | None = None
    kind: str | None = None
    checkpoints: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def message(self, path: str | Path = "") -> str:
        where = f"{path}: " if path else ""
        if self.ok:
            anchored = f", {self.checkpoints} checkpoints match" if self.checkpoints else ""
            return f"{where}OK: {self.entries} entries, chain intact{anchored}, head {self.last_hash}"
        return f"{where}BROKEN at line {self.line} ({self.kind}): {self.error}"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse_raw(raw: bytes) -> tuple[str | None, str | None, dict[str, Any]]:
    """(problem, kind, entry) for one raw line: it must be exactly the canonical JSON it parses to."""
    if not raw.endswith(b"\n"):
        return "the line is incomplete (no newline): the log was truncated mid-entry", "truncated", {}
    try:
        entry = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if "duplicate key" in str(exc):
            return f"{exc} in the line: the entry was edited", "edited", {}
        return f"not valid JSON ({exc})", "damaged", {}
    if not isinstance(entry, dict):
        return "not an audit entry (not a JSON object)", "damaged", {}
    try:
        canonical = (canonical_json(entry) + "\n").encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        return f"entry cannot be serialised: {exc}", "damaged", entry
    if canonical != raw:
        return ("the line's bytes are not the canonical JSON the writer writes (keys, spacing or escapes "
                "changed): the entry was edited"), "edited", entry
    return None, None, entry


def _check_line(raw: bytes, lineno: int, prev: str, key: bytes | None,
                last: bool) -> tuple[str | None, str | None, dict[str, Any]]:
    """(problem, kind, entry) for one raw line that should continue the chain at ``prev``."""
    problem, kind, entry = _parse_raw(raw)
    if problem is not None:
        return problem, kind, entry
    if not isinstance(entry.get("hash"), str) or "prev_hash" not in entry:
        return "not an audit entry (needs 'hash' and 'prev_hash')", "damaged", entry
    keyed = entry.get("chain") == CHAIN_HMAC
    if key is not None and not keyed:
        return ("the entry is not keyed (no HMAC) in a keyed log: it was forged"
                + (" and appended" if last else "")), "forged", entry
    if keyed and key is None:
        raise AuditError("the log is keyed (hmac-sha256, key id "
                         f"{entry.get('key_id')}): verify it with --key")
    if keyed and entry.get("key_id") != key_id(key):  # type: ignore[arg-type]
        return (f"the entry names key id {entry.get('key_id')!r}, the key given is {key_id(key)!r}"  # type: ignore[arg-type]
                ": forged, or written with another key"), "forged", entry
    try:
        recomputed = entry_hash(entry, key if keyed else None)
    except ValueError as exc:
        return f"entry cannot be hashed: {exc}", "damaged", entry
    if not hmac.compare_digest(recomputed, entry["hash"]):
        if keyed:
            return ("the entry's HMAC does not verify with the audit key: it was edited, or forged"
                    + (" and appended at the end" if last else "")), ("forged" if last else "edited"), entry
        return "content does not match its hash: the entry was edited", "edited", entry
    seq = entry.get("seq")
    if entry["prev_hash"] != prev or seq != lineno:
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > lineno:
            return (f"entries {lineno}..{seq - 1} are missing before this line (it is entry {seq}): "
                    "lines were deleted"), "deleted", entry
        if isinstance(seq, int) and not isinstance(seq, bool) and seq < lineno:
            return f"entry {seq} appears again at line {lineno}: a copy was inserted", "inserted", entry
        if lineno == 1:
            return "the first entry must start the chain (prev_hash of 64 zeros)", "inserted", entry
        return ("prev_hash does not match the previous line's hash: the previous line was edited and "
                "re-hashed, or a line was removed, inserted or reordered"), "edited", entry
    return None, None, entry


def _deleted_or_reordered(seq: int, lineno: int, rest: list[bytes], problem: str) -> tuple[str, str]:
    """An entry that comes too early: were the entries it skips deleted, or do they come later?"""
    missing = set(range(lineno, seq))
    for raw in rest:
        try:
            later = json.loads(raw).get("seq")
        except (ValueError, AttributeError):
            continue
        if later in missing:
            return (f"entry {seq} is at line {lineno} and entry {later} comes after it: lines were reordered",
                    "reordered")
    return problem, "deleted"


def _read_checkpoints(path: Path, key: bytes, log_name: str) -> tuple[dict[int, tuple[int, str]], str | None]:
    """{entries: (checkpoint seq, head)} of a checkpoint file, or (partial, problem)."""
    out: dict[int, tuple[int, str]] = {}
    prev = GENESIS
    kid = key_id(key)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read checkpoints {path}: {exc.strerror}") from None
    with fh:
        last_entries = 0
        for n, raw in enumerate(fh, start=1):
            problem, _, cp = _parse_raw(raw)
            if problem is not None:
                return out, f"checkpoint line {n}: {problem}"
            body = {k: v for k, v in cp.items() if k != "mac"}
            if cp.get("key_id") != kid or not hmac.compare_digest(
                    _mac(key, canonical_json(body).encode("utf-8")), str(cp.get("mac"))):
                return out, f"checkpoint line {n} does not verify with the audit key: the checkpoints were forged"
            if cp.get("prev") != prev or cp.get("seq") != n:
                return out, f"checkpoint line {n} does not continue the checkpoint chain: checkpoints were removed"
            if cp.get("log") != log_name:
                continue
            entries = int(cp["entries"])
            if entries < last_entries:
                return out, f"checkpoint line {n} records fewer entries than an earlier one"
            last_entries = entries
            out[entries] = (n, str(cp["head"]))
            prev = str(cp["mac"])
    return out, None


def verify(path: str | Path, *, expected_head: str | None = None, check_head_file: bool = True,
           key: bytes | None = None, checkpoints: str | Path | None = None) -> VerifyResult:
    """Walk the chain of the log at ``path`` and report the first line that breaks it, and what
    was done to it. With ``key`` the HMACs are checked (and ``.head``'s); with ``checkpoints``
    every checkpoint must match the log (an entry count past the log's end: lines were cut off).

    Raises ``AuditError`` only when a file cannot be read at all, or a keyed log is given no key.
    """
    path = Path(path)
    if not path.is_file():
        raise AuditError(f"audit log {path} does not exist")
    anchors: dict[int, tuple[int, str]] = {}
    if checkpoints is not None:
        if key is None:
            raise AuditError("checking checkpoints needs the audit key (--key)")
        anchors, problem = _read_checkpoints(Path(checkpoints), key, path.name)
        if problem is not None:
            return VerifyResult(False, 0, GENESIS, None, problem, "forged")
    head_n: int | None = None
    head_hash = ""
    head_path = path.with_name(path.name + HEAD_SUFFIX)
    if check_head_file and head_path.is_file():
        try:
            head = json.loads(head_path.read_text(encoding="utf-8"))
            head_n, head_hash = int(head["entries"]), str(head["hash"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return VerifyResult(False, 0, GENESIS, 1, f"head file {head_path} is unreadable ({exc})", "damaged")
        if key is not None and not hmac.compare_digest(str(head.get("mac", "")), _head_mac(key, head_n, head_hash)):
            return VerifyResult(False, 0, GENESIS, None,
                                f"head file {head_path.name} does not verify with the audit key: it was forged",
                                "forged")
    prev = GENESIS
    n = 0
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc}") from None
    with fh:
        raw = fh.readline()
        lineno = 0
        while raw:
            lineno += 1
            nxt = fh.readline()
            problem, kind, entry = _check_line(raw, lineno, prev, key, last=not nxt)
            if problem is None and lineno == head_n and entry["hash"] != head_hash:
                problem, kind = f"hash differs from the one {head_path.name} records for entry {head_n}", "edited"
            if problem is None and lineno in anchors and anchors[lineno][1] != entry["hash"]:
                problem = (f"hash differs from the one checkpoint {anchors[lineno][0]} records for entry {lineno}: "
                           "the log was rewritten")
                kind = "edited"
            if problem is not None:
                if kind == "deleted" and isinstance(entry.get("seq"), int):
                    problem, kind = _deleted_or_reordered(entry["seq"], lineno, [nxt, *fh], problem)
                return VerifyResult(False, n, prev, lineno, problem, kind, len([a for a in anchors if a <= n]))
            prev = entry["hash"]
            n = lineno
            raw = nxt

    # A head file or checkpoint ahead of the log means lines were cut off the end. (A head file
    # behind it is harmless: an append in progress, or a crash between the line and the head.)
    past = [a for a in anchors if a > n]
    if past:
        far = max(past)
        return VerifyResult(False, n, prev, n + 1,
                            f"lines {n + 1}..{far} were cut off the end: checkpoint {anchors[far][0]} records "
                            f"{far} entries (head {anchors[far][1][:16]}...), the log has {n}", "truncated",
                            len(anchors) - len(past))
    if head_n is not None and head_n > n:
        return VerifyResult(False, n, prev, n + 1,
                            f"missing: {head_path.name} records {head_n} entries, the log has {n} "
                            "(lines were cut off the end)", "truncated")
    if expected_head is not None and expected_head != prev:
        return VerifyResult(False, n, prev, n + 1,
                            f"the chain ends at {prev}, not at the expected head {expected_head}", "truncated")
    return VerifyResult(True, n, prev, checkpoints=len(anchors))


# -- CLI: tierwise audit verify / keygen ---------------------------------------------------------
def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", help="path of the JSONL audit log")
    parser.add_argument("--key", type=Path, default=None, help="the audit key file (a keyed log needs it)")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="the checkpoint file the server wrote (--audit-checkpoints); catches cut-off ends")
    parser.add_argument("--expected-head", default=None,
                        help="hash the chain must end at (kept outside this machine)")
    parser.add_argument("--no-head-file", action="store_true",
                        help="do not compare against the <log>.head sidecar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run_verify(args: argparse.Namespace) -> int:
    key = load_key(args.key) if args.key is not None else None
    result = verify(args.log, expected_head=args.expected_head, check_head_file=not args.no_head_file,
                    key=key, checkpoints=args.checkpoints)
    if args.json:
        sys.stdout.write(json.dumps({"ok": result.ok, "entries": result.entries, "last_hash": result.last_hash,
                                     "line": result.line, "kind": result.kind, "error": result.error,
                                     "checkpoints": result.checkpoints}) + "\n")
    else:
        sys.stdout.write(result.message(args.log) + "\n")
        if result.ok and args.checkpoints is None:
            sys.stdout.write("note: without --checkpoints, lines cut off the end with .head are not detected\n")
    return 0 if result.ok else 1


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="file to write the new key to (hex, mode 0600)")


def run_keygen(args: argparse.Namespace) -> int:
    path = generate_key(args.out)
    sys.stdout.write(f"wrote {path} (key id {key_id(load_key(path))}); keep it outside the audit log's directory\n")
    return 0
