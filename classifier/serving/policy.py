"""The routing policy: turn calibrated head probabilities into one auditable routing decision.

A *policy* is a small, owner-approved YAML document (``serving/policy.example.yaml`` shows every
field with comments; ``serving/policy.schema.json``, generated from the model here by
``policy_json_schema`` / ``tierwise policy schema``, gives editors validation as you type). It is
a typed pydantic model: ``Policy.from_yaml`` / ``Policy.from_dict`` validate it completely and
raise ``PolicyError`` naming the field path at fault (``tiers.frontier.price.input_per_million:
must be a number >= 0``). Fields can be edited on the model (``policy.thresholds.tier = 0.4``) and
``to_yaml`` writes what the model holds: the keys the document had plus those edited, values as
written (the model is the only copy). ``PolicyEngine(policy, schema)`` checks the policy against
the label schema (heads and classes it names must exist) and then decides:

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

The cascade is written once (``PolicyEngine._cascade``) and run on one prompt's plain Python
floats (``decide``, and ``decide_batch`` of one row: what a router calls per request, where
numpy's per-call overhead would be most of the cost) or on numpy arrays of many prompts
(``decide_batch``, ``tier_indices``): it uses only comparisons, ``&``/``|`` and the three
operations of ``_ROW`` / ``_BATCH``. Every restriction (sensitivity, input rules, escalation) is
a lookup in a table built once from the policy (``_routes``), so "the lowest allowed tier at
least as strong, else the strongest allowed" is defined in one place. ``safe_decision(reason,
flags)`` is the explicit decision for input that cannot be classified (and for faults): it never
raises.

What this module leaves out: computing probabilities (``runtime.py``), fitting thresholds
(``classifier.evaluation.thresholds``) and logging decisions (``audit.py``). It imports numpy,
pydantic, pyyaml and the stdlib only.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainValidator,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from classifier.errors import PolicyError
from classifier.serving.exploration import MAX_SHARE, MODES, Exploration
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

# the example policy and its JSON Schema, shipped in this package (``serving/`` links to them)
EXAMPLE_FILE = "policy.example.yaml"
SCHEMA_FILE = "policy.schema.json"


def packaged(name: str = EXAMPLE_FILE) -> Path:
    """Path of a file shipped with this package (``EXAMPLE_FILE`` or ``SCHEMA_FILE``)."""
    return Path(str(resources.files("classifier.serving").joinpath(name)))


# ------------------------------------------------------------------------------------------
# Field types: each says what it accepts in the words its error uses (the JSON Schema says the same)
# ------------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    # YAML reads versions like 1.2 and dates as numbers/dates: accept scalars, store as text.
    if isinstance(value, (bool, list, dict)) or value is None or not str(value).strip():
        raise ValueError("must be a non-empty string")
    return str(value).strip()


Text = Annotated[str, PlainValidator(_text), WithJsonSchema({"type": ["string", "number"], "minLength": 1})]
OptText = Annotated[str | None, PlainValidator(lambda v: None if v is None else _text(v)),
                    WithJsonSchema({"type": ["string", "number", "null"], "minLength": 1})]
Note = Annotated[str, BeforeValidator(lambda v: "" if v is None else str(v))]


def _number(lo: float, hi: float | None = None, *, lo_open: bool = False) -> Any:
    """A finite number in [lo, hi] (``lo_open``: > lo), kept as written (an int stays an int, so a
    policy saved unedited reads as it was written)."""
    want = f"must be a number {'>' if lo_open else '>='} {lo:g}" + ("" if hi is None else f" and <= {hi:g}")

    def check(value: Any) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi))
        if not ok:
            raise ValueError(f"{want}, got {value!r}")
        return value

    schema: dict[str, Any] = {"type": "number", "exclusiveMinimum" if lo_open else "minimum": lo}
    if hi is not None:
        schema["maximum"] = hi
    return Annotated[float, PlainValidator(check), WithJsonSchema(schema)]


def _one_of(*options: str, optional: bool = False) -> Any:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if value not in options:
            raise ValueError(f"must be one of {list(options)}, got {value!r}")
        return value

    schema = {"enum": [*options, None] if optional else list(options)}
    return Annotated[Literal[options], PlainValidator(check), WithJsonSchema(schema)]


def _list(item: Any, *, min_items: int, message: str) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) < min_items:
            raise ValueError(message)
        return value

    return Annotated[item, BeforeValidator(check), Field(json_schema_extra={"minItems": min_items})]


def _mapping(value: Any) -> Any:
    return {} if value is None else value  # an empty YAML section (``sensitivity:``) is an empty mapping


def _input_keys(value: Any) -> Any:
    unknown = sorted(str(k) for k in value if k not in INPUT_RULES) if isinstance(value, Mapping) else []
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(INPUT_RULES)}")
    return _mapping(value)


Prob = _number(0, 1)
Trust = _one_of(*TRUST_LEVELS)
Names = _list(tuple[Text, ...], min_items=1, message="must be a non-empty list of names")


class _Section(BaseModel):
    """A section of the policy: unknown keys are errors, assignments are validated, and it is
    written back with the keys it was read with plus those that differ from their default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        fields = cls.model_fields
        if data is None and not any(f.is_required() for f in fields.values()):
            return {}
        if isinstance(data, Mapping):
            unknown = sorted(str(k) for k in data if k not in fields)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(fields)}")
        return data

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        return {k: v for k, v in data.items() if k in self.model_fields_set
                or getattr(self, k) != fields[k].get_default(call_default_factory=True)}

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _policy_error(exc, None) from None


class Approval(_Section):
    """The sign-off that makes the policy auditable."""

    approved_by: Text
    approved_at: Text
    ticket: Text


class Price(_Section):
    """USD per million tokens."""

    input_per_million: _number(0)
    output_per_million: _number(0)
    currency: str | None = None


class Tier(_Section):
    """One destination, ordered cheap -> strong in ``Policy.tiers``."""

    name: Text
    model: Text
    price: Price
    trust: Trust
    description: Note = ""

    @property
    def input_per_million(self) -> float:
        return self.price.input_per_million

    @property
    def output_per_million(self) -> float:
        return self.price.output_per_million


class Routing(_Section):
    """Which heads the rules read and which tiers the tier threshold chooses between."""

    tier_head: Text = "tier"
    cheap_tier: OptText = None  # default: the first tier
    strong_tier: OptText = None  # default: 'frontier' if a tier has that name, else the second tier
    task_head: OptText = "task"
    sensitivity_head: OptText = "sensitivity"


class _Restriction(_Section):
    """``allowed_tiers`` / ``allowed_trust``: with action ``restrict`` (only), the tiers a request
    may go to (the union of both)."""

    allowed_tiers: Names = ()
    allowed_trust: _list(tuple[Trust, ...], min_items=1, message="must be a non-empty list of names") = ()


class SensitivityRule(_Restriction):
    """What happens when a sensitivity class is detected: ``block`` refuses the request,
    ``restrict`` allows only ``allowed_tiers`` / ``allowed_trust``, ``allow`` constrains nothing.
    ``gate`` says which evidence triggers the class: either, model or detectors."""

    action: _one_of(*SENSITIVITY_ACTIONS)
    gate: _one_of(*GATES) = "either"

    @property
    def model_gates(self) -> bool:
        return self.gate != "detectors"

    @property
    def detectors_gate(self) -> bool:
        return self.gate != "model"


class InputRule(_Restriction):
    """What happens to a request the runtime flags for how much of it the model read (section
    ``input``): ``unread`` reacts to ``truncated`` (text that will be sent was read by neither a
    model window nor a detector), ``long_request`` to ``long_request`` (longer than one model
    window). ``block``: refuse. ``restrict``: only ``allowed_tiers`` / ``allowed_trust``.
    ``escalate``: at least ``routing.strong_tier``. ``allow``: no constraint."""

    action: _one_of(*INPUT_ACTIONS)


class TaskOverride(_Section):
    """Raise the tier to at least ``min_tier`` when the task head predicts this class (argmax,
    and its probability >= ``min_probability``)."""

    min_tier: Text
    min_probability: Prob = 0.0


class Thresholds(_Section):
    """Fitted by ``tierwise calibrate``; ``provenance`` says how."""

    tier: Prob
    sensitivity: Annotated[dict[str, _number(0, 1, lo_open=True)], BeforeValidator(_mapping)] = Field(default_factory=dict)
    provenance: Annotated[dict[str, Any], BeforeValidator(_mapping)] = Field(default_factory=dict)


class MinConfidence(_Section):
    """A head's floor with its own action (``{floor: 0.5, action: safe_decision}``)."""

    floor: Prob
    action: _one_of(*UNCERTAINTY_ACTIONS, optional=True) = None


# a floor is a bare number or a MinConfidence mapping; the tags never reach an error's path
_TAGS = ("<number>", "<mapping>")
Floor = Annotated[
    Annotated[Prob, Tag(_TAGS[0])] | Annotated[MinConfidence, Tag(_TAGS[1])],
    Discriminator(lambda v: _TAGS[1] if isinstance(v, (Mapping, MinConfidence)) else _TAGS[0]),
]


class Uncertainty(_Section):
    tier_band: _number(0, 0.5) = 0.0
    min_confidence: Annotated[dict[str, Floor], BeforeValidator(_mapping)] = Field(default_factory=dict)
    action: _one_of(*UNCERTAINTY_ACTIONS) = "escalate"


class SafeDecision(_Section):
    """The explicit decision for input that cannot be classified: route to ``tier``, or block."""

    action: _one_of(*SAFE_ACTIONS)
    tier: OptText = None


class ExplorationSettings(_Section):
    """Issue 15 (``classifier.serving.exploration``): the share of plain threshold decisions explored."""

    share: _number(0, MAX_SHARE)
    mode: _one_of(*MODES) = "send"


# ------------------------------------------------------------------------------------------
# The policy
# ------------------------------------------------------------------------------------------
class Policy(_Section):
    """A validated routing policy (a tierwise routing policy file). Build it with ``from_dict`` /
    ``from_yaml``; the flat properties (``tier_threshold``, ``cheap_tier``...) read the sections
    with their defaults resolved."""

    model_config = ConfigDict(title="tierwise routing policy")

    owner: Text
    version: Text
    approval: Approval
    tiers: _list(list[Tier], min_items=2, message="must be a list of at least two tiers, ordered cheap -> strong")
    thresholds: Thresholds
    description: Note = ""
    routing: Routing = Field(default_factory=Routing)
    sensitivity: Annotated[dict[str, SensitivityRule], BeforeValidator(_mapping)] = Field(default_factory=dict)
    task_overrides: Annotated[dict[str, TaskOverride], BeforeValidator(_mapping)] = Field(default_factory=dict)
    uncertainty: Uncertainty = Field(default_factory=Uncertainty)
    # rule name -> rule, applied in the document's order
    input: Annotated[dict[Literal["unread", "long_request"], InputRule],
                     BeforeValidator(_input_keys)] = Field(default_factory=dict)
    safe_decision: SafeDecision | None = None  # default: route to routing.strong_tier
    exploration: ExplorationSettings | None = None

    @model_validator(mode="after")
    def _check(self) -> Policy:  # noqa: C901 - one linear walk over the cross-field rules
        """What one field cannot say alone: tier names, their order, and which keys go together."""
        names: list[str] = []
        for t in self.tiers:
            if t.name in names:
                raise PolicyError(f"tiers.{t.name}.name: duplicate tier name {t.name!r}")
            names.append(t.name)

        def tier_ref(name: str | None, path: str) -> None:
            if name is not None and name not in names:
                raise PolicyError(f"{path}: unknown tier {name!r}; the policy's tiers are {names}")

        r = self.routing
        tier_ref(r.cheap_tier, "routing.cheap_tier")
        tier_ref(r.strong_tier, "routing.strong_tier")
        if names.index(self.strong_tier) <= names.index(self.cheap_tier):
            raise PolicyError(f"routing.strong_tier: {self.strong_tier!r} must come after cheap_tier "
                              f"{self.cheap_tier!r} in 'tiers' (tiers are ordered cheap -> strong)")
        rules = [(f"sensitivity.{k}", v) for k, v in self.sensitivity.items()]
        rules += [(f"input.{k}", v) for k, v in self.input_rules.items()]
        for path, rule in rules:
            for j, name in enumerate(rule.allowed_tiers):
                tier_ref(name, f"{path}.allowed_tiers[{j}]")
            if rule.action == "restrict":
                if not rule.allowed_tiers and not rule.allowed_trust:
                    raise PolicyError(f"{path}: action 'restrict' needs 'allowed_tiers' and/or 'allowed_trust'")
                if not any(t.name in rule.allowed_tiers or t.trust in rule.allowed_trust for t in self.tiers):
                    raise PolicyError(f"{path}: no tier satisfies allowed_tiers/allowed_trust: the rule could never route")
            elif rule.allowed_tiers or rule.allowed_trust:
                raise PolicyError(f"{path}: allowed_tiers/allowed_trust only apply to action 'restrict', "
                                  f"not {rule.action!r}")
        for name, ov in self.task_overrides.items():
            tier_ref(ov.min_tier, f"task_overrides.{name}.min_tier")
        for name, rule in self.sensitivity.items():
            if rule.action != "allow" and rule.model_gates and name not in self.thresholds.sensitivity:
                raise PolicyError(f"thresholds.sensitivity.{name}: is required: sensitivity class {name!r} "
                                  f"has a {rule.action!r} rule")
        safe = self.safe_decision
        if safe is not None and safe.action == "route":
            if safe.tier is None:
                raise PolicyError("safe_decision.tier: is required when action is 'route'")
            tier_ref(safe.tier, "safe_decision.tier")
        elif safe is not None and safe.tier is not None:
            raise PolicyError("safe_decision.tier: must be omitted when action is 'block'")
        return self

    # -- the sections read flat, defaults resolved (what the engine, reports and tools read) ------
    tier_names = property(lambda self: [t.name for t in self.tiers])
    tier_head = property(lambda self: self.routing.tier_head)
    task_head = property(lambda self: self.routing.task_head)
    sensitivity_head = property(lambda self: self.routing.sensitivity_head)
    cheap_tier = property(lambda self: self.routing.cheap_tier or self.tiers[0].name)
    strong_tier = property(lambda self: self.routing.strong_tier or (
        "frontier" if "frontier" in self.tier_names else self.tiers[1].name))
    sensitivity_rules = property(lambda self: self.sensitivity)
    input_rules = property(lambda self: self.input)
    tier_threshold = property(lambda self: self.thresholds.tier)
    sensitivity_thresholds = property(lambda self: self.thresholds.sensitivity)
    threshold_provenance = property(lambda self: self.thresholds.provenance)
    tier_band = property(lambda self: self.uncertainty.tier_band)
    uncertainty_action = property(lambda self: self.uncertainty.action)
    min_confidence = property(lambda self: {h: v.floor if isinstance(v, MinConfidence) else v
                                            for h, v in self.uncertainty.min_confidence.items()})
    min_confidence_actions = property(lambda self: {h: v.action for h, v in self.uncertainty.min_confidence.items()
                                                    if isinstance(v, MinConfidence) and v.action is not None})
    safe_action = property(lambda self: "route" if self.safe_decision is None else self.safe_decision.action)
    safe_tier = property(lambda self: self.strong_tier if self.safe_decision is None else self.safe_decision.tier)

    def tier(self, name: str) -> Tier:
        for t in self.tiers:
            if t.name == name:
                return t
        raise PolicyError(f"no tier named {name!r}; the policy has {self.tier_names}")

    # -- reading and writing -----------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Policy:
        data = read_yaml(path, PolicyError, "policy file")
        try:
            return cls.from_dict(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> Policy:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _policy_error(exc, data) from None

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain data: the keys it was read with plus those edited, values as held."""
        return self.model_dump(mode="json")

    def to_yaml(self, path: str | Path | None = None, *, header: str = "") -> str:
        """The policy as YAML (re-validated first: an edit that breaks a cross-field rule raises
        ``PolicyError`` here, not when the file is next read); written to ``path`` if given."""
        data = Policy.from_dict(self.to_dict()).to_dict()
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
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
        th = data["thresholds"]
        if tier is not None:
            th["tier"] = float(tier)
        if sensitivity:
            th["sensitivity"] = {**th.get("sensitivity", {}), **{k: float(v) for k, v in sensitivity.items()}}
        if provenance:
            th["provenance"] = {**th.get("provenance", {}), **copy.deepcopy(dict(provenance))}
        if version is not None:
            data["version"] = version
        return Policy.from_dict(data)


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file (what ``serving/policy.schema.json`` holds)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Policy.model_json_schema()}


def _policy_error(exc: ValidationError, data: Any) -> PolicyError:
    """One ``PolicyError`` for a pydantic error: each problem as ``path: message``, the path in the
    document's terms (``tiers.<name>`` for a named tier, ``[i]`` for a list item, ``policy`` for
    the top level)."""
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, PolicyError):  # a cross-field rule: its message names its own path
            problems.append(str(cause))
            continue
        path, node = "", data
        for part in err["loc"]:
            if part in _TAGS:
                continue
            if isinstance(part, int):
                item = node[part] if isinstance(node, Sequence) and 0 <= part < len(node) else None
                name = item.get("name") if isinstance(item, Mapping) else None
                path += f".{name}" if isinstance(name, str) and name else f"[{part}]"
                node = item
            else:
                path += f".{part}" if path else str(part)
                node = node.get(part) if isinstance(node, Mapping) else None
        kind = err["type"]
        if kind == "missing":
            message = "is required"
        elif kind in ("model_type", "dict_type", "model_attributes_type"):
            message = f"must be a mapping, got {type(err['input']).__name__}"
        elif cause is not None:
            message = str(cause)
        else:
            message = err["msg"]
        problems.append(f"{path or 'policy'}: {message}")
    return PolicyError("; ".join(dict.fromkeys(problems)))


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


class _Route:
    """A restriction as a table: entry ``tier + 1`` is where it sends a request routed to ``tier``
    (entry 0: blocked stays blocked), as a tuple (one row) and an array (a batch)."""

    def __init__(self, values: Sequence[int]) -> None:
        self.row = tuple(values)
        self.arr = np.asarray(values, dtype=np.int64)


def _routes(allowed: Sequence[int] | None, n_tiers: int) -> list[int]:
    """THE restriction rule: a request may go only to the ``allowed`` tier indices (None: any):
    the lowest allowed tier at least as strong as the one chosen, else the strongest allowed;
    nothing allowed blocks (-1). Index ``tier + 1``."""
    ok = sorted(range(n_tiers) if allowed is None else allowed)
    return [-1] + [-1 if not ok else next((k for k in ok if k >= t), ok[-1]) for t in range(n_tiers)]


class _ROW:
    """The cascade's operations on one prompt: ``probs`` maps head -> list of floats, ``sets``
    is one prompt's flags or detected classes."""

    where = staticmethod(lambda cond, a, b: a if cond else b)
    not_ = staticmethod(operator.not_)
    take = staticmethod(lambda route, index: route.row[index])
    col = staticmethod(lambda probs, head, j: probs[head][j])
    top = staticmethod(lambda probs, head: max(probs[head]))
    argmax = staticmethod(lambda probs, head: probs[head].index(max(probs[head])))  # the first maximum, as np.argmax
    has = staticmethod(operator.contains)  # item in sets


class _BATCH:
    """The same operations on many prompts: ``probs`` maps head -> [n, C] array, ``sets`` is one
    collection per prompt (or None: nothing flagged, no detector ran)."""

    where = staticmethod(np.where)
    not_ = staticmethod(np.logical_not)
    take = staticmethod(lambda route, index: route.arr[index])
    col = staticmethod(lambda probs, head, j: probs[head][:, j])
    top = staticmethod(lambda probs, head: probs[head].max(axis=1))
    argmax = staticmethod(lambda probs, head: np.argmax(probs[head], axis=1))
    has = staticmethod(lambda sets, item: sets is not None and np.fromiter(
        (item in s for s in sets), dtype=bool, count=len(sets)))


class PolicyEngine:
    """Applies a ``Policy`` to head probabilities. Validated against the label schema once; the
    engine works on its own copy of the policy (edit a ``Policy``, then build a new engine)."""

    def __init__(self, policy: Policy, schema: Any) -> None:
        self.policy = p = policy.model_copy(deep=True)
        self.schema = schema
        self._check_against_schema()
        names = self._names = p.tier_names
        n_tiers = len(names)
        self._cheap = names.index(p.cheap_tier)
        self._strong = names.index(p.strong_tier)
        tier_head = schema.head(p.tier_head)
        positive = tier_head.positive_class or tier_head.classes[-1]
        self._tier_pos = tier_head.classes.index(positive)
        self._tier_positive = positive
        self._t, self._band = p.tier_threshold, p.tier_band
        self._tier_head, self._task_head, self._sens_head = p.tier_head, p.task_head, p.sensitivity_head
        self._models = [t.model for t in p.tiers]
        self._heads = [(h.name, h.num_classes, tuple(h.classes)) for h in schema.heads]
        needed = {p.tier_head, *p.min_confidence}
        if p.sensitivity_rules:
            needed.add(p.sensitivity_head)  # type: ignore[arg-type]
        if p.task_overrides:
            needed.add(p.task_head)  # type: ignore[arg-type]
        self._needed = frozenset(needed)

        # the rules as plain values, in cascade order (all ``_cascade`` reads besides the tables)
        task_classes = schema.head(p.task_head).classes if p.task_overrides else ()
        self._overrides = [(name, task_classes.index(name), names.index(ov.min_tier), ov.min_probability)
                           for name, ov in p.task_overrides.items()]
        # (the outcome keys each rule writes are built here once: they are on the per-request path)
        self._floors = [(head, floor, p.min_confidence_actions.get(head, p.uncertainty_action) == "safe_decision",
                         ("top", head), ("low", head)) for head, floor in p.min_confidence.items()]
        self._band_safe = p.uncertainty_action == "safe_decision"
        self._unc_safe_to = names.index(p.safe_tier) if p.safe_action == "route" and p.safe_tier else -1
        self._escalate = _Route([-1] + [max(t, self._strong) for t in range(n_tiers)])

        def allowed(rule: _Restriction) -> list[int]:
            return [i for i, t in enumerate(p.tiers) if t.name in rule.allowed_tiers or t.trust in rule.allowed_trust]

        by_action = {"block": lambda r: [-1] * (n_tiers + 1), "escalate": lambda r: list(self._escalate.row),
                     "restrict": lambda r: _routes(allowed(r), n_tiers)}
        self._inputs = [(name, INPUT_RULES[name], rule.action, _Route(by_action[rule.action](rule)),
                         ("input", name), ("input_changed", name))
                        for name, rule in p.input_rules.items() if rule.action != "allow"]
        sens_classes = schema.head(p.sensitivity_head).classes if p.sensitivity_rules else ()
        self._gates = [(name, sens_classes.index(name),
                        p.sensitivity_thresholds[name] if rule.model_gates else None, rule.detectors_gate, ("sens", name))
                       for name, rule in p.sensitivity_rules.items() if rule.action != "allow"]
        # every combination of gates that fired (bit k: gate k) -> the tiers still allowed
        combos: list[list[int] | None] = []
        for combo in range(1 << len(self._gates)):
            ok: set[int] | None = None
            for k, (name, *_) in enumerate(self._gates):
                if combo >> k & 1:
                    rule = p.sensitivity_rules[name]
                    mine = set() if rule.action == "block" else set(allowed(rule))
                    ok = mine if ok is None else ok & mine
            combos.append(None if ok is None else sorted(ok))
        self._sens_route = _Route([x for ok in combos for x in _routes(ok, n_tiers)])
        self._sens_blocked = _Route([ok is not None and not ok for ok in combos])
        self._thresholds = self._threshold_summary()
        self._exploration = None if p.exploration is None else Exploration(share=p.exploration.share, mode=p.exploration.mode)

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
        return {k: dict(v) if type(v) is dict else v for k, v in self._thresholds.items()}  # values: numbers

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
        missing = sorted(x for x in self._needed if x not in arrays)
        if missing:
            raise ValueError(f"probabilities missing for head(s) {missing} the policy needs")
        valid = np.ones(n, dtype=bool)
        head_ok: dict[str, np.ndarray] = {}
        problem = [""] * n
        for name, a in arrays.items():
            finite = np.isfinite(a).all(axis=1)
            ok = finite & (a >= -1e-9).all(axis=1) & (np.abs(a.sum(axis=1) - 1.0) <= _SUM_TOL)
            for i in np.flatnonzero(valid & ~ok):
                problem[i] = f"head {name!r} probabilities are not a distribution"
            valid &= ok
            head_ok[name] = ok
        return arrays, valid, head_ok, problem, n

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

    # -- THE cascade -------------------------------------------------------------------------
    def _cascade(self, x: type[_ROW] | type[_BATCH], probs: Mapping[str, Any], flags: Any, found: Any) -> dict[Any, Any]:
        """The policy's rules, in order, on one prompt (``x=_ROW``: Python floats; ``flags`` and
        ``found``, the classes detectors found, are sets) or on many (``x=_BATCH``: numpy arrays;
        one set per prompt, or None). Returns the routed tier index (``final``, -1: blocked) and
        what each step did, for ``_compose`` to explain."""
        t = self._t
        p_pos = x.col(probs, self._tier_head, self._tier_pos)
        o: dict[Any, Any] = {"p_pos": p_pos}
        # 1. tier threshold
        tier = o["base"] = x.where(p_pos >= t, self._strong, self._cheap)
        # 2. task overrides raise the tier to a minimum (``task``: which override, -1 none)
        task: Any = -1
        if self._overrides:
            arg, top = x.argmax(probs, self._task_head), x.top(probs, self._task_head)
        for k, (_, j, min_idx, min_prob) in enumerate(self._overrides):
            hit = (arg == j) & (top >= min_prob) & (tier < min_idx)
            tier = x.where(hit, min_idx, tier)
            task = x.where(hit, k, task)
        o["task"] = task
        # 3. uncertainty: near the threshold, or a head under its floor: escalate, or the safe decision
        band = o["band"] = abs(p_pos - t) < self._band if self._band > 0 else False
        uncertain, safe = band, band if self._band_safe else False
        for head, floor, to_safe, top_key, low_key in self._floors:
            top = o[top_key] = x.top(probs, head)
            low = o[low_key] = top < floor
            uncertain = uncertain | low
            safe = safe | low if to_safe else safe
        before = tier
        tier = x.where(uncertain & x.not_(safe), x.take(self._escalate, tier + 1), tier)
        tier = x.where(safe, self._unc_safe_to, tier)
        o["uncertain"], o["unc_safe"], o["unc_changed"] = uncertain, safe, uncertain & (tier != before)
        # 4. input rules: what the model could not read (the runtime's flags)
        for _, flag, _, route, fired_key, changed_key in self._inputs:
            before = tier
            fired = o[fired_key] = x.has(flags, flag)
            tier = x.where(fired, x.take(route, tier + 1), tier)
            o[changed_key] = tier != before
        # 5. sensitivity gates, last: they override everything above
        combo: Any = 0
        for k, (name, j, threshold, det_gate, key) in enumerate(self._gates):
            hit = o[key] = (threshold is not None and x.col(probs, self._sens_head, j) >= threshold) | (
                det_gate and x.has(found, name))
            combo = combo + hit * (1 << k)
        before = tier
        tier = x.take(self._sens_route, combo * (len(self._names) + 1) + tier + 1)
        blocked = o["sens_block"] = x.take(self._sens_blocked, combo)
        o["sens_changed"] = (tier != before) | blocked
        o["final"] = tier
        return o

    # -- decisions ---------------------------------------------------------------------------
    def decide(self, probs: Mapping[str, Any], *, flags: Sequence[str] = (),
               detections: Sequence[Any] | None = None) -> Decision:
        """Decide for one prompt: ``probs`` maps head -> probabilities of shape (C,) (or (1, C)).
        ``detections``: the prompt's detector hits (``Hit`` objects or their ``to_dict()``)."""
        rows = self._one_row(probs)
        if rows is None:  # anything unusual (bad shapes, not a distribution): the batch path answers
            return self.decide_batch(probs, flags=[list(flags)],
                                     detections=None if detections is None else [detections])[0]
        return self._decide_row(rows, flags, detections)

    def _decide_row(self, rows: dict[str, list[float]], flags: Sequence[str], detections: Any) -> Decision:
        flags, hits = list(dict.fromkeys(flags)), _detection_dicts(detections)
        o = self._cascade(_ROW, rows, flags, {h["class"] for h in hits})
        probs_i = {name: dict(zip(classes, rows[name], strict=True)) for name, _, classes in self._heads if name in rows}
        return self._explore(self._compose(o, probs_i, flags, hits))

    def _explore(self, decision: Decision) -> Decision:
        """Exploration (issue 15, ``classifier.serving.exploration``) of plain threshold decisions."""
        if self._exploration is None:
            return decision
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
                return [self._decide_row(rows, flags[0], detections[0] if detections else None)]
        try:
            arrays, valid, head_ok, problem, n = self._validate_batch(probs)
        except (TypeError, ValueError) as exc:
            count = len(flags) if flags is not None else 1
            return [self.safe_decision(f"cannot read probabilities: {exc}", list(flags[i]) if flags else [])
                    for i in range(max(count, 1))]
        row_flags = [list(dict.fromkeys(flags[i])) if flags is not None and i < len(flags) else [] for i in range(n)]
        row_det = [_detection_dicts(detections[i]) if detections is not None and i < len(detections) else []
                   for i in range(n)]
        o = self._cascade(_BATCH, arrays, row_flags, [{h["class"] for h in d} for d in row_det])
        cols = {k: v.tolist() if isinstance(v, np.ndarray) else [v.item() if isinstance(v, np.generic) else v] * n
                for k, v in o.items()}
        lists = {name: (a.tolist(), head_ok[name].tolist()) for name, a in arrays.items()}
        classes = {name: c for name, _, c in self._heads}
        out: list[Decision] = []
        for i, values in enumerate(zip(*cols.values(), strict=True)):
            # a head whose row is not a distribution is left out (NaN is neither JSON nor evidence)
            probs_i = {name: dict(zip(classes[name], rows[i], strict=True)) for name, (rows, ok) in lists.items() if ok[i]}
            if not valid[i]:
                d = self.safe_decision(problem[i], row_flags[i] + [FLAG_FALLBACK], probs_i)
                d.detections = row_det[i]
                out.append(d)
                continue
            out.append(self._explore(self._compose(dict(zip(cols, values, strict=True)), probs_i, row_flags[i], row_det[i])))
        return out

    def tier_indices(self, probs: Mapping[str, Any], *,
                     flags: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """Routed tier index per row (into ``policy.tiers``), -1 where blocked. Vectorised.
        ``flags`` (the runtime's flags per row) feed the input rules; None: no flags."""
        arrays, valid, _, _, n = self._validate_batch(probs)
        rows = None if flags is None else [flags[i] if i < len(flags) else () for i in range(n)]
        tiers = np.array(self._cascade(_BATCH, arrays, rows, None)["final"], dtype=np.int64)
        tiers[~valid] = -1 if self.policy.safe_tier is None else self._names.index(self.policy.safe_tier)
        return tiers

    # -- explaining one row's outcome ----------------------------------------------------------
    def _compose(self, o: Mapping[Any, Any], probs_i: dict[str, dict[str, float]], flags: list[str],
                 detections: list[dict[str, Any]]) -> Decision:
        """The Decision (rule, reason, flags) from one row's outcome of ``_cascade``."""
        p = self.policy
        t = self._t
        p_pos, final = o["p_pos"], o["final"]
        cmp = ">=" if p_pos >= t else "<"
        reasons = [f"p({self._tier_positive})={p_pos:.3f} {cmp} threshold {t:g} -> {self._names[o['base']]}"]
        rule = RULE_TIER
        if o["task"] >= 0:
            name = self._overrides[o["task"]][0]
            reasons.append(f"task {name!r} requires at least {p.task_overrides[name].min_tier}")
            rule = f"{RULE_TASK}:{name}"
        if o["uncertain"]:
            why = [f"p({self._tier_positive})={p_pos:.3f} within {self._band:g} of threshold {t:g}"] if o["band"] else []
            why += [f"head {head!r} top probability {o[('top', head)]:.3f} below floor {floor:g}"
                    for head, floor, _, _, low_key in self._floors if o[low_key]]
            _add_flag(flags, FLAG_UNCERTAIN)
            if o["unc_safe"]:
                reasons.append(f"uncertain ({'; '.join(why)}) -> safe decision")
                rule = f"{RULE_UNCERTAIN}:{RULE_SAFE}"
            else:
                reasons.append(f"uncertain ({'; '.join(why)}) -> escalate to at least {p.strong_tier}")
                if o["unc_changed"]:
                    rule = f"{RULE_UNCERTAIN}:escalate"
        for name, _, action, _, fired_key, changed_key in self._inputs:
            if o[fired_key]:
                changed = o[changed_key]
                what = {"unread": "text that will be sent was not read (truncated)",
                        "long_request": "longer than one model window (long_request)"}[name]
                reasons.append(f"input {name}: {what} -> {action}" + ("" if changed else " (tier already allowed)"))
                if changed:
                    rule = f"{RULE_INPUT}:{name}:{action}"
        detected = [gate[0] for gate in self._gates if o[gate[4]]]
        if detected:
            shown, by_detector = self._evidence(detected, probs_i, detections)
            if o["sens_block"]:
                blocking = [c for c in detected if p.sensitivity_rules[c].action == "block"]
                if blocking:
                    reasons.append(f"sensitivity {shown}: blocked by rule for {', '.join(blocking)}")
                    rule = f"{RULE_SENSITIVITY}:{blocking[0]}:block" + by_detector.get(blocking[0], "")
                else:
                    reasons.append(f"sensitivity {shown}: no tier satisfies every restriction -> blocked")
                    rule = f"{RULE_SENSITIVITY}:{'+'.join(detected)}:block"
            elif o["sens_changed"]:
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
            model = self._models[final]
        reasons.append("final: blocked" if blocked else f"final: {tier_name} ({model})")
        return Decision(
            tier=tier_name, model=model, rule=rule, reason="; ".join(reasons),
            probabilities=probs_i, thresholds=self.thresholds, policy_version=p.version,
            flags=flags, blocked=blocked, detections=list(detections),
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
