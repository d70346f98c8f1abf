"""The torch-free runtime: load a verified bundle and turn prompts into routing decisions.

``Router.load(path)`` verifies the bundle manifest (a directory or its ``.tar.gz``), builds one
ONNX Runtime session and one fast tokenizer from the verified bytes, reads the calibration
(temperatures, and per-class biases where ``calibration.json`` has them) and the routing policy,
and warms the session up. Then::

    router.logits(texts)         # raw logits per head, [n, C]
    router.predict_proba(texts)  # softmax(logits / T + b) per head (b = 0 without biases)
    router.route("text")         # -> Decision; router.route([...]) -> list[Decision]

``route`` never raises, whatever it is given: a prompt it cannot classify gets the policy's
explicit safe decision (escalate), flagged, with the reason. What each kind of input gets:

- not a string (None, a number, bytes, ...), empty, or nothing but whitespace, control and
  invisible format characters: the safe decision, flagged ``invalid_input``;
- a string that is not valid Unicode (lone surrogates such as ``"\\ud800"``, which is also what
  the server makes of invalid UTF-8 bytes inside a JSON string): the safe decision, ``invalid_input``;
- C0/C1 control characters (NUL, ESC, DEL, ...; tab, newline and carriage return are kept): they
  are deleted before tokenising, as BERT's text cleaning does (so ``AKIA\\x00KEY`` is read as
  ``AKIAKEY`` and a credential cannot be hidden by splitting it), and the decision is flagged
  ``control_chars``; a prompt with nothing visible left gets the safe decision (``invalid_input``);
- any other text (mixed scripts, emoji, right-to-left marks) is classified as it is; characters
  the tokenizer does not know become its unknown token;
- an inference fault (the ONNX session raises, returns outputs of the wrong shape or non-finite
  logits) or a run past ``deadline_ms``: the safe decision, flagged ``fallback``, for every prompt
  of that call, with the reason (the fault is logged, never the prompt).

**Truncation policy.** The model reads a bounded window of each prompt: first the prompt is cut to
``input_limits.max_chars`` characters (this bounds the tokenizer's work whatever the size of the
input), then control characters are deleted, then the tokenizer keeps the first
``input_limits.max_length`` tokens (special tokens included). Whatever lies past the window is
not read: the decision is flagged ``truncated`` so the policy owner and the audit log can see that
the classifier saw only the head of the prompt. The deterministic detectors (``detectors.json``,
``Router._scan``) read the **whole** prompt as received, so a credential past the window is still
found by them; their hits go to the policy and into ``Decision.detections``.

**Deadline.** With ``deadline_ms`` set (``Router.load(..., deadline_ms=...)``), each ``route``
call has that budget for tokenising and inference. A watchdog thread sets ONNX Runtime's
``RunOptions.terminate`` on a run past its deadline, so a stuck or very slow run is abandoned
rather than waited for; a call that still ends past its deadline is answered with the safe
decision, ``fallback``. A batch is one call: its prompts share the budget.
Batches are answered like single prompts (padding is masked out).

What this module leaves out: the policy rules (``policy.py``), audit logging (``audit.py``) and
HTTP (``app.py``). It imports numpy, onnxruntime, tokenizers, pyyaml and the standard library only,
never torch or transformers, so a router process stays small and starts fast.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import functools
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import yaml
from tokenizers import Tokenizer

from classifier.data.schema import LabelSchema
from classifier.errors import BundleError, ConfigError, InputError, PolicyError, SchemaError
from classifier.numeric import softmax
from classifier.serving import bundle as bundle_io
from classifier.serving.detectors import DETECTORS_FILE, Detectors, Hit
from classifier.serving.policy import Decision, Policy, PolicyEngine
from classifier.serving.request import Request, RequestError, parse_request, plain
from classifier.serving.view import (
    ModelView,
    Segments,
    paragraph_tail,
    sensitivity_windows,
    tier_rows,
)
from classifier.serving.word_cache import WordCache

logger = logging.getLogger(__name__)

FLAG_TRUNCATED = "truncated"
FLAG_INVALID_INPUT = "invalid_input"
FLAG_FALLBACK = "fallback"
FLAG_CONTROL_CHARS = "control_chars"
FLAG_LONG_REQUEST = "long_request"
INPUT_NAMES = ("input_ids", "attention_mask")
# Agents send the same system prompt and tool schemas on every call. A piece of a request this
# long (the tool schemas, one message) has its detector hits kept for reuse, and the logits of a
# long request's model rows are kept too, so a repeated prefix is scanned and run once (LRU).
SCAN_CACHE_MIN_CHARS = 1000
SCAN_CACHE_SIZE = 64
ROW_CACHE_SIZE = 4096

# C0 and C1 control characters and DEL, except tab, newline and carriage return
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# a character that is none of: whitespace, control, or an invisible format character (soft
# hyphen, zero-width space/joiners, bidi marks and isolates, word joiner, BOM, variation selectors)
_VISIBLE = re.compile(
    r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufe00-\ufe0f\ufeff]"
)


def output_name(head: str) -> str:
    """The ONNX output holding a head's logits."""
    return f"logits_{head}"


def check_text(text: Any) -> str | None:
    """Why ``text`` cannot be classified, or None when it can. Never raises."""
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    if _VISIBLE.search(text) is None:
        if not text.strip():
            return "the prompt is empty"
        return "the prompt is empty (nothing but control, format or whitespace characters)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"the prompt is not valid Unicode text ({exc.reason} at position {exc.start})"
    return None


class DeadlineExceeded(Exception):
    """A ``route`` call ran past its ``deadline_ms`` (internal: answered with the safe decision)."""


class _Watchdog:
    """One daemon thread that sets ``RunOptions.terminate`` on ONNX runs past their deadline.

    ``arm`` and ``disarm`` are a lock and a dict operation each (no thread wake-up on the request
    path); the thread looks at the armed runs every ``period`` seconds, so a run is stopped between
    its deadline and ``period`` later. The router picks ``period`` as a quarter of its deadline.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._runs: dict[int, tuple[float, ort.RunOptions]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, run_options: ort.RunOptions) -> int:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tierwise-deadline", daemon=True)
                self._thread.start()
            key = self._next
            self._next += 1
            self._runs[key] = (deadline, run_options)
            return key

    def disarm(self, key: int) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def close(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            now = time.monotonic()
            with self._lock:
                for key, (deadline, run_options) in list(self._runs.items()):
                    if deadline <= now:
                        run_options.terminate = True  # ONNX Runtime stops at its next node
                        del self._runs[key]


def _single(texts: Any) -> bool:
    """Is ``texts`` one request (a prompt string or a body), not a list of them?"""
    return isinstance(texts, (str, Mapping, Request))


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` (int64) of token rows padded to the longest one."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = r
        mask[k, :len(r)] = 1
    return ids, mask

class Router:
    """A loaded bundle: tokenizer + ONNX session + calibration (temperatures, biases) + policy engine.

    Thread-safe for concurrent ``logits``/``predict_proba``/``route`` calls (ONNX Runtime sessions
    and tokenizers may be shared between threads). Build it with :meth:`load`.
    """

    def __init__(
        self,
        *,
        bundle_dir: Path,
        manifest: bundle_io.Manifest,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        schema: LabelSchema,
        temperatures: Mapping[str, float],
        policy: Policy,
        source: Path | None = None,
        opened: bundle_io.OpenedBundle | None = None,
        deadline_ms: float | None = None,
        biases: Mapping[str, Any] | None = None,
        detectors: Detectors | None = None,
        view: ModelView | Mapping[str, Any] | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.detectors = detectors  # (a property: setting it empties the scan cache)
        self.source = source or bundle_dir
        self.manifest = manifest
        self.input_limits = manifest.input_limits
        self.schema = schema
        self.head_names = schema.head_names
        self.temperatures = {h: float(temperatures.get(h, 1.0)) for h in self.head_names}
        biases = biases or {}
        # per-class biases as read-only float64 [C] vectors, built once: the hot path only adds them
        self.biases: dict[str, np.ndarray] = {}
        for h in self.head_names:
            if biases.get(h) is not None:
                b = np.array(biases[h], dtype=np.float64).reshape(-1)
                b.setflags(write=False)
                self.biases[h] = b
        self._calibration = [(h, self.temperatures[h], self.biases.get(h)) for h in self.head_names]
        # every head's calibrated softmax in one pass over [n, sum C]: the arithmetic of
        # ``numeric.softmax`` per head (equal within 1e-15: numpy's vector exp may round the last
        # bit differently), in a sixth of the numpy calls
        sizes = self._num_classes = [schema.head(h).num_classes for h in self.head_names]
        starts = np.cumsum([0, *sizes])
        self._columns = [(h, int(a), int(b)) for h, a, b in zip(self.head_names, starts[:-1], starts[1:], strict=True)]
        self._starts = starts[:-1]
        self._head_of_col = np.repeat(np.arange(len(sizes)), sizes)
        self._t_cols = np.repeat([self.temperatures[h] for h in self.head_names], sizes).astype(np.float64)
        self._b_cols = np.concatenate([self.biases[h] if h in self.biases else np.zeros(c)
                                       for h, c in zip(self.head_names, sizes, strict=True)])
        self.policy = policy
        self.engine = PolicyEngine(policy, schema)
        self._session = session
        # int8 bundles quantise activations per batch, so a row's logits depend on its batch: no reuse
        self._row_cache = _RowCache(ROW_CACHE_SIZE) if manifest.quantization is None else None
        self._tokenizer = tokenizer
        self._opened = opened
        self._outputs = [output_name(h) for h in self.head_names]
        self._max_batch = self.input_limits.max_batch
        # sha256 of manifest.json: names this exact bundle (model, tokenizer, policy, calibration)
        self.bundle_hash = bundle_io.sha256_file(bundle_dir / bundle_io.MANIFEST_FILE)
        self.model_version = manifest.mlflow_model_version or manifest.training_run_id
        self.deadline_ms = _check_deadline(deadline_ms)
        self._watchdog = _Watchdog(period=min(1.0, (self.deadline_ms or 1000.0) / 4000.0))
        self._init_view(view)

    @property
    def detectors(self) -> Detectors | None:
        """The deterministic detectors (None: off). Assigning new ones empties the scan cache."""
        return self._detectors

    @detectors.setter
    def detectors(self, value: Detectors | None) -> None:
        self._detectors = value
        self._scan_piece = None if value is None else functools.lru_cache(maxsize=SCAN_CACHE_SIZE)(
            lambda text: tuple(value.scan(text)))

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        threads: int = 1,
        policy: Policy | str | Path | Mapping[str, Any] | None = None,
        *,
        deadline_ms: float | None = None,
        trusted_keys: Sequence[Any] | None = None,
        expect_sha256: str | None = None,
        view: ModelView | Mapping[str, Any] | None = None,
    ) -> Router:
        """Verify and load a bundle directory or ``.tar.gz`` (bounded: see ``bundle.py``).

        ``threads`` is ONNX Runtime's intra-op thread count (1 suits a server that answers many
        small requests in parallel). ``policy`` replaces the bundle's own ``policy.yaml``.
        ``deadline_ms`` bounds each ``route`` call (None: no deadline); see the module docstring.
        ``trusted_keys`` (paths of Ed25519 public keys, or ``signing.TrustedKey``s; None: those
        named by ``$TIERWISE_TRUSTED_KEYS``) makes an unsigned or wrongly signed bundle, or a policy
        whose content changed under an approved version, a ``BundleError``; ``expect_sha256`` pins
        the sha256 of the bundle's ``manifest.json``. See ``signing.py``.
        ``view`` (a ``ModelView`` or a mapping of its fields) says which text each head reads;
        None: the documented default (``classifier/serving/view.py``).
        """
        from classifier.serving import signing

        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
        deadline_ms = _check_deadline(deadline_ms)
        keys = signing.trusted_keys_from_env() if trusted_keys is None else signing.load_trusted_keys(trusted_keys)
        opened = bundle_io.OpenedBundle(path)
        try:
            return cls._load_dir(opened, threads, policy, deadline_ms, keys, expect_sha256, view)
        except BaseException:
            opened.close()
            raise

    @classmethod
    def _load_dir(cls, opened: bundle_io.OpenedBundle, threads: int, policy: Any,
                  deadline_ms: float | None = None, trusted_keys: Sequence[Any] = (),
                  expect_sha256: str | None = None, view: Any = None) -> Router:
        from classifier.serving import signing

        directory = opened.directory
        verified = bundle_io.read_verified(directory)
        manifest, files = verified.manifest, verified.contents
        try:
            trust = signing.check_bundle_trust(verified, trusted_keys, expect_sha256)
        except BundleError as exc:
            raise BundleError(f"{opened.source}: {exc}") from None
        schema = _parse_schema(files[bundle_io.SCHEMA_FILE], directory)
        temperatures, biases = _parse_calibration(files.get(bundle_io.CALIBRATION_FILE), schema, directory)
        resolved = _resolve_policy(policy, files[bundle_io.POLICY_FILE], directory)
        try:
            trust["policy"] = signing.check_policy_binding(manifest, _policy_doc(policy, resolved),
                                                           required=bool(trusted_keys))
        except BundleError as exc:
            raise BundleError(f"{opened.source}: {exc}") from None
        tokenizer = _build_tokenizer(files[bundle_io.TOKENIZER_FILE], manifest.input_limits, directory)
        session = _build_session(files[bundle_io.MODEL_FILE], threads, schema, directory)
        detectors = None
        if DETECTORS_FILE in files:
            detectors = Detectors.from_bytes(files[DETECTORS_FILE], where=str(directory / DETECTORS_FILE))
        else:
            logger.warning("%s has no %s: deterministic detectors are off (add them with "
                           "`tierwise detectors install %s`)", directory, DETECTORS_FILE, directory)
        router = cls(
            bundle_dir=directory, manifest=manifest, session=session, tokenizer=tokenizer,
            schema=schema, temperatures=temperatures, policy=resolved, source=opened.source, opened=opened,
            deadline_ms=deadline_ms, biases=biases, detectors=detectors, view=view,
        )
        # the digest of the manifest bytes that were verified (not a second read of the file)
        router.bundle_hash = verified.digest
        router.trust = trust
        router._warm_up()
        return router

    def _warm_up(self) -> None:
        # the first run allocates buffers and picks kernels: pay for it at load, not on request 1
        self.logits(["warm up"])

    def close(self) -> None:
        """Remove the temporary extraction of an archive bundle (no-op for a directory) and stop
        the deadline watchdog."""
        self._watchdog.close()
        if self._opened is not None:
            self._opened.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- numbers -------------------------------------------------------------------------------
    def _run(self, ids: np.ndarray, mask: np.ndarray, deadline: float | None = None) -> list[np.ndarray]:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if deadline is None:
            outs = self._session.run(self._outputs, feeds)
        else:
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("the deadline passed before inference started")
            run_options = ort.RunOptions()
            key = self._watchdog.arm(deadline, run_options)
            try:
                outs = self._session.run(self._outputs, feeds, run_options)
            except Exception:
                if run_options.terminate or time.monotonic() >= deadline:
                    raise DeadlineExceeded("inference was stopped at the deadline") from None
                raise
            finally:
                self._watchdog.disarm(key)
        # a session must give one [n, C] array per head: anything else is a fault, not logits
        if len(outs) != len(self._outputs):
            raise ValueError(f"the model returned {len(outs)} outputs, expected {len(self._outputs)}")
        for h, c, out in zip(self.head_names, self._num_classes, outs, strict=True):
            want = (ids.shape[0], c)
            if not isinstance(out, np.ndarray) or out.shape != want:
                raise ValueError(f"output {output_name(h)!r} has shape {getattr(out, 'shape', None)}, expected {want}")
            if not np.isfinite(out).all():
                raise ValueError(f"output {output_name(h)!r} holds non-finite logits")
        return outs

    def _checked(self, texts: Any) -> list[Request]:
        """The parsed requests of a ``logits``/``predict_proba`` argument; ``InputError`` names a bad item."""
        if isinstance(texts, (str, Mapping)):
            texts = [texts]
        if not isinstance(texts, Sequence):
            raise InputError(f"texts must be a string, a chat-completions body or a list of them, "
                             f"got {type(texts).__name__}")
        out: list[Request] = []
        for i, t in enumerate(texts):
            req, problem = self.parse(t)
            if req is None:
                raise InputError(f"texts[{i}]: {problem}")
            req, _, _ = self._clean_request(req)
            if _VISIBLE.search(req.full_text) is None:
                raise InputError(f"texts[{i}]: nothing visible once control characters are removed")
            out.append(req)
        return out

    def logits(self, texts: Any) -> dict[str, np.ndarray]:
        """Logits per head, float32 [n, C]. ``InputError`` names a bad item.

        Each item is a prompt string or an OpenAI chat-completions body. Where the model view reads
        one row for a head (every request that fits one window), these are the model's raw logits;
        where it pools several windows, they are ``T * (log p - b)`` of the pooled calibrated
        probabilities ``p``, so ``proba_from_logits(logits(x)) == predict_proba(x)`` always.
        """
        reqs = self._checked(texts)
        if not reqs:
            return {h: np.zeros((0, self.schema.head(h).num_classes), np.float32) for h in self.head_names}
        return self._request_scores(reqs, single=_single(texts))[0]

    def proba_from_logits(self, logits: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated softmax ``softmax(logits / T + b)`` (float64, the input is left alone)."""
        parts = [logits[h] for h in self.head_names]
        if not all(isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[0] == parts[0].shape[0]
                   and x.shape[1] == b - a for x, (_, a, b) in zip(parts, self._columns, strict=True)):
            return {h: softmax(logits[h], t, b) for h, t, b in self._calibration}
        z = np.concatenate(parts, axis=1, dtype=np.float64)
        z /= self._t_cols
        z += self._b_cols
        if z.shape[0]:
            z -= np.maximum.reduceat(z, self._starts, axis=1)[:, self._head_of_col]
            np.exp(z, out=z)
            z /= np.add.reduceat(z, self._starts, axis=1)[:, self._head_of_col]
        return {h: z[:, a:b] for h, a, b in self._columns}

    def predict_proba(self, texts: Any) -> dict[str, np.ndarray]:
        """Calibrated probabilities per head, [n, C], rows sum to 1 (pooled over windows by the view)."""
        reqs = self._checked(texts)
        if not reqs:
            return {h: np.zeros((0, self.schema.head(h).num_classes)) for h in self.head_names}
        return self._request_scores(reqs, single=_single(texts))[1]

    # -- requests: parsing, the model view, windows and pooling ----------------------------------
    def _init_view(self, view: Any) -> None:
        """The model view and what it needs: a tokenizer without truncation, the special tokens."""
        self.view = ModelView.from_dict(dict(view) if isinstance(view, Mapping) else view)
        self.window = self.input_limits.max_length - 2  # tokens of text per row ([CLS] ... [SEP])
        self._view = self.view.fitted(self.window)
        self.max_chars = self.view.max_chars
        full = Tokenizer.from_str(self._tokenizer.to_str())
        full.no_truncation()
        full.no_padding()
        self._tok_full = full
        # exact per-word cache for ASCII text (None for tokenizers it does not know): the hot path
        self._words = WordCache.for_tokenizer(full)
        self._piece_ids_cached = functools.lru_cache(maxsize=SCAN_CACHE_SIZE)(self._piece_ids)
        cls_id, sep_id = full.token_to_id("[CLS]"), full.token_to_id("[SEP]")
        self._cls = [] if cls_id is None else [cls_id]
        self._sep = [] if sep_id is None else [sep_id]
        pad_id = full.token_to_id("[PAD]")
        self._pad_id = 0 if pad_id is None else pad_id
        sens = self.policy.sensitivity_head
        if sens not in self.schema:
            sens = "sensitivity" if "sensitivity" in self.schema else None
        self._sens_head = sens
        if sens is not None:
            neg = self.schema.head(sens).negative_class
            classes = list(self.schema.head(sens).classes)
            self._sens_neg = classes.index(neg) if neg in classes else 0
        else:
            self._sens_neg = 0

    def parse(self, item: Any) -> tuple[Request | None, str | None]:
        """(request, None) for an item the router can classify, (None, why) for one it cannot.

        ``item`` is a prompt string or a chat-completions body (``request.parse_request``).
        Never raises."""
        if isinstance(item, str):
            problem = check_text(item)
            return (None, problem) if problem is not None else (plain(item), None)
        if isinstance(item, Request):  # already parsed (the HTTP chat endpoint parses to answer 400s)
            req = item
            problem = check_text(req.full_text)
            return (None, problem.replace("the prompt", "the request's text")) if problem is not None else (req, None)
        if not isinstance(item, Mapping):
            return None, f"request: expected a prompt string or a chat-completions body, got {type(item).__name__}"
        try:
            req = parse_request(item)
        except RequestError as exc:
            return None, str(exc)
        problem = check_text(req.full_text)
        if problem is not None:
            return None, problem.replace("the prompt", "the request's text")
        return req, None

    def _clean_request(self, req: Request) -> tuple[Request, bool, bool]:
        """The request cut to ``view.max_chars`` characters, control characters deleted (spans
        moved to match). Returns (request, cut, had_control_characters)."""
        text = req.full_text
        limit = self.max_chars
        cut = len(text) > limit
        head = text[:limit] if cut else text
        if _CONTROL.search(head) is None:
            if not cut:
                return req, False, False
            removed: list[int] = []
            new = head
        else:
            removed = [m.start() for m in _CONTROL.finditer(head)]
            new = _CONTROL.sub("", head)
        if req.is_plain:
            return plain(new), cut, bool(removed)
        end = len(head)

        def pos(i: int) -> int:
            i = min(i, end)
            return i - bisect.bisect_left(removed, i)

        spans = tuple((pos(a), pos(b)) for a, b in req.spans)
        tools = (pos(req.tools_span[0]), pos(req.tools_span[1]))
        return dataclasses.replace(req, full_text=new, spans=spans, tools_span=tools), cut, bool(removed)

    def _tokenise(self, req: Request) -> tuple[list[int], tuple[int, int]]:
        """The ids of ``full_text`` (tokenised once, no special tokens) and the request's token range.

        ASCII text goes through the exact per-word cache (``word_cache``), the rest through the
        tokenizer; both give the same ids (a differential test holds them equal). A long chat
        request is tokenised piece by piece (``_tokenise_pieces``), its long pieces cached, when
        the tokenizer is BERT's pipeline (the word cache checked it: other tokenizers, such as
        byte-level BPE, can join a token across whitespace)."""
        if self._words is not None and not req.is_plain and len(req.full_text) >= SCAN_CACHE_MIN_CHARS:
            return self._tokenise_pieces(req)
        return self._tokenise_whole(req)

    def _tokenise_pieces(self, req: Request) -> tuple[list[int], tuple[int, int]]:
        """``_tokenise`` of a chat request as the concatenation of its pieces' ids (tool schemas,
        then each message). Exact: the pieces are joined by a blank line, and BERT's tokenizer
        splits at whitespace before anything else, so no token crosses two pieces. A piece of
        ``SCAN_CACHE_MIN_CHARS`` or more keeps its ids in an LRU (the system prompt of an agent)."""
        text = req.full_text
        ids: list[int] = []
        span = (0, 0)
        for k, (a, b) in enumerate(req.pieces):
            got: Sequence[int] = ()
            if b > a:
                got = self._piece_ids_cached(text[a:b]) if b - a >= SCAN_CACHE_MIN_CHARS else self._piece_ids(text[a:b])
            if k - 1 == req.request_index:
                span = (len(ids), len(ids) + len(got))
            ids.extend(got)
        return ids, span

    def _piece_ids(self, text: str) -> tuple[int, ...]:
        if self._words is not None:
            fast = self._words.ids(text)
            if fast is not None:
                return tuple(fast)
        return tuple(self._tok_full.encode(text, add_special_tokens=False).ids)

    def _tokenise_whole(self, req: Request) -> tuple[list[int], tuple[int, int]]:
        a0, b0 = req.request_span
        whole = req.is_plain or (a0 == 0 and b0 >= len(req.full_text))
        if self._words is not None:
            if whole:
                fast = self._words.ids(req.full_text)
                if fast is not None:
                    return fast, (0, len(fast))
            else:
                cut = self._words.ids_at(req.full_text, (a0, b0))
                if cut is not None:
                    return cut[0], (cut[1][0], cut[1][1])
        enc = self._tok_full.encode(req.full_text, add_special_tokens=False)
        ids = enc.ids
        if whole:
            return ids, (0, len(ids))
        starts = [o[0] for o in enc.offsets]
        return ids, (bisect.bisect_left(starts, a0), bisect.bisect_left(starts, b0))

    def _para_tail(self, req: Request, span: tuple[int, int], view: ModelView) -> int | None:
        """The ``paragraph_tail`` of the request turn for the ``last_user_para`` view (None for
        other views, a turn that fits a window, or a tokenizer the word cache does not know: only
        for BERT's pipeline are a paragraph's tokens the same read alone)."""
        if view.tier != "last_user_para" or self._words is None or span[1] - span[0] <= self.window:
            return None
        a, b = req.request_span
        return paragraph_tail(req.full_text[a:b], lambda t: len(self._piece_ids(t)), self.window - view.head_tokens)

    def _rows(self, reqs: Sequence[Request]) -> tuple[list[list[int]], list[tuple[list[int], list[int]]],
                                                      list[list[str]]]:
        """Model rows (token ids with [CLS]/[SEP]) of every request, and per request the rows its
        tier/task heads and its sensitivity head pool, and the view's flags."""
        rows: list[list[int]] = []
        groups: list[tuple[list[int], list[int]]] = []
        flags: list[list[str]] = []
        w = self.window
        for req in reqs:
            ids, span = self._tokenise(req)
            n = len(ids)
            windows, unread = sensitivity_windows(n, w, self._view)
            tier = tier_rows(self._view, n, span, w, windows, self._para_tail(req, span, self._view))
            index: dict[Segments, int] = {}
            picked: list[list[int]] = [[], []]
            for k, segments_list in enumerate((tier, windows)):
                for segs in segments_list:
                    row = index.get(segs)
                    if row is None:
                        row = index[segs] = len(rows)
                        body = ids[segs[0][0]:segs[0][1]] if len(segs) == 1 else \
                            [t for lo, hi in segs for t in ids[lo:hi]]
                        rows.append(self._cls + body + self._sep)
                    picked[k].append(row)
            groups.append((picked[0], picked[1]))
            f = [FLAG_TRUNCATED] if unread else []
            if n > w:
                f.append(FLAG_LONG_REQUEST)
            flags.append(f)
        return rows, groups, flags

    def _run_rows(self, rows: list[list[int]], deadline: float | None, cache: bool = False) -> dict[str, np.ndarray]:
        """Raw logits per head [R, C] of model rows. With ``cache`` (one request at a time: an
        agent's calls), rows seen lately come from the row cache. A batch call never reads it: on
        some CPUs (AVX-512 here) ONNX Runtime's last bits for a row depend on the batch it ran in,
        so a batch's numbers would depend on what the router saw before; without the cache they
        depend only on the batch, which ``--engine ray`` keeps the same (bit for bit)."""
        if self._row_cache is None or len(rows) < 2 or not cache:
            return self._run_rows_now(rows, deadline)
        # the ids as 4-byte integers: a 512-byte key per 128-token row (a tuple of ints is ~5 kB)
        keys = [array.array("i", row).tobytes() for row in rows]
        cached = self._row_cache.get_many(keys)
        todo = [i for i, c in enumerate(cached) if c is None]
        out = {h: np.empty((len(rows), c), dtype=np.float32) for h, c in zip(self.head_names, self._num_classes,
                                                                              strict=True)}
        if todo:
            fresh = self._run_rows_now([rows[i] for i in todo], deadline)
            for h in self.head_names:
                out[h][todo] = fresh[h]
            self._row_cache.put_many([keys[i] for i in todo], [tuple(fresh[h][k].copy() for h in self.head_names)
                                                                for k in range(len(todo))])
        for i, c in enumerate(cached):
            if c is not None:
                for h, v in zip(self.head_names, c, strict=True):
                    out[h][i] = v
        return out

    def _run_rows_now(self, rows: list[list[int]], deadline: float | None) -> dict[str, np.ndarray]:
        """Raw logits per head [R, C] of model rows (padded per chunk of at most ``max_batch``)."""
        r = len(rows)
        if r == 1:
            ids = np.array(rows, dtype=np.int64)
            return dict(zip(self.head_names, self._run(ids, np.ones_like(ids), deadline), strict=True))
        order = sorted(range(r), key=lambda i: len(rows[i])) if r > self._max_batch else list(range(r))
        out = {h: np.empty((r, c), dtype=np.float32) for h, c in zip(self.head_names, self._num_classes, strict=True)}
        for start in range(0, r, self._max_batch):
            idx = order[start:start + self._max_batch]
            ids, mask = pad_batch([rows[i] for i in idx], self._pad_id)
            for h, o in zip(self.head_names, self._run(ids, mask, deadline), strict=True):
                out[h][idx] = o
        return out

    def _request_scores(self, reqs: Sequence[Request], deadline: float | None = None, single: bool = False
                        ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[list[str]]]:
        """(logits, calibrated probabilities, view flags) per request, pooled by the view:
        tier/task rows mean-pooled, sensitivity windows max-pooled per sensitive class."""
        rows, groups, flags = self._rows(reqs)
        raw = self._run_rows(rows, deadline, cache=single)
        n = len(reqs)
        if len(rows) == n and all(t == [i] and s == [i] for i, (t, s) in enumerate(groups)):
            return raw, self.proba_from_logits(raw), flags  # one row per request: nothing to pool
        row_p = self.proba_from_logits(raw)
        logits = {h: np.empty((n, a.shape[1]), dtype=np.float32) for h, a in raw.items()}
        probs = {h: np.empty((n, a.shape[1])) for h, a in raw.items()}
        for i, (tier, sens) in enumerate(groups):
            for h, t, b in self._calibration:
                use = sens if h == self._sens_head else tier
                if len(use) == 1:
                    logits[h][i] = raw[h][use[0]]
                    probs[h][i] = row_p[h][use[0]]
                    continue
                p = self._pool_sensitivity(row_p[h][use]) if h == self._sens_head else row_p[h][use].mean(axis=0)
                probs[h][i] = p
                z = t * np.log(np.maximum(p, 1e-12))
                logits[h][i] = z - (t * b if b is not None else 0.0)
        return logits, probs, flags

    def _pool_sensitivity(self, p: np.ndarray) -> np.ndarray:
        """Max pooling of windows' sensitivity probabilities [W, C]: each sensitive class gets its
        largest window probability, the benign class the rest. Where the maxima add up to more than
        1 (two sensitive classes, each in its own window), they are scaled to sum to 1."""
        out = p.max(axis=0)
        pos = np.ones(out.shape[0], dtype=bool)
        pos[self._sens_neg] = False
        total = out[pos].sum()
        if total > 1.0:
            out[pos] /= total
            out[self._sens_neg] = 0.0
        else:
            out[self._sens_neg] = 1.0 - total
        return out

    # -- decisions -----------------------------------------------------------------------------
    def route(self, texts: Any) -> Decision | list[Decision]:
        """One decision per request; a list or tuple gives a list, anything else one Decision.

        A request is a prompt string or an OpenAI chat-completions body (a dict). Never raises for
        bad requests or inference faults: those get the safe decision, flagged.
        """
        start = time.monotonic()
        if isinstance(texts, (list, tuple)):
            return self._route_many(texts, start)
        return self._route_many([texts], start, single=True)[0]

    def _route_many(self, texts: Sequence[Any], start: float, single: bool = False) -> list[Decision]:
        n = len(texts)
        out: list[Decision | None] = [None] * n
        good: list[int] = []
        raw: list[Request] = []  # each request as received (not cut at max_chars): what the detectors scan
        cleaned: list[Request] = []
        flags: list[list[str]] = []
        for i, t in enumerate(texts):
            req, problem = self.parse(t)
            if req is not None:
                full = req  # before the cut at max_chars: detectors scan all of it
                req, cut, control = self._clean_request(req)
                if control and _VISIBLE.search(req.full_text) is None:
                    problem = f"nothing visible in the first {self.max_chars} characters once control characters are removed"
                else:
                    good.append(i)
                    raw.append(full)
                    cleaned.append(req)
                    flags.append(([FLAG_TRUNCATED] if cut else []) + ([FLAG_CONTROL_CHARS] if control else [])
                                 + list(req.flags))
                    continue
            where = f"prompt {i}: " if n > 1 else ""
            out[i] = self.engine.safe_decision(f"{where}cannot classify: {problem}", [FLAG_INVALID_INPUT])
        if good:
            for i, d in zip(good, self._decide(cleaned, flags, start, raw, single=single), strict=True):
                out[i] = d
        return out  # type: ignore[return-value]

    def _decide(self, reqs: list[Request], flags: list[list[str]], start: float,
                raw: list[Request] | None = None, single: bool = False) -> list[Decision]:
        deadline = None if self.deadline_ms is None else start + self.deadline_ms / 1000.0
        detections: list[list[Hit]] | None = None
        try:
            detections = self._scan(raw if raw is not None else reqs)
            _, probs, view_flags = self._request_scores(reqs, deadline, single=single)
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded("the answer came after the deadline")
            for f, vf in zip(flags, view_flags, strict=True):
                for flag in vf:
                    if flag not in f:
                        f.insert(0, flag) if flag == FLAG_TRUNCATED else f.append(flag)
            return self.engine.decide_batch(probs, flags=flags, detections=detections)
        except DeadlineExceeded as exc:
            took = (time.monotonic() - start) * 1000.0
            logger.warning("deadline of %g ms exceeded for %d prompt(s) after %.1f ms (%s); answering with the "
                           "safe decision", self.deadline_ms, len(reqs), took, exc)
            reason = f"deadline of {self.deadline_ms:g} ms exceeded ({exc}; {took:.1f} ms)"
        except Exception as exc:  # noqa: BLE001 - a router must answer: any inference fault -> safe decision
            logger.exception("inference failed for %d prompt(s); answering with the safe decision", len(reqs))
            reason = f"inference failed ({type(exc).__name__})"
        out = [self.engine.safe_decision(reason, [*f, FLAG_FALLBACK]) for f in flags]
        for d, hits in zip(out, detections or [], strict=False):
            d.detections = [h.to_dict() for h in hits]  # recorded for the audit trail
        return out

    def _scan(self, reqs: Sequence[Request]) -> list[list[Hit]] | None:
        """Detector hits per request over the **whole** request as received (not the model's
        window, not cut at ``max_chars``): offsets index its ``full_text``. None when the bundle has
        no detector rules (the policy then sees no detections).

        Each piece of a chat request (the tool schemas, each message) is scanned on its own, as
        gitleaks scans each file on its own: a rule needs its keyword in the same piece, and no hit
        spans two pieces. A piece of ``SCAN_CACHE_MIN_CHARS`` or more keeps its hits in an LRU of
        ``SCAN_CACHE_SIZE`` pieces, so the system prompt an agent repeats is scanned once."""
        if self._detectors is None:
            return None
        out: list[list[Hit]] = []
        for req in reqs:
            text = req.full_text
            hits: list[Hit] = []
            for a, b in ((0, len(text)),) if req.is_plain else req.pieces:
                if b <= a:
                    continue
                piece = text[a:b]
                found = self._scan_piece(piece) if b - a >= SCAN_CACHE_MIN_CHARS else self._detectors.scan(piece)
                hits += found if a == 0 else [Hit(h.rule, h.cls, h.start + a, h.end + a) for h in found]
            out.append(hits)
        return out

    def safe_decision(self, reason: str, flags: Sequence[str] = ()) -> Decision:
        """The policy's explicit escalate decision (for callers that fail before ``route``)."""
        return self.engine.safe_decision(reason, list(flags))

    def info(self) -> dict[str, Any]:
        """What is loaded: for logs, health endpoints and audit records."""
        m = self.manifest
        return {
            "bundle": str(self.source),
            "kind": m.kind,
            "format_version": m.format_version,
            "quantization": m.quantization,
            "training_run_id": m.training_run_id,
            "mlflow_model_version": m.mlflow_model_version,
            "model_sha256": m.files.get(bundle_io.MODEL_FILE),
            "bundle_hash": self.bundle_hash,
            "policy_version": self.policy.version,
            "heads": list(self.head_names),
            "input_limits": m.input_limits.to_dict(),
            "temperatures": dict(self.temperatures),
            "biases": {h: b.tolist() for h, b in self.biases.items()},
            "detectors": self.detectors.info() | {"enabled": True} if self.detectors is not None else {
                "enabled": False,
                "reason": f"the bundle has no {DETECTORS_FILE} (an older bundle): detectors are off; "
                          "add them with `tierwise detectors install BUNDLE`"},
            "view": self.view.to_dict(),
        }


class _RowCache:
    """Logits of model rows seen lately, keyed by the row's token ids as bytes (LRU, thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, tuple[np.ndarray, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[bytes]) -> list[tuple[np.ndarray, ...] | None]:
        with self._lock:
            out = []
            for k in keys:
                v = self._items.get(k)
                if v is not None:
                    self._items.move_to_end(k)
                out.append(v)
            return out

    def put_many(self, keys: Sequence[bytes], values: Sequence[tuple[np.ndarray, ...]]) -> None:
        with self._lock:
            for k, v in zip(keys, values, strict=True):
                self._items[k] = v
                self._items.move_to_end(k)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _check_deadline(deadline_ms: Any) -> float | None:
    if deadline_ms is None:
        return None
    if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)) \
            or not math.isfinite(deadline_ms) or deadline_ms <= 0:
        raise ConfigError(f"deadline_ms must be a number > 0 (or None for no deadline), got {deadline_ms!r}")
    return float(deadline_ms)


# -- parsing the bundle files ---------------------------------------------------------------------
def _parse_schema(data: bytes, directory: Path) -> LabelSchema:
    try:
        return LabelSchema.from_dict(yaml.safe_load(data), source=str(directory / bundle_io.SCHEMA_FILE))
    except (yaml.YAMLError, SchemaError) as exc:
        raise BundleError(f"{directory / bundle_io.SCHEMA_FILE}: invalid schema: {exc}") from None


def _parse_calibration(data: bytes | None, schema: LabelSchema,
                       directory: Path) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Temperatures per head (1.0 where absent) and per-class biases of the heads that have them."""
    if data is None:
        return {h: 1.0 for h in schema.head_names}, {}
    where = directory / bundle_io.CALIBRATION_FILE
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    temps = doc.get("temperatures", {}) if isinstance(doc, dict) else None
    if not isinstance(temps, dict):
        raise BundleError(f"{where}: 'temperatures' must map head names to positive numbers")
    out = {h: 1.0 for h in schema.head_names}
    for head, value in temps.items():
        if head not in schema:
            raise BundleError(f"{where}: temperatures.{head}: not a head of the schema {schema.head_names}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise BundleError(f"{where}: temperatures.{head} must be a finite number > 0, got {value!r}")
        out[head] = float(value)
    raw_biases = doc.get("biases")
    if raw_biases is None:
        return out, {}
    if not isinstance(raw_biases, dict):
        raise BundleError(f"{where}: 'biases' must map head names to lists of numbers, one per class")
    biases: dict[str, list[float]] = {}
    for head, values in raw_biases.items():
        if head not in schema:
            raise BundleError(f"{where}: biases.{head}: not a head of the schema {schema.head_names}")
        n_classes = schema.head(head).num_classes
        if not isinstance(values, list) or len(values) != n_classes or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            raise BundleError(f"{where}: biases.{head} must be a list of {n_classes} finite numbers "
                              f"(one per class of {list(schema.head(head).classes)}), got {values!r}")
        biases[head] = [float(v) for v in values]
    return out, biases


def _resolve_policy(policy: Any, bundled: bytes, directory: Path) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, Path)):
        return Policy.from_yaml(policy)
    if isinstance(policy, Mapping):
        return Policy.from_dict(dict(policy))
    if policy is not None:
        raise ConfigError(f"policy must be a Policy, a YAML path or a mapping, got {type(policy).__name__}")
    where = directory / bundle_io.POLICY_FILE
    try:
        return Policy.from_dict(yaml.safe_load(bundled))
    except yaml.YAMLError as exc:
        raise BundleError(f"{where}: not valid YAML: {exc}") from None
    except PolicyError as exc:
        raise BundleError(f"{where}: invalid policy: {exc}") from None


def _policy_doc(given: Any, resolved: Policy) -> Any:
    """The policy's plain data, for the content digest of ``signing.check_policy_binding``: the
    YAML as read (bundled policy or a path), the mapping given, else the Policy's own data."""
    if isinstance(given, Mapping):
        return dict(given)
    to_dict = getattr(resolved, "to_dict", None)
    return to_dict() if callable(to_dict) else None


def _build_tokenizer(data: bytes, limits: bundle_io.InputLimits, directory: Path) -> Tokenizer:
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise BundleError(f"{directory / bundle_io.TOKENIZER_FILE}: not a valid tokenizers file ({exc})") from None
    tok.enable_truncation(max_length=limits.max_length)
    pad_id = tok.token_to_id("[PAD]")
    # pad to the longest prompt of the batch only: a single prompt is never padded
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tok


def _build_session(model: bytes, threads: int, schema: LabelSchema, directory: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind error types
        raise BundleError(f"{directory / bundle_io.MODEL_FILE}: ONNX Runtime cannot load the model ({exc})") from None
    inputs = {i.name: i.type for i in session.get_inputs()}
    for name in INPUT_NAMES:
        if inputs.get(name) != "tensor(int64)":
            raise BundleError(
                f"{directory / bundle_io.MODEL_FILE}: expected int64 input {name!r}, the model has {inputs}"
            )
    outputs = {o.name for o in session.get_outputs()}
    missing = [output_name(h) for h in schema.head_names if output_name(h) not in outputs]
    if missing:
        raise BundleError(
            f"{directory / bundle_io.MODEL_FILE}: outputs {missing} for the schema's heads are missing "
            f"(the model has {sorted(outputs)}); the model and schema.yaml do not belong together"
        )
    return session
