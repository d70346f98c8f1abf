"""The routing policy: turn calibrated head probabilities into one auditable routing decision.

A *policy* is a small, owner-approved YAML document (``serving/policy.example.yaml`` shows every
field with comments). ``Policy.from_yaml`` / ``Policy.from_dict`` validate it completely and raise
``PolicyError`` naming the field path at fault (``tiers[1].price.input_per_million: must be a
number >= 0``). ``PolicyEngine(policy, schema)`` checks the policy against the label schema (heads
and classes it names must exist) and then decides:

1. **tier threshold**: ``p(positive class of the tier head) >= thresholds.tier`` goes to
   ``routing.strong_tier``, the rest to ``routing.cheap_tier``;
2. **task overrides**: the predicted task may raise the tier to a minimum (``code`` -> frontier);
3. **uncertainty**: a tier probability within ``uncertainty.tier_band`` of the threshold, or a head
   whose top probability is under its floor, escalates (to the strong tier, or to the safe
   decision) and is flagged ``uncertain``. An uncertain prediction never silently stays cheap;
4. **input rules** (section ``input``, rule names ``input:<rule>:<action>``): a request the runtime
   flagged ``truncated`` (rule ``unread``: text that will be sent was not read by a model window)
   or ``long_request`` (rule ``long_request``) is blocked, restricted to allowed tiers / trust
   levels, or escalated to the strong tier;
5. **sensitivity gates** (last, so they override everything above): a sensitivity class whose
   probability reaches its threshold, or that a deterministic detector found (``detections``),
   blocks the request or restricts it to allowed tiers / trust levels (``pii`` -> self-hosted
   only). Each class's ``gate`` says which evidence counts: ``either`` (default), ``model`` or
   ``detectors``; the decision carries the detector hits (rule and offsets, never the text).

``PolicyEngine.safe_decision(reason, flags)`` is the explicit decision for input that cannot be
classified (and for faults): it never raises. ``decide_batch`` is the vectorised form of
``decide``; ``tier_indices`` returns only the routed tier per row (for evaluation and costing).
``decide`` (and ``decide_batch`` of one row, which is what a router calls per request) runs the
same cascade on plain Python floats: numpy's per-call overhead is most of the cost of one row.
Both paths share the code that writes the reason, and a test holds them to the same answers.

What this module leaves out: computing probabilities (``runtime.py``), fitting thresholds
(``classifier.evaluation.thresholds``) and logging decisions (``audit.py``). It imports numpy,
pyyaml and the stdlib only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from classifier.errors import PolicyError
from classifier.yaml_io import read_yaml

TRUST_LEVELS = ("external", "internal", "self_hosted")
SENSITIVITY_ACTIONS = ("block", "restrict", "allow")
# what may trigger a sensitivity class: the model's probability, a deterministic detector hit, or either
GATES = ("either", "model", "detectors")
UNCERTAINTY_ACTIONS = ("escalate", "safe_decision")
SAFE_ACTIONS = ("route", "block")
INPUT_ACTIONS = ("block", "restrict", "escalate", "allow")
# policy section ``input``: rule name -> the runtime flag it reacts to
INPUT_RULES = {"unread": "truncated", "long_request": "long_request"}

# Flags a decision may carry (the runtime adds ``truncated`` and ``invalid_input`` itself).
FLAG_UNCERTAIN = "uncertain"
FLAG_FALLBACK = "fallback"
FLAG_BLOCKED = "blocked"

# rule names (stable identifiers that end up in audit logs and metrics)
RULE_TIER = "tier_threshold"
RULE_TASK = "task_override"
RULE_UNCERTAIN = "uncertainty"
RULE_SENSITIVITY = "sensitivity"
RULE_SAFE = "safe_decision"
RULE_INPUT = "input"

# Probabilities of a head must sum to 1 within this tolerance to count as a distribution.
_SUM_TOL = 1e-3


# ------------------------------------------------------------------------------------------
# Validation helpers: each names the full field path in its error.
# ------------------------------------------------------------------------------------------
def _fail(path: str, message: str) -> PolicyError:
    return PolicyError(f"{path}: {message}")


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _check_keys(data: Mapping[str, Any], path: str, required: Iterable[str], optional: Iterable[str]) -> None:
    required = list(required)
    allowed = set(required) | set(optional)
    for key in required:
        if key not in data:
            raise _fail(f"{path}.{key}" if path else key, "is required")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        where = path or "policy"
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _string(value: Any, path: str) -> str:
    # YAML reads versions like 1.2 and dates as numbers/dates: accept scalars, store as text.
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise _fail(path, "must be a non-empty string")
    text = str(value).strip()
    if not text:
        raise _fail(path, "must be a non-empty string")
    return text


def _number(value: Any, path: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False) -> float:
    bounds = []
    if lo is not None:
        bounds.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        bounds.append(f"{'<' if hi_open else '<='} {hi:g}")
    want = "must be a number" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, f"{want}, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise _fail(path, f"{want}, got {value!r}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise _fail(path, f"{want}, got {value!r}")
    if hi is not None and (x >= hi if hi_open else x > hi):
        raise _fail(path, f"{want}, got {value!r}")
    return x


def _choice(value: Any, path: str, options: Sequence[str]) -> str:
    if value not in options:
        raise _fail(path, f"must be one of {list(options)}, got {value!r}")
    return str(value)


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(path, "must be a non-empty list of names")
    return tuple(_string(v, f"{path}[{i}]") for i, v in enumerate(value))


def _allowed(rule: Mapping[str, Any], p: str, action: str, tiers: Sequence[Any],
             tier_ref: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(allowed_tiers, allowed_trust) of a rule at path ``p``: required by, and only by, action
    ``restrict``, and satisfiable by at least one tier. Shared by the sensitivity and input rules."""
    allowed_tiers: tuple[str, ...] = ()
    allowed_trust: tuple[str, ...] = ()
    if "allowed_tiers" in rule:
        allowed_tiers = tuple(tier_ref(v, f"{p}.allowed_tiers[{j}]")
                              for j, v in enumerate(_string_list(rule["allowed_tiers"], f"{p}.allowed_tiers")))
    if "allowed_trust" in rule:
        allowed_trust = tuple(_choice(v, f"{p}.allowed_trust[{j}]", TRUST_LEVELS)
                              for j, v in enumerate(_string_list(rule["allowed_trust"], f"{p}.allowed_trust")))
    if action == "restrict":
        if not allowed_tiers and not allowed_trust:
            raise _fail(p, "action 'restrict' needs 'allowed_tiers' and/or 'allowed_trust'")
        if not any(t.name in allowed_tiers or t.trust in allowed_trust for t in tiers):
            raise _fail(p, "no tier satisfies allowed_tiers/allowed_trust: the rule could never route")
    elif allowed_tiers or allowed_trust:
        raise _fail(p, f"allowed_tiers/allowed_trust only apply to action 'restrict', not {action!r}")
    return allowed_tiers, allowed_trust


def _input_rules(raw: Any, tiers: Sequence[Any], tier_ref: Any) -> dict[str, InputRule]:
    """Section ``input`` (rules for what the model could not read), validated."""
    section = _mapping(raw or {}, "input")
    _check_keys(section, "input", required=(), optional=tuple(INPUT_RULES))
    out: dict[str, InputRule] = {}
    for name, raw_rule in section.items():
        p = f"input.{name}"
        rule = _mapping(raw_rule, p)
        _check_keys(rule, p, required=("action",), optional=("allowed_tiers", "allowed_trust"))
        action = _choice(rule["action"], f"{p}.action", INPUT_ACTIONS)
        allowed_tiers, allowed_trust = _allowed(rule, p, action, tiers, tier_ref)
        out[str(name)] = InputRule(action, allowed_tiers, allowed_trust)
    return out


# ------------------------------------------------------------------------------------------
# Policy data
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Approval:
    approved_by: str
    approved_at: str
    ticket: str


@dataclass(frozen=True)
class Tier:
    """One destination. ``input_per_million`` / ``output_per_million`` are USD per M tokens."""

    name: str
    model: str
    input_per_million: float
    output_per_million: float
    trust: str
    description: str = ""


@dataclass(frozen=True)
class SensitivityRule:
    """What happens when a sensitivity class is detected.

    ``block``: refuse the request. ``restrict``: route only to ``allowed_tiers`` or tiers whose
    trust level is in ``allowed_trust`` (union of both). ``allow``: no constraint.
    """

    action: str
    allowed_tiers: tuple[str, ...] = ()
    allowed_trust: tuple[str, ...] = ()
    gate: str = "either"  # either | model | detectors: which evidence triggers the class

    @property
    def model_gates(self) -> bool:
        return self.gate != "detectors"

    @property
    def detectors_gate(self) -> bool:
        return self.gate != "model"


@dataclass(frozen=True)
class TaskOverride:
    """Raise the tier to at least ``min_tier`` when the task head predicts this class
    (argmax, and its probability >= ``min_probability``)."""

    min_tier: str
    min_probability: float = 0.0


@dataclass(frozen=True)
class InputRule:
    """What happens to a request the runtime flags for how much of it the model read (policy
    section ``input``): ``unread`` reacts to ``truncated`` (text that will be sent was read by
    neither a model window nor a detector), ``long_request`` to ``long_request`` (longer than one
    model window). ``block``: refuse. ``restrict``: only ``allowed_tiers`` / ``allowed_trust``
    (the cheapest allowed tier at least as strong as the one chosen). ``escalate``: at least
    ``routing.strong_tier``. ``allow``: no constraint."""

    action: str
    allowed_tiers: tuple[str, ...] = ()
    allowed_trust: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """A validated routing policy. Build it with ``from_dict`` / ``from_yaml``."""

    owner: str
    version: str
    approval: Approval
    tiers: tuple[Tier, ...]
    # routing: which heads and tiers the rules act on
    tier_head: str
    cheap_tier: str
    strong_tier: str
    task_head: str | None
    sensitivity_head: str | None
    sensitivity_rules: dict[str, SensitivityRule]
    task_overrides: dict[str, TaskOverride]
    tier_threshold: float
    sensitivity_thresholds: dict[str, float]
    threshold_provenance: dict[str, Any]
    tier_band: float
    min_confidence: dict[str, float]
    min_confidence_actions: dict[str, str]
    uncertainty_action: str
    safe_action: str
    safe_tier: str | None
    description: str = ""
    input_rules: dict[str, InputRule] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- lookups -----------------------------------------------------------------------------
    @property
    def tier_names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise PolicyError(f"no tier named {name!r}; the policy has {self.tier_names}")

    def tier_index(self, name: str) -> int:
        return self.tier_names.index(name)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Policy:
        data = read_yaml(path, PolicyError, "policy file")
        try:
            return cls.from_dict(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> Policy:  # noqa: C901 - one linear walk over the schema
        top = _mapping(data, "policy")
        _check_keys(
            top, "",
            required=("owner", "version", "approval", "tiers", "thresholds"),
            optional=("description", "routing", "sensitivity", "task_overrides", "uncertainty",
                      "safe_decision", "input", "exploration"),
        )
        if "exploration" in top:  # issue 15: validated here, applied by PolicyEngine._explore
            from classifier.serving.exploration import Exploration

            Exploration.from_dict(top["exploration"])
        owner = _string(top["owner"], "owner")
        version = _string(top["version"], "version")
        description = str(top.get("description") or "")

        ap = _mapping(top["approval"], "approval")
        _check_keys(ap, "approval", required=("approved_by", "approved_at", "ticket"), optional=())
        approval = Approval(
            approved_by=_string(ap["approved_by"], "approval.approved_by"),
            approved_at=_string(ap["approved_at"], "approval.approved_at"),
            ticket=_string(ap["ticket"], "approval.ticket"),
        )

        # tiers ------------------------------------------------------------------------------
        raw_tiers = top["tiers"]
        if not isinstance(raw_tiers, list) or len(raw_tiers) < 2:
            raise _fail("tiers", "must be a list of at least two tiers, ordered cheap -> strong")
        tiers: list[Tier] = []
        for i, rt in enumerate(raw_tiers):
            p = f"tiers[{i}]"
            rt = _mapping(rt, p)
            name_for_path = rt.get("name") if isinstance(rt.get("name"), str) else None
            if name_for_path:
                p = f"tiers.{name_for_path}"
            _check_keys(rt, p, required=("name", "model", "price", "trust"), optional=("description",))
            name = _string(rt["name"], f"{p}.name")
            if name in {t.name for t in tiers}:
                raise _fail(f"{p}.name", f"duplicate tier name {name!r}")
            price = _mapping(rt["price"], f"{p}.price")
            _check_keys(price, f"{p}.price", required=("input_per_million", "output_per_million"),
                        optional=("currency",))
            tiers.append(Tier(
                name=name,
                model=_string(rt["model"], f"{p}.model"),
                input_per_million=_number(price["input_per_million"], f"{p}.price.input_per_million", lo=0),
                output_per_million=_number(price["output_per_million"], f"{p}.price.output_per_million", lo=0),
                trust=_choice(rt["trust"], f"{p}.trust", TRUST_LEVELS),
                description=str(rt.get("description") or ""),
            ))
        names = [t.name for t in tiers]

        def tier_ref(value: Any, path: str) -> str:
            name = _string(value, path)
            if name not in names:
                raise _fail(path, f"unknown tier {name!r}; the policy's tiers are {names}")
            return name

        # routing ----------------------------------------------------------------------------
        routing = _mapping(top.get("routing") or {}, "routing")
        _check_keys(routing, "routing", required=(),
                    optional=("tier_head", "cheap_tier", "strong_tier", "task_head", "sensitivity_head"))
        tier_head = _string(routing.get("tier_head", "tier"), "routing.tier_head")
        cheap_tier = tier_ref(routing.get("cheap_tier", names[0]), "routing.cheap_tier")
        default_strong = "frontier" if "frontier" in names else names[1]
        strong_tier = tier_ref(routing.get("strong_tier", default_strong), "routing.strong_tier")
        if names.index(strong_tier) <= names.index(cheap_tier):
            raise _fail("routing.strong_tier",
                        f"{strong_tier!r} must come after cheap_tier {cheap_tier!r} in 'tiers' "
                        "(tiers are ordered cheap -> strong)")
        task_head = routing.get("task_head", "task")
        task_head = None if task_head is None else _string(task_head, "routing.task_head")
        sens_head = routing.get("sensitivity_head", "sensitivity")
        sens_head = None if sens_head is None else _string(sens_head, "routing.sensitivity_head")

        # sensitivity ------------------------------------------------------------------------
        sens = _mapping(top.get("sensitivity") or {}, "sensitivity")
        sens_rules: dict[str, SensitivityRule] = {}
        for cls_name, raw_rule in sens.items():
            p = f"sensitivity.{cls_name}"
            rule = _mapping(raw_rule, p)
            _check_keys(rule, p, required=("action",), optional=("allowed_tiers", "allowed_trust", "gate"))
            action = _choice(rule["action"], f"{p}.action", SENSITIVITY_ACTIONS)
            gate = _choice(rule.get("gate", "either"), f"{p}.gate", GATES)
            allowed_tiers, allowed_trust = _allowed(rule, p, action, tiers, tier_ref)
            sens_rules[str(cls_name)] = SensitivityRule(action, allowed_tiers, allowed_trust, gate)

        # task overrides ---------------------------------------------------------------------
        task_ov = _mapping(top.get("task_overrides") or {}, "task_overrides")
        overrides: dict[str, TaskOverride] = {}
        for task_name, raw_ov in task_ov.items():
            p = f"task_overrides.{task_name}"
            ov = _mapping(raw_ov, p)
            _check_keys(ov, p, required=("min_tier",), optional=("min_probability",))
            overrides[str(task_name)] = TaskOverride(
                min_tier=tier_ref(ov["min_tier"], f"{p}.min_tier"),
                min_probability=_number(ov.get("min_probability", 0.0), f"{p}.min_probability", lo=0, hi=1),
            )

        # thresholds -------------------------------------------------------------------------
        th = _mapping(top["thresholds"], "thresholds")
        _check_keys(th, "thresholds", required=("tier",), optional=("sensitivity", "provenance"))
        tier_threshold = _number(th["tier"], "thresholds.tier", lo=0, hi=1)
        sens_th_raw = _mapping(th.get("sensitivity") or {}, "thresholds.sensitivity")
        sens_thresholds = {
            str(k): _number(v, f"thresholds.sensitivity.{k}", lo=0, hi=1, lo_open=True)
            for k, v in sens_th_raw.items()
        }
        for cls_name, rule in sens_rules.items():
            if rule.action != "allow" and rule.model_gates and cls_name not in sens_thresholds:
                raise _fail(f"thresholds.sensitivity.{cls_name}",
                            f"is required: sensitivity class {cls_name!r} has a {rule.action!r} rule")
        provenance = _mapping(th.get("provenance") or {}, "thresholds.provenance")

        # uncertainty ------------------------------------------------------------------------
        unc = _mapping(top.get("uncertainty") or {}, "uncertainty")
        _check_keys(unc, "uncertainty", required=(), optional=("tier_band", "min_confidence", "action"))
        tier_band = _number(unc.get("tier_band", 0.0), "uncertainty.tier_band", lo=0, hi=0.5)
        unc_action = _choice(unc.get("action", "escalate"), "uncertainty.action", UNCERTAINTY_ACTIONS)
        min_conf: dict[str, float] = {}
        min_conf_actions: dict[str, str] = {}
        for head, raw_floor in _mapping(unc.get("min_confidence") or {}, "uncertainty.min_confidence").items():
            p = f"uncertainty.min_confidence.{head}"
            if isinstance(raw_floor, Mapping):
                floor_map = dict(raw_floor)
                _check_keys(floor_map, p, required=("floor",), optional=("action",))
                min_conf[str(head)] = _number(floor_map["floor"], f"{p}.floor", lo=0, hi=1)
                if "action" in floor_map:
                    min_conf_actions[str(head)] = _choice(floor_map["action"], f"{p}.action", UNCERTAINTY_ACTIONS)
            else:
                min_conf[str(head)] = _number(raw_floor, p, lo=0, hi=1)

        # safe decision ----------------------------------------------------------------------
        safe = _mapping(top.get("safe_decision") or {"action": "route", "tier": strong_tier}, "safe_decision")
        _check_keys(safe, "safe_decision", required=("action",), optional=("tier",))
        safe_action = _choice(safe["action"], "safe_decision.action", SAFE_ACTIONS)
        safe_tier: str | None = None
        if safe_action == "route":
            if "tier" not in safe:
                raise _fail("safe_decision.tier", "is required when action is 'route'")
            safe_tier = tier_ref(safe["tier"], "safe_decision.tier")
        elif "tier" in safe:
            raise _fail("safe_decision.tier", "must be omitted when action is 'block'")

        input_rules = _input_rules(top.get("input"), tiers, tier_ref)

        return cls(
            owner=owner, version=version, approval=approval, tiers=tuple(tiers),
            tier_head=tier_head, cheap_tier=cheap_tier, strong_tier=strong_tier,
            task_head=task_head, sensitivity_head=sens_head,
            sensitivity_rules=sens_rules, task_overrides=overrides,
            tier_threshold=tier_threshold, sensitivity_thresholds=sens_thresholds,
            threshold_provenance=provenance,
            tier_band=tier_band, min_confidence=min_conf, min_confidence_actions=min_conf_actions,
            uncertainty_action=unc_action, safe_action=safe_action, safe_tier=safe_tier,
            description=description, input_rules=input_rules, raw=copy.deepcopy(dict(top)),
        )

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data (the validated input, with thresholds as currently set)."""
        return copy.deepcopy(self.raw)

    def to_yaml(self, path: str | Path | None = None, *, header: str = "") -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if header:
            text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + text
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def with_thresholds(
        self,
        *,
        tier: float | None = None,
        sensitivity: Mapping[str, float] | None = None,
        provenance: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> Policy:
        """A copy with new thresholds (and provenance merged in); re-validated."""
        data = self.to_dict()
        th = dict(data.get("thresholds") or {})
        if tier is not None:
            th["tier"] = float(tier)
        if sensitivity:
            merged = dict(th.get("sensitivity") or {})
            merged.update({k: float(v) for k, v in sensitivity.items()})
            th["sensitivity"] = merged
        if provenance:
            prov = dict(th.get("provenance") or {})
            prov.update(copy.deepcopy(dict(provenance)))
            th["provenance"] = prov
        data["thresholds"] = th
        if version is not None:
            data["version"] = version
        return Policy.from_dict(data)


# ------------------------------------------------------------------------------------------
# Decisions
# ------------------------------------------------------------------------------------------
@dataclass
class Decision:
    """One routing decision. ``tier`` and ``model`` are None when ``blocked``."""

    tier: str | None
    model: str | None
    rule: str
    reason: str
    probabilities: dict[str, dict[str, float]]
    thresholds: dict[str, Any]
    policy_version: str
    flags: list[str] = field(default_factory=list)
    blocked: bool = False
    # deterministic detector hits: [{"rule": "detector:<id>", "class", "start", "end"}], never the text
    detections: list[dict[str, Any]] = field(default_factory=list)
    exploration: dict[str, Any] | None = None  # issue 15: see classifier.serving.exploration

    def to_dict(self) -> dict[str, Any]:
        return {**({"exploration": dict(self.exploration)} if self.exploration is not None else {}),
            "tier": self.tier,
            "model": self.model,
            "blocked": self.blocked,
            "rule": self.rule,
            "reason": self.reason,
            "probabilities": {h: dict(p) for h, p in self.probabilities.items()},
            "thresholds": _copy_plain(self.thresholds),
            "policy_version": self.policy_version,
            "flags": list(self.flags),
            "detections": [dict(d) for d in self.detections],
        }


def _detection_dicts(detections: Sequence[Any] | None) -> list[dict[str, Any]]:
    """Detector hits as ``Decision.detections`` entries (``Hit`` objects or dicts already)."""
    if not detections:
        return []
    return [h.to_dict() if hasattr(h, "to_dict") else dict(h) for h in detections]


def _add_flag(flags: list[str], flag: str) -> None:
    if flag not in flags:
        flags.append(flag)


def _copy_plain(value: Any) -> Any:
    """Deep copy of plain data (dicts, lists, scalars): what ``copy.deepcopy`` does for thresholds,
    at a fraction of its cost (it runs for every decision)."""
    if isinstance(value, dict):
        return {k: _copy_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_plain(v) for v in value]
    return value


class PolicyEngine:
    """Applies a ``Policy`` to head probabilities. Validated against the label schema once."""

    def __init__(self, policy: Policy, schema: Any) -> None:
        self.policy = policy
        self.schema = schema
        self._check_against_schema()
        p = policy
        self._names = p.tier_names
        self._cheap = self._names.index(p.cheap_tier)
        self._strong = self._names.index(p.strong_tier)
        tier_head = schema.head(p.tier_head)
        positive = tier_head.positive_class or tier_head.classes[-1]
        self._tier_pos = tier_head.classes.index(positive)
        self._tier_positive = positive
        # tier order indices each sensitivity rule may use (restrict) or None (block)
        self._allowed: dict[str, list[int] | None] = {}
        for cls_name, rule in p.sensitivity_rules.items():
            if rule.action == "block":
                self._allowed[cls_name] = None
            elif rule.action == "restrict":
                self._allowed[cls_name] = [
                    i for i, t in enumerate(p.tiers)
                    if t.name in rule.allowed_tiers or t.trust in rule.allowed_trust
                ]
        self._thresholds = self._threshold_summary()
        self._prepare_row_path()

    def _prepare_row_path(self) -> None:
        """Precompute what the single-row path (``_decide_row``) reads, as plain Python values."""
        p, s = self.policy, self.schema
        self._heads = [(h.name, h.num_classes, tuple(h.classes)) for h in s.heads]
        needed = {p.tier_head}
        if p.sensitivity_rules:
            needed.add(p.sensitivity_head)  # type: ignore[arg-type]
        if p.task_overrides:
            needed.add(p.task_head)  # type: ignore[arg-type]
        needed |= set(p.min_confidence)
        self._needed = frozenset(needed)
        self._row_overrides: list[tuple[str, int, int, float]] = []
        if p.task_overrides:
            classes = s.head(p.task_head).classes
            self._row_overrides = [(name, classes.index(name), self._names.index(ov.min_tier), ov.min_probability)
                                   for name, ov in p.task_overrides.items()]
        self._row_min_conf = [
            (head, floor, p.min_confidence_actions.get(head, p.uncertainty_action) == "safe_decision")
            for head, floor in p.min_confidence.items()
        ]
        self._row_sens: list[tuple[str, int, float | None, frozenset[int] | None, bool]] = []
        if p.sensitivity_rules:
            classes = s.head(p.sensitivity_head).classes
            for name, rule in p.sensitivity_rules.items():
                if rule.action == "allow":
                    continue
                allowed = self._allowed[name]
                threshold = p.sensitivity_thresholds[name] if rule.model_gates else None
                self._row_sens.append((name, classes.index(name), threshold,
                                       None if allowed is None else frozenset(allowed), rule.detectors_gate))
        self._safe_idx = -1 if p.safe_tier is None else self._names.index(p.safe_tier)
        # input rules (section ``input``): (name, flag it reacts to, action, allowed tier indices)
        self._input_rules = [
            (name, INPUT_RULES[name], rule.action,
             [i for i, t in enumerate(p.tiers) if t.name in rule.allowed_tiers or t.trust in rule.allowed_trust])
            for name, rule in p.input_rules.items() if rule.action != "allow"
        ]

    # -- checks ------------------------------------------------------------------------------
    def _check_against_schema(self) -> None:
        p, s = self.policy, self.schema

        def head(name: str, path: str) -> Any:
            if name not in s:
                raise PolicyError(f"{path}: head {name!r} is not in the label schema {s.head_names}")
            return s.head(name)

        tier_head = head(p.tier_head, "routing.tier_head")
        if tier_head.num_classes != 2 and tier_head.positive_class is None:
            raise PolicyError(
                f"routing.tier_head: head {p.tier_head!r} has {tier_head.num_classes} classes and no "
                "positive_class in the schema; the tier threshold needs one positive class"
            )
        if p.task_overrides:
            if p.task_head is None:
                raise PolicyError("task_overrides: needs routing.task_head")
            task = head(p.task_head, "routing.task_head")
            for name in p.task_overrides:
                if name not in task.classes:
                    raise PolicyError(f"task_overrides.{name}: not a class of head {task.name!r} {list(task.classes)}")
        if p.sensitivity_rules or p.sensitivity_thresholds:
            if p.sensitivity_head is None:
                raise PolicyError("sensitivity: needs routing.sensitivity_head")
            sens = head(p.sensitivity_head, "routing.sensitivity_head")
            for name in p.sensitivity_rules:
                if name not in sens.classes:
                    raise PolicyError(f"sensitivity.{name}: not a class of head {sens.name!r} {list(sens.classes)}")
                if name == sens.negative_class:
                    raise PolicyError(f"sensitivity.{name}: is the head's benign (negative) class; "
                                      "rules apply to sensitive classes only")
            for name in p.sensitivity_thresholds:
                if name not in sens.classes:
                    raise PolicyError(f"thresholds.sensitivity.{name}: not a class of head {sens.name!r} {list(sens.classes)}")
        for name in p.min_confidence:
            head(name, f"uncertainty.min_confidence.{name}")

    def _threshold_summary(self) -> dict[str, Any]:
        p = self.policy
        out: dict[str, Any] = {p.tier_head: {self._tier_positive: p.tier_threshold}}
        if p.sensitivity_thresholds and p.sensitivity_head:
            out[p.sensitivity_head] = dict(p.sensitivity_thresholds)
        if p.tier_band:
            out["tier_band"] = p.tier_band
        if p.min_confidence:
            out["min_confidence"] = dict(p.min_confidence)
        return out

    @property
    def thresholds(self) -> dict[str, Any]:
        return _copy_plain(self._thresholds)

    # -- safe decision -----------------------------------------------------------------------
    def safe_decision(self, reason: str, flags: Sequence[str] = (),
                      probabilities: Mapping[str, Mapping[str, float]] | None = None) -> Decision:
        """The explicit decision for input that cannot be classified, or for a fault."""
        p = self.policy
        out_flags = list(dict.fromkeys(flags))
        _add_flag(out_flags, FLAG_FALLBACK)
        if p.safe_action == "block":
            _add_flag(out_flags, FLAG_BLOCKED)
            tier = model = None
            blocked = True
            text = f"safe decision (block): {reason}"
        else:
            tier = p.safe_tier
            model = p.tier(tier).model if tier else None
            blocked = False
            text = f"safe decision (route to {tier}): {reason}"
        return Decision(
            tier=tier, model=model, rule=RULE_SAFE, reason=text,
            probabilities={h: dict(v) for h, v in (probabilities or {}).items()},
            thresholds=self.thresholds, policy_version=p.version, flags=out_flags, blocked=blocked,
        )

    # -- probabilities in --------------------------------------------------------------------
    def _validate_batch(self, probs: Mapping[str, Any]) -> tuple[
            dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], list[str], int]:
        """Arrays [n, C] per schema head, a per-row 'valid' mask, per-head-and-row validity and
        per-row problems. Thread-safe: nothing is stored on the engine."""
        if not isinstance(probs, Mapping):
            raise TypeError("probs must be a mapping head -> array")
        arrays: dict[str, np.ndarray] = {}
        n = None
        for h in self.schema.heads:
            if h.name not in probs:
                continue
            a = np.asarray(probs[h.name], dtype=np.float64)
            if a.ndim == 1:
                a = a[None, :]
            if a.ndim != 2 or a.shape[1] != h.num_classes:
                raise ValueError(f"head {h.name!r}: expected probabilities of shape [n, {h.num_classes}], got {a.shape}")
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise ValueError(f"head {h.name!r}: {a.shape[0]} rows, other heads have {n}")
            arrays[h.name] = a
        if n is None:
            raise ValueError("no probabilities for any schema head")
        valid = np.ones(n, dtype=bool)
        head_ok: dict[str, np.ndarray] = {}
        problem = [""] * n
        needed = {self.policy.tier_head}
        if self.policy.sensitivity_rules:
            needed.add(self.policy.sensitivity_head)  # type: ignore[arg-type]
        if self.policy.task_overrides:
            needed.add(self.policy.task_head)  # type: ignore[arg-type]
        needed |= set(self.policy.min_confidence)
        missing = sorted(x for x in needed if x not in arrays)
        if missing:
            raise ValueError(f"probabilities missing for head(s) {missing} the policy needs")
        for name, a in arrays.items():
            finite = np.isfinite(a).all(axis=1)
            ok = finite & (a >= -1e-9).all(axis=1) & (np.abs(a.sum(axis=1) - 1.0) <= _SUM_TOL)
            for i in np.flatnonzero(valid & ~ok):
                problem[i] = f"head {name!r} probabilities are not a distribution"
            valid &= ok
            head_ok[name] = ok
        return arrays, valid, head_ok, problem, n

    # -- decisions ---------------------------------------------------------------------------
    def decide(self, probs: Mapping[str, Any], *, flags: Sequence[str] = (),
               detections: Sequence[Any] | None = None) -> Decision:
        """Decide for one prompt: ``probs`` maps head -> probabilities of shape (C,) (or (1, C)).
        ``detections``: the prompt's detector hits (``Hit`` objects or their ``to_dict()``)."""
        rows = self._one_row(probs)
        if rows is None:  # anything unusual (bad shapes, not a distribution): the batch path answers
            return self.decide_batch(probs, flags=[list(flags)],
                                     detections=None if detections is None else [detections])[0]
        return self._explore(self._decide_row(rows, list(dict.fromkeys(flags)), _detection_dicts(detections)))

    def _explore(self, decision: Decision) -> Decision:
        """Exploration (issue 15, ``classifier.serving.exploration``) of plain threshold decisions."""
        raw = self.policy.raw.get("exploration")
        if raw is None:
            return decision
        if getattr(self, "_exploration", None) is None:
            from classifier.serving.exploration import Exploration

            self._exploration = Exploration.from_dict(raw)
        p = self.policy
        return self._exploration.apply(decision, p.cheap_tier, p.strong_tier,
                                       models={t.name: t.model for t in p.tiers}, eligible=decision.rule == RULE_TIER)

    def decide_batch(self, probs: Mapping[str, Any], *,
                     flags: Sequence[Sequence[str]] | None = None,
                     detections: Sequence[Sequence[Any]] | None = None) -> list[Decision]:
        """Decide for n prompts at once: ``probs`` maps head -> [n, C]; ``flags`` one list per row;
        ``detections`` one list of detector hits per row (None: no detectors ran).

        Never raises on bad probabilities: malformed input yields safe decisions.
        """
        if flags is not None and len(flags) == 1:
            rows = self._one_row(probs)
            if rows is not None:
                return [self._explore(self._decide_row(rows, list(dict.fromkeys(flags[0])),
                                                       _detection_dicts(detections[0] if detections else None)))]
        try:
            arrays, valid, head_ok, problem, n = self._validate_batch(probs)
        except (TypeError, ValueError) as exc:
            count = len(flags) if flags is not None else 1
            return [self.safe_decision(f"cannot read probabilities: {exc}", list(flags[i]) if flags else [])
                    for i in range(max(count, 1))]
        row_flags = [list(dict.fromkeys(flags[i])) if flags is not None and i < len(flags) else [] for i in range(n)]
        row_det = [_detection_dicts(detections[i]) if detections is not None and i < len(detections) else []
                   for i in range(n)]
        plan = self._plan(arrays, row_flags, row_det)
        out: list[Decision] = []
        for i in range(n):
            # a head whose row is not a distribution is left out (NaN is neither JSON nor evidence)
            probs_i = {
                name: {c: float(a[i, j]) for j, c in enumerate(self.schema.head(name).classes)}
                for name, a in arrays.items() if head_ok[name][i]
            }
            if not valid[i]:
                d = self.safe_decision(problem[i], row_flags[i] + [FLAG_FALLBACK], probs_i)
                d.detections = row_det[i]
                out.append(d)
                continue
            out.append(self._explore(self._build(i, plan, probs_i, row_flags[i], row_det[i])))
        return out

    def tier_indices(self, probs: Mapping[str, Any], *,
                     flags: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """Routed tier index per row (into ``policy.tiers``), -1 where blocked. Vectorised.
        ``flags`` (the runtime's flags per row) feed the input rules; None: no flags."""
        arrays, valid, _, _, _ = self._validate_batch(probs)
        plan = self._plan(arrays, flags)
        tiers = plan["final"].copy()
        safe_idx = -1 if self.policy.safe_tier is None else self._names.index(self.policy.safe_tier)
        tiers[~valid] = safe_idx
        return tiers

    def _plan(self, arrays: dict[str, np.ndarray],  # noqa: C901
              row_flags: Sequence[Sequence[str]] | None = None,
              detections: Sequence[Sequence[Mapping[str, Any]]] | None = None) -> dict[str, Any]:
        """The whole rule cascade on arrays (``row_flags``: the runtime's flags per row, read by
        the input rules; ``detections``: detector hits per row, read by the gates). Each step
        records where it changed the outcome."""
        p = self.policy
        n = next(iter(arrays.values())).shape[0]
        p_pos = np.nan_to_num(arrays[p.tier_head][:, self._tier_pos], nan=1.0)
        t = p.tier_threshold
        above = p_pos >= t
        base = np.where(above, self._strong, self._cheap).astype(np.int64)
        tier = base.copy()

        # task overrides: raise to a minimum tier
        task_rule = np.full(n, "", dtype=object)
        if p.task_overrides and p.task_head in arrays:
            task_p = arrays[p.task_head]
            classes = self.schema.head(p.task_head).classes
            arg = np.argmax(task_p, axis=1)
            top = task_p[np.arange(n), arg]
            for cls_name, ov in p.task_overrides.items():
                j = classes.index(cls_name)
                min_idx = self._names.index(ov.min_tier)
                hit = (arg == j) & (top >= ov.min_probability) & (tier < min_idx)
                tier[hit] = min_idx
                task_rule[hit] = cls_name

        # uncertainty
        unc_reason = np.full(n, "", dtype=object)
        unc_safe = np.zeros(n, dtype=bool)
        band = (np.abs(p_pos - t) < p.tier_band) if p.tier_band > 0 else np.zeros(n, dtype=bool)
        for i in np.flatnonzero(band):
            unc_reason[i] = f"p({self._tier_positive})={p_pos[i]:.3f} within {p.tier_band:g} of threshold {t:g}"
        if p.uncertainty_action == "safe_decision":
            unc_safe |= band
        for head, floor in p.min_confidence.items():
            if head not in arrays:
                continue
            top = arrays[head].max(axis=1)
            low = top < floor
            for i in np.flatnonzero(low):
                msg = f"head {head!r} top probability {top[i]:.3f} below floor {floor:g}"
                unc_reason[i] = f"{unc_reason[i]}; {msg}" if unc_reason[i] else msg
            if p.min_confidence_actions.get(head, p.uncertainty_action) == "safe_decision":
                unc_safe |= low
        uncertain = unc_reason != ""
        before_unc = tier.copy()
        esc = uncertain & ~unc_safe & (tier < self._strong)
        tier[esc] = self._strong
        safe_idx = -1 if p.safe_tier is None else self._names.index(p.safe_tier)
        tier[unc_safe] = safe_idx if p.safe_action == "route" else -1
        unc_changed = uncertain & (tier != before_unc)

        # input rules: what the model could not read (rows the runtime flagged only)
        input_applied: list[list[tuple[str, str, bool]]] = [[] for _ in range(n)]
        if self._input_rules and row_flags is not None:
            for i, fl in enumerate(row_flags[:n]):
                if fl:
                    new, input_applied[i] = self._input_step(int(tier[i]), fl)
                    tier[i] = new

        # sensitivity gates (override everything above)
        sens_detected: list[list[str]] = [[] for _ in range(n)]
        sens_block = np.zeros(n, dtype=bool)
        before_sens = tier.copy()
        if p.sensitivity_rules and p.sensitivity_head in arrays:
            sp = arrays[p.sensitivity_head]
            classes = self.schema.head(p.sensitivity_head).classes
            allowed_mask = np.ones((n, len(self._names)), dtype=bool)
            det_classes = [frozenset(h["class"] for h in d) for d in detections] if detections else None
            for cls_name, rule in p.sensitivity_rules.items():
                if rule.action == "allow":
                    continue
                hit = np.zeros(n, dtype=bool)
                if rule.model_gates:
                    hit |= sp[:, classes.index(cls_name)] >= p.sensitivity_thresholds[cls_name]
                if rule.detectors_gate and det_classes is not None:
                    hit |= np.fromiter((cls_name in d for d in det_classes), dtype=bool, count=n)
                for i in np.flatnonzero(hit):
                    sens_detected[i].append(cls_name)
                allowed = self._allowed[cls_name]
                if allowed is None:
                    sens_block |= hit
                else:
                    row_mask = np.zeros(len(self._names), dtype=bool)
                    row_mask[allowed] = True
                    allowed_mask[hit] &= row_mask
            # several restrict rules whose allowed tiers do not overlap: nothing may serve -> block
            sens_block |= ~allowed_mask.any(axis=1)
            restricted = ~sens_block & ~allowed_mask.all(axis=1)
            for i in np.flatnonzero(restricted):
                ok = np.flatnonzero(allowed_mask[i])
                cur = tier[i]
                if cur < 0 or allowed_mask[i, cur]:
                    continue  # already blocked (safe decision), or the tier is allowed
                # the lowest allowed tier at least as strong as the one chosen, else the strongest
                stronger = ok[ok >= cur]
                tier[i] = int(stronger[0]) if stronger.size else int(ok[-1])
            tier[sens_block] = -1
        sens_changed = (tier != before_sens) | sens_block

        return {
            "p_pos": p_pos, "base": base, "task_rule": task_rule, "unc_reason": unc_reason,
            "uncertain": uncertain, "unc_safe": unc_safe, "unc_changed": unc_changed,
            "sens_detected": sens_detected, "sens_block": sens_block, "sens_changed": sens_changed,
            "input_applied": input_applied, "final": tier,
        }

    def _input_step(self, tier: int, flags: Sequence[str]) -> tuple[int, list[tuple[str, str, bool]]]:
        """The input rules on one row: the new tier index (-1: blocked) and, per rule that fired,
        (name, action, whether it changed the tier). Shared by ``_plan`` and ``_decide_row``."""
        applied: list[tuple[str, str, bool]] = []
        for name, flag, action, allowed in self._input_rules:
            if flag not in flags:
                continue
            before = tier
            if action == "block":
                tier = -1
            elif tier < 0:
                pass  # already blocked (safe decision)
            elif action == "escalate":
                tier = max(tier, self._strong)
            elif tier not in allowed:
                stronger = [k for k in allowed if k >= tier]
                tier = stronger[0] if stronger else allowed[-1]
            applied.append((name, action, tier != before))
        return tier, applied

    # -- one row, plain floats ---------------------------------------------------------------
    def _one_row(self, probs: Any) -> dict[str, list[float]] | None:
        """Head -> one row of floats when ``probs`` is one well-formed row whose every head is a
        distribution and every head the policy needs is there; None sends it to the batch path
        (which owns the error answers)."""
        if not isinstance(probs, Mapping):
            return None
        rows: dict[str, list[float]] = {}
        for name, n_classes, _ in self._heads:
            value = probs.get(name)
            if value is None:
                if name in probs:
                    return None
                continue
            try:
                a = value if type(value) is np.ndarray and value.dtype == np.float64 else np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                return None
            if a.shape == (n_classes,):
                row = a.tolist()
            elif a.shape == (1, n_classes):
                row = a[0].tolist()
            else:
                return None
            total = 0.0
            for x in row:
                if not x >= -1e-9:  # also false for NaN; +inf makes the sum fail below
                    return None
                total += x
            if not abs(total - 1.0) <= _SUM_TOL:
                return None
            rows[name] = row
        if not self._needed.issubset(rows):
            return None
        return rows

    def _decide_row(self, rows: dict[str, list[float]], flags: list[str],
                    detections: list[dict[str, Any]] | None = None) -> Decision:
        """``_plan`` + ``_build`` for one valid row, on Python floats (same rules, same order)."""
        p = self.policy
        t = p.tier_threshold
        p_pos = rows[p.tier_head][self._tier_pos]
        base = self._strong if p_pos >= t else self._cheap
        tier = base
        task_rule = ""
        if self._row_overrides and p.task_head in rows:
            task_p = rows[p.task_head]
            top = max(task_p)
            arg = task_p.index(top)  # first maximum, as np.argmax
            for name, j, min_idx, min_prob in self._row_overrides:
                if arg == j and top >= min_prob and tier < min_idx:
                    tier = min_idx
                    task_rule = name

        unc_reason = ""
        unc_safe = False
        if p.tier_band > 0 and abs(p_pos - t) < p.tier_band:
            unc_reason = f"p({self._tier_positive})={p_pos:.3f} within {p.tier_band:g} of threshold {t:g}"
            if p.uncertainty_action == "safe_decision":
                unc_safe = True
        for head, floor, safe in self._row_min_conf:
            if head not in rows:
                continue
            top = max(rows[head])
            if top < floor:
                msg = f"head {head!r} top probability {top:.3f} below floor {floor:g}"
                unc_reason = f"{unc_reason}; {msg}" if unc_reason else msg
                if safe:
                    unc_safe = True
        uncertain = unc_reason != ""
        before_unc = tier
        if uncertain and not unc_safe and tier < self._strong:
            tier = self._strong
        if unc_safe:
            tier = self._safe_idx if p.safe_action == "route" else -1
        unc_changed = uncertain and tier != before_unc

        input_applied: list[tuple[str, str, bool]] = []
        if self._input_rules and flags:
            tier, input_applied = self._input_step(tier, flags)

        detected: list[str] = []
        sens_block = False
        before_sens = tier
        if self._row_sens and p.sensitivity_head in rows:
            sp = rows[p.sensitivity_head]
            det_classes = {h["class"] for h in detections} if detections else ()
            allowed_now: set[int] | None = None  # None: every tier allowed
            for name, j, threshold, allowed, det_gate in self._row_sens:
                if not ((threshold is not None and sp[j] >= threshold) or (det_gate and name in det_classes)):
                    continue
                detected.append(name)
                if allowed is None:
                    sens_block = True
                else:
                    allowed_now = set(allowed) if allowed_now is None else allowed_now & allowed
            if allowed_now is not None and not allowed_now:
                sens_block = True  # restrictions that do not overlap: nothing may serve
            if not sens_block and allowed_now is not None and len(allowed_now) < len(self._names):
                if tier >= 0 and tier not in allowed_now:
                    ok = sorted(allowed_now)
                    stronger = [k for k in ok if k >= tier]
                    tier = stronger[0] if stronger else ok[-1]
            if sens_block:
                tier = -1
        sens_changed = tier != before_sens or sens_block

        probs_i = {name: dict(zip(classes, rows[name], strict=True)) for name, _, classes in self._heads
                   if name in rows}
        return self._compose(p_pos, base, task_rule, uncertain, unc_safe, unc_reason, unc_changed,
                             detected, sens_block, sens_changed, tier, probs_i, flags, detections or [],
                             input_applied)

    def _build(self, i: int, plan: dict[str, Any], probs_i: dict[str, dict[str, float]],
               flags: list[str], detections: list[dict[str, Any]] | None = None) -> Decision:
        return self._compose(
            plan["p_pos"][i], int(plan["base"][i]), plan["task_rule"][i], bool(plan["uncertain"][i]),
            bool(plan["unc_safe"][i]), plan["unc_reason"][i], bool(plan["unc_changed"][i]),
            plan["sens_detected"][i], bool(plan["sens_block"][i]), bool(plan["sens_changed"][i]),
            int(plan["final"][i]), probs_i, flags, detections or [], plan["input_applied"][i],
        )

    def _compose(self, p_pos: float, base_idx: int, task_rule: str, uncertain: bool, unc_safe: bool,
                 unc_reason: str, unc_changed: bool, detected: list[str], sens_block: bool,
                 sens_changed: bool, final: int, probs_i: dict[str, dict[str, float]],
                 flags: list[str], detections: list[dict[str, Any]] | None = None,
                 input_applied: Sequence[tuple[str, str, bool]] = ()) -> Decision:
        """The Decision (rule, reason, flags) from one row's outcome of the cascade."""
        p = self.policy
        t = p.tier_threshold
        base = self._names[base_idx]
        cmp = ">=" if p_pos >= t else "<"
        reasons = [f"p({self._tier_positive})={p_pos:.3f} {cmp} threshold {t:g} -> {base}"]
        rule = RULE_TIER
        if task_rule:
            ov = p.task_overrides[task_rule]
            reasons.append(f"task {task_rule!r} requires at least {ov.min_tier}")
            rule = f"{RULE_TASK}:{task_rule}"
        if uncertain:
            _add_flag(flags, FLAG_UNCERTAIN)
            if unc_safe:
                reasons.append(f"uncertain ({unc_reason}) -> safe decision")
                rule = f"{RULE_UNCERTAIN}:{RULE_SAFE}"
            else:
                reasons.append(f"uncertain ({unc_reason}) -> escalate to at least {p.strong_tier}")
                if unc_changed:
                    rule = f"{RULE_UNCERTAIN}:escalate"
        for name, action, changed in input_applied:
            what = {"unread": "text that will be sent was not read (truncated)",
                    "long_request": "longer than one model window (long_request)"}[name]
            reasons.append(f"input {name}: {what} -> {action}" + ("" if changed else " (tier already allowed)"))
            if changed:
                rule = f"{RULE_INPUT}:{name}:{action}"
        if detected:
            shown, by_detector = self._evidence(detected, probs_i, detections or [])
            if sens_block:
                blocking = [c for c in detected if p.sensitivity_rules[c].action == "block"]
                if blocking:
                    reasons.append(f"sensitivity {shown}: blocked by rule for {', '.join(blocking)}")
                    rule = f"{RULE_SENSITIVITY}:{blocking[0]}:block" + by_detector.get(blocking[0], "")
                else:
                    reasons.append(f"sensitivity {shown}: no tier satisfies every restriction -> blocked")
                    rule = f"{RULE_SENSITIVITY}:{'+'.join(detected)}:block"
            elif sens_changed:
                reasons.append(f"sensitivity {shown}: restricted -> {self._names[final]}")
                rule = f"{RULE_SENSITIVITY}:{'+'.join(detected)}:restrict"
                if len(detected) == 1:
                    rule += by_detector.get(detected[0], "")
            else:
                reasons.append(f"sensitivity {shown}: {self._names[final]} already allowed")
        blocked = final < 0
        if blocked:
            _add_flag(flags, FLAG_BLOCKED)
            tier_name = model = None
        else:
            tier_name = self._names[final]
            model = p.tiers[final].model
        reasons.append("final: blocked" if blocked else f"final: {tier_name} ({model})")
        return Decision(
            tier=tier_name, model=model, rule=rule, reason="; ".join(reasons),
            probabilities=probs_i, thresholds=self.thresholds, policy_version=p.version,
            flags=flags, blocked=blocked, detections=list(detections or []),
        )

    def _evidence(self, detected: list[str], probs_i: dict[str, dict[str, float]],
                  detections: list[dict[str, Any]]) -> tuple[str, dict[str, str]]:
        """The reason text for the detected classes (the model's probability and/or the detector
        rules with their spans) and, per class gated by a detector, the rule suffix naming it."""
        p = self.policy
        parts: list[str] = []
        suffix: dict[str, str] = {}
        for c in detected:
            rule = p.sensitivity_rules[c]
            evidence: list[str] = []
            threshold = p.sensitivity_thresholds.get(c)
            prob = probs_i.get(p.sensitivity_head or "", {}).get(c)
            if rule.model_gates and threshold is not None and prob is not None and prob >= threshold:
                evidence.append(f"p={prob:.3f} >= {threshold:g}")
            if rule.detectors_gate:
                hits = [h for h in detections if h["class"] == c]
                if hits:
                    evidence.append(", ".join(f"{h['rule']} at [{h['start']}, {h['end']})" for h in hits[:3])
                                    + (f" (+{len(hits) - 3} more)" if len(hits) > 3 else ""))
                    suffix[c] = ":" + str(hits[0]["rule"])
            parts.append(f"{c} " + " and ".join(evidence))
        return ", ".join(parts), suffix
