"""A cascade of two bundles: the fast student answers, the teacher is asked only when the student is unsure.

The student's calibrated sensitivity probabilities decide whether a prompt is escalated: for each
gated class ``c`` (``pii``, ``credential``) the cascade carries a band ``[lo_c, hi_c)``; a prompt
whose ``p(c)`` falls inside any band is routed again by the strong (teacher) bundle, and the
teacher's whole decision is the answer, flagged ``escalated``. Every other prompt keeps the
student's decision. The bands are fitted on the calibration split (never test) by
:func:`fit_band`: below ``lo`` the student's misses are at most ``max_miss`` of the class, from
``hi`` up its flags are at least ``min_precision`` precise, and the band always contains the
student policy's own threshold for the class, so a prompt the student gates is either escalated
or above the band (never gated below it).

The bands live in the student bundle as ``cascade.json`` (hashed by the manifest like every file,
written with :func:`write_cascade`), together with the name and manifest hash of the escalation
bundle they were fitted against; :meth:`Cascade.load` refuses a strong bundle with another hash,
because a band fitted for one teacher says nothing about another.

A prompt that already carries a detector hit of class ``c`` (``Decision.detections``, where the
runtime has detectors) is not escalated for ``c``: the gate already holds. Safe decisions (bad
input, faults, deadline) are never escalated.

What this module leaves out: fitting data splits and writing the band (``tierwise cascade``,
``classifier/evaluation/cascade_cmd.py``), and the routers themselves (``runtime.py``). It
imports numpy and the serving package only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from classifier.errors import BundleError, ConfigError, TypedConfig
from classifier.serving import bundle as bundle_io
from classifier.serving.policy import Decision
from classifier.serving.runtime import FLAG_FALLBACK, FLAG_INVALID_INPUT, Router

logger = logging.getLogger(__name__)

CASCADE_FILE = "cascade.json"
FLAG_ESCALATED = "escalated"
CASCADE_FORMAT = "tierwise-cascade"


class Band(TypedConfig):
    """Escalate a prompt whose calibrated ``p(cls)`` is in ``[lo, hi)``."""

    model_config = ConfigDict(frozen=True)
    _path: ClassVar[str] = "band"

    cls: str
    lo: float = Field(ge=0.0, le=1.0 + 1e-9)
    hi: float = Field(ge=0.0, le=1.0 + 1e-9)

    def __init__(self, cls: str, lo: float, hi: float) -> None:
        super().__init__(cls=cls, lo=lo, hi=hi)

    @field_validator("hi")
    @classmethod
    def _above_lo(cls, hi: float, info: ValidationInfo) -> float:
        if hi < info.data.get("lo", hi):
            raise ValueError(f"must be >= lo ({info.data['lo']}), got {hi}")
        return hi

    def contains(self, p: float) -> bool:
        return self.lo <= p < self.hi


@dataclass
class CascadeSpec:
    """The content of ``cascade.json``: bands per class and the escalation bundle they belong to."""

    bands: dict[str, Band]
    head: str = "sensitivity"
    escalate_to: str | None = None
    escalate_bundle_hash: str | None = None
    fit: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CASCADE_FORMAT,
            "head": self.head,
            "bands": {c: [b.lo, b.hi] for c, b in self.bands.items()},
            "escalate_to": self.escalate_to,
            "escalate_bundle_hash": self.escalate_bundle_hash,
            "fit": self.fit,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = CASCADE_FILE) -> CascadeSpec:
        if not isinstance(data, Mapping) or data.get("format") != CASCADE_FORMAT:
            raise BundleError(f"{source}: not a cascade file (expected format {CASCADE_FORMAT!r})")
        raw = data.get("bands")
        if not isinstance(raw, Mapping) or not raw:
            raise BundleError(f"{source}: 'bands' must map class names to [lo, hi]")
        bands = {}
        for c, v in raw.items():
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise BundleError(f"{source}: bands.{c} must be [lo, hi], got {v!r}")
            try:
                bands[str(c)] = Band(str(c), float(v[0]), float(v[1]))
            except (ConfigError, TypeError, ValueError) as exc:
                raise BundleError(f"{source}: bands.{c}: {exc}") from None
        head = data.get("head", "sensitivity")
        if not isinstance(head, str):
            raise BundleError(f"{source}: 'head' must be a head name")
        return cls(bands=bands, head=head, escalate_to=data.get("escalate_to"),
                   escalate_bundle_hash=data.get("escalate_bundle_hash"), fit=dict(data.get("fit") or {}))


def fit_band(scores: Any, is_class: Any, *, max_miss: float, min_precision: float,
             policy_threshold: float | None = None, cls: str = "positive") -> tuple[Band, dict[str, Any]]:
    """The band of one class from calibration scores (the student's calibrated ``p(cls)``).

    ``lo``: the largest value with at most ``max_miss`` of the class's rows below it (those are
    left to the student, which does not gate them: they are the cascade's own misses). ``hi``: the
    smallest value from which the student's flags are at least ``min_precision`` precise (1.0
    when none is). The band is widened to contain ``policy_threshold``. Returns the band and a
    summary on these rows (share escalated, misses below, precision above).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(is_class, dtype=bool).reshape(-1)
    if s.shape != y.shape or not s.size:
        raise ConfigError(f"fit_band({cls}): scores and labels must be non-empty and of one length, got {s.shape}, {y.shape}")
    if not 0.0 <= max_miss < 1.0 or not 0.0 < min_precision <= 1.0:
        raise ConfigError(f"fit_band({cls}): max_miss must be in [0, 1) and min_precision in (0, 1]")
    pos = np.sort(s[y])
    if not pos.size:
        raise ConfigError(f"fit_band({cls}): no calibration rows of class {cls!r}")
    k = int(np.floor(max_miss * pos.size))  # this many positives may lie below lo
    lo = float(pos[k])
    order = np.argsort(-s, kind="stable")
    ss, yy = s[order], y[order]
    precision = np.cumsum(yy) / np.arange(1, len(yy) + 1)
    last_of_tie = np.r_[ss[1:] < ss[:-1], True]
    # hi: the smallest score t such that every threshold >= t keeps precision >= min_precision
    hi = 1.0
    for i in range(len(ss)):
        if not last_of_tie[i]:
            continue
        if precision[i] < min_precision:
            break
        hi = float(ss[i])
    if policy_threshold is not None:
        lo, hi = min(lo, float(policy_threshold)), max(hi, float(policy_threshold))
    hi = max(hi, lo)
    band = Band(cls, lo, min(hi, 1.0))
    inside = (s >= band.lo) & (s < band.hi)
    above = s >= band.hi
    summary = {
        "n": int(s.size), "n_class": int(pos.size), "max_miss": max_miss, "min_precision": min_precision,
        "policy_threshold": policy_threshold, "share_escalated": float(inside.mean()),
        "misses_below": int(np.sum(y & (s < band.lo))),
        "precision_above": float(y[above].mean()) if above.any() else None,
    }
    return band, summary


def write_cascade(fast_bundle: str | Path, spec: CascadeSpec) -> bundle_io.Manifest:
    """Add (or replace) ``cascade.json`` in a verified student bundle; the manifest is re-hashed."""
    return bundle_io.update_bundle_file(fast_bundle, CASCADE_FILE, json.dumps(spec.to_dict(), indent=2) + "\n")


def read_cascade(bundle_dir: str | Path) -> CascadeSpec | None:
    """The verified ``cascade.json`` of a bundle directory, or None when it has none."""
    manifest, files = bundle_io.load_verified(bundle_dir, names=(CASCADE_FILE,))
    if CASCADE_FILE not in manifest.files:
        return None
    try:
        data = json.loads(files[CASCADE_FILE])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{Path(bundle_dir) / CASCADE_FILE}: not valid JSON ({exc})") from None
    return CascadeSpec.from_dict(data, source=str(Path(bundle_dir) / CASCADE_FILE))


class Cascade:
    """Two routers and the bands that decide when the second one is asked. Thread-safe like
    :class:`Router`. Build it with :meth:`load`, or from routers already loaded."""

    def __init__(self, fast: Router, strong: Router, spec: CascadeSpec) -> None:
        head = spec.head
        if head not in fast.schema or head not in strong.schema:
            raise ConfigError(f"cascade head {head!r} is not a head of both bundles")
        classes = fast.schema.head(head).classes
        unknown = [c for c in spec.bands if c not in classes]
        if unknown:
            raise ConfigError(f"cascade bands {unknown} are not classes of head {head!r} {list(classes)}")
        self.fast = fast
        self.strong = strong
        self.spec = spec
        self.head = head
        self._bands = list(spec.bands.values())
        self.policy = fast.policy

    @classmethod
    def load(cls, fast: str | Path, strong: str | Path | None = None, *, threads: int = 1,
             policy: Any = None, deadline_ms: float | None = None, check_hash: bool = True) -> Cascade:
        """Load the student bundle ``fast`` and its escalation bundle.

        ``strong`` defaults to the ``escalate_to`` named in ``cascade.json`` (a path relative to
        the student bundle's folder). With ``check_hash`` the strong bundle must be the one the
        bands were fitted against.
        """
        fast_router = Router.load(fast, threads=threads, policy=policy, deadline_ms=deadline_ms)
        try:
            spec = read_cascade(fast_router.bundle_dir)
            if spec is None:
                raise BundleError(f"{fast}: the bundle has no {CASCADE_FILE}; fit one with 'tierwise cascade'")
            if strong is None:
                if not spec.escalate_to:
                    raise BundleError(f"{fast}/{CASCADE_FILE} names no escalation bundle; pass strong=")
                strong = Path(fast).resolve().parent / spec.escalate_to
            strong_router = Router.load(strong, threads=threads, policy=policy, deadline_ms=deadline_ms)
        except BaseException:
            fast_router.close()
            raise
        if check_hash and spec.escalate_bundle_hash and strong_router.bundle_hash != spec.escalate_bundle_hash:
            fast_router.close()
            strong_router.close()
            raise BundleError(
                f"{strong} is not the escalation bundle {CASCADE_FILE} was fitted against (manifest hash "
                f"{strong_router.bundle_hash[:12]}..., expected {spec.escalate_bundle_hash[:12]}...); refit the "
                "band with 'tierwise cascade' or pass check_hash=False")
        return cls(fast_router, strong_router, spec)

    def close(self) -> None:
        self.fast.close()
        self.strong.close()

    def __enter__(self) -> Cascade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def needs_escalation(self, decision: Decision) -> bool:
        """Whether the student's decision falls in a band (and no detector already gates that class)."""
        flags = decision.flags
        if FLAG_INVALID_INPUT in flags or FLAG_FALLBACK in flags:
            return False
        probs = decision.probabilities.get(self.head)
        if not probs:
            return False
        detected = {d.get("class") for d in (getattr(decision, "detections", None) or ())}
        return any(b.cls not in detected and b.contains(float(probs.get(b.cls, 0.0))) for b in self._bands)

    def route(self, texts: Any) -> Decision | list[Decision]:
        """Like :meth:`Router.route`; escalated decisions are the strong bundle's, flagged ``escalated``."""
        many = isinstance(texts, (list, tuple))
        items = list(texts) if many else [texts]
        out = self.fast.route(items)
        idx = [i for i, d in enumerate(out) if self.needs_escalation(d)]
        if idx:
            for i, d in zip(idx, self.strong.route([items[i] for i in idx]), strict=True):
                if FLAG_ESCALATED not in d.flags:
                    d.flags.append(FLAG_ESCALATED)
                out[i] = d
        return out if many else out[0]

    def escalation_mask(self, probs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Which rows of the fast router's calibrated probabilities (head -> [n, C]) escalate
        (bands only, no detectors): for evaluation over many rows."""
        p = np.asarray(probs[self.head])
        classes = self.fast.schema.head(self.head).classes
        mask = np.zeros(len(p), dtype=bool)
        for b in self._bands:
            col = p[:, classes.index(b.cls)]
            mask |= (col >= b.lo) & (col < b.hi)
        return mask

    def info(self) -> dict[str, Any]:
        return {"fast": self.fast.info(), "strong": self.strong.info(), "cascade": self.spec.to_dict()}


def composite_scores(fast_p: np.ndarray, strong_p: np.ndarray, escalated: np.ndarray, band: Band) -> np.ndarray:
    """One score per row for ranking metrics of the cascade (recall at a precision floor): rows the
    student keeps get its own ``p``; escalated rows are ranked by the teacher's ``p`` squeezed into
    the band, so every student-confident flag ranks above them and every student-confident pass below."""
    fast_p = np.asarray(fast_p, dtype=np.float64)
    strong_p = np.asarray(strong_p, dtype=np.float64)
    out = fast_p.copy()
    width = max(band.hi - band.lo, 1e-12)
    out[escalated] = band.lo + np.clip(strong_p[escalated], 0.0, 1.0) * width * (1 - 1e-9)
    return out

