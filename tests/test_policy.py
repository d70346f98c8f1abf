"""Routing policy: validation names the field at fault; the engine's rules act as documented."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from classifier.data.schema import LabelSchema
from classifier.errors import PolicyError, TierwiseError
from classifier.serving.policy import Decision, Policy, PolicyEngine

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "serving" / "policy.example.yaml"


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture()
def schema() -> LabelSchema:
    return LabelSchema.default()


@pytest.fixture()
def engine(raw, schema) -> PolicyEngine:
    return PolicyEngine(Policy.from_dict(raw), schema)


def probs(p_frontier: float, *, task: str = "chat_writing", sens: str = "none", sens_p: float = 0.9) -> dict:
    """Probabilities for one prompt: confident task and sensitivity unless told otherwise."""
    tasks = ["chat_writing", "code", "math_reasoning", "knowledge"]
    t = np.full(4, 0.1 / 3)
    t[tasks.index(task)] = 0.9
    classes = ["none", "pii", "credential"]
    s = np.full(3, (1 - sens_p) / 2)
    s[classes.index(sens)] = sens_p
    return {"tier": np.array([1 - p_frontier, p_frontier]), "task": t, "sensitivity": s}


# -- loading ---------------------------------------------------------------------------------------
def test_example_policy_loads_and_matches_the_brief(schema):
    policy = Policy.from_yaml(EXAMPLE)
    PolicyEngine(policy, schema)
    assert policy.owner and policy.version and policy.approval.ticket
    assert policy.tier_names == ["cheap", "frontier", "self_hosted"]
    cheap, frontier, hosted = policy.tiers
    assert (cheap.model, cheap.trust, cheap.input_per_million, cheap.output_per_million) == (
        "mistralai/Mixtral-8x7B-Instruct-v0.1", "external", 0.6, 0.6)
    assert (frontier.model, frontier.input_per_million, frontier.output_per_million) == ("gpt-4-1106-preview", 10.0, 30.0)
    assert hosted.trust == "self_hosted"
    assert policy.sensitivity_rules["credential"].action == "block"
    assert policy.sensitivity_rules["pii"].allowed_trust == ("self_hosted",)


def test_yaml_round_trip_and_with_thresholds(tmp_path, raw):
    policy = Policy.from_dict(raw)
    updated = policy.with_thresholds(tier=0.37, sensitivity={"pii": 0.2}, provenance={"tier": {"alpha": 0.05}},
                                     version="v2")
    path = tmp_path / "policy.yaml"
    updated.to_yaml(path, header="fitted\nby a test")
    again = Policy.from_yaml(path)
    assert path.read_text().startswith("# fitted\n# by a test\n")
    assert again.tier_threshold == pytest.approx(0.37)
    assert again.sensitivity_thresholds == {"pii": 0.2, "credential": 0.5}
    assert again.threshold_provenance["tier"] == {"alpha": 0.05}
    assert again.version == "v2"
    assert policy.tier_threshold == 0.5  # the original is unchanged


def test_a_field_edited_on_the_typed_model_is_saved_and_read_back(tmp_path, raw):
    policy = Policy.from_yaml(EXAMPLE)
    policy.thresholds.tier = 0.42
    policy.uncertainty.tier_band = 0.1
    policy.tiers[1].price.input_per_million = 12.5
    policy.sensitivity["pii"].allowed_trust = ("self_hosted", "internal")
    path = tmp_path / "edited.yaml"
    policy.to_yaml(path)
    saved = yaml.safe_load(path.read_text())
    assert saved["thresholds"]["tier"] == 0.42 and saved["uncertainty"]["tier_band"] == 0.1
    assert saved["tiers"][1]["price"]["input_per_million"] == 12.5
    assert saved["sensitivity"]["pii"]["allowed_trust"] == ["self_hosted", "internal"]
    again = Policy.from_yaml(path)
    assert (again.tier_threshold, again.tier_band, again.tier("frontier").input_per_million) == (0.42, 0.1, 12.5)
    assert again == policy
    # an edit of a section the document left out is saved too; keys never written stay out
    bare = {k: v for k, v in raw.items() if k not in ("uncertainty", "input", "routing")}
    lean = Policy.from_dict(bare)
    lean.uncertainty.action = "safe_decision"
    assert lean.to_dict()["uncertainty"] == {"action": "safe_decision"} and "routing" not in lean.to_dict()
    # unedited, the model writes the document it read (the content digest of a signed policy holds)
    assert Policy.from_dict(raw).to_dict() == raw


def test_edits_are_validated_with_the_field_named(raw):
    policy = Policy.from_dict(raw)
    with pytest.raises(PolicyError, match=r"^tier: must be a number >= 0 and <= 1, got 1.5$"):
        policy.thresholds.tier = 1.5
    assert policy.thresholds.tier == 0.5
    policy.routing.cheap_tier = "nano"  # a cross-field rule: caught when the policy is saved
    with pytest.raises(PolicyError, match=r"routing\.cheap_tier: unknown tier 'nano'"):
        policy.to_yaml()


def test_committed_json_schema_is_the_generated_one():
    from classifier.serving.policy_cmd import schema_text

    committed = ROOT / "classifier" / "serving" / "policy.schema.json"
    assert committed.read_text(encoding="utf-8") == schema_text(), (
        "policy.schema.json is stale: run `tierwise policy schema --out classifier/serving/policy.schema.json`")
    assert (ROOT / "serving" / "policy.schema.json").resolve() == committed.resolve()
    assert EXAMPLE.read_text(encoding="utf-8").startswith("# yaml-language-server: $schema=policy.schema.json\n")


def test_json_schema_accepts_the_example_and_names_what_the_model_refuses(raw):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "serving" / "policy.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(raw)) == []
    cross_field = ("unknown tier", "must come after", "must be omitted")  # the model's job, not the schema's
    for path, value, message in MALFORMED:
        data = copy.deepcopy(raw)
        _set(path, value)(data)
        if message is None:
            assert list(validator.iter_errors(data)) == [], path
        elif value is not ... and ("must be" in message or "unknown key" in message) and not any(
                c in message for c in cross_field):
            assert list(validator.iter_errors(data)), f"the schema accepts {path}={value!r}"


def test_cli_policy_check_and_schema(tmp_path, capsys):
    from classifier.cli import main

    assert main(["policy", "check", str(EXAMPLE)]) == 0
    assert "valid policy version 2024.06-1" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("trust: external", "trust: public", 1))
    assert main(["policy", "check", str(bad)]) == 2
    assert "tiers.cheap.trust: must be one of" in capsys.readouterr().err
    LabelSchema.default().to_yaml(tmp_path / "schema.yaml")  # a bundle's label schema: the heads it names exist
    assert main(["policy", "check", str(EXAMPLE), "--schema-of", str(tmp_path)]) == 0
    odd = tmp_path / "odd.yaml"
    odd.write_text(EXAMPLE.read_text().replace("tier_head: tier ", "tier_head: difficulty ", 1))
    assert main(["policy", "check", str(odd)]) == 0  # a valid policy file...
    assert main(["policy", "check", str(odd), "--schema-of", str(tmp_path)]) == 2  # ...that names no head of the schema
    assert "routing.tier_head: head 'difficulty' is not in the label schema" in capsys.readouterr().err
    assert main(["policy", "schema", "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "tierwise routing policy"


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        Policy.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("owner: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        Policy.from_yaml(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("owner: x\n")
    with pytest.raises(PolicyError, match=r"wrong\.yaml: version: is required"):
        Policy.from_yaml(wrong)


def _set(path: str, value):
    """A mutator that sets (or, with value ``...``, deletes) the dotted path in the raw policy."""
    def apply(d: dict) -> None:
        keys = path.split(".")
        node = d
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return apply


MALFORMED = [
    ("owner", ..., "owner: is required"),
    ("owner", "", "owner: must be a non-empty string"),
    ("version", None, "version: must be a non-empty string"),
    ("approval", "yes", "approval: must be a mapping"),
    ("approval.ticket", ..., "approval.ticket: is required"),
    ("approval.approved_by", [], "approval.approved_by: must be a non-empty string"),
    ("approval.signed", "x", "approval: unknown key(s) ['signed']"),
    ("surprise", 1, "policy: unknown key(s) ['surprise']"),
    ("tiers", [], "tiers: must be a list of at least two tiers"),
    ("tiers.1.price.input_per_million", -1, "tiers.frontier.price.input_per_million: must be a number >= 0"),
    ("tiers.1.price.output_per_million", "ten", "tiers.frontier.price.output_per_million: must be a number >= 0"),
    ("tiers.0.price", ..., "tiers.cheap.price: is required"),
    ("tiers.0.trust", "public", "tiers.cheap.trust: must be one of ['external', 'internal', 'self_hosted']"),
    ("tiers.0.model", 3.5, None),  # numbers are accepted as names (YAML reads versions as numbers)
    ("tiers.2.name", "cheap", "tiers.cheap.name: duplicate tier name 'cheap'"),
    ("routing.cheap_tier", "nano", "routing.cheap_tier: unknown tier 'nano'"),
    ("routing.strong_tier", "cheap", "routing.strong_tier: 'cheap' must come after cheap_tier"),
    ("sensitivity.credential.action", "shred", "sensitivity.credential.action: must be one of ['block', 'restrict', 'allow']"),
    ("sensitivity.pii.allowed_trust", ["cloud"], "sensitivity.pii.allowed_trust[0]: must be one of"),
    ("sensitivity.pii.allowed_trust", ..., "sensitivity.pii: action 'restrict' needs 'allowed_tiers' and/or 'allowed_trust'"),
    ("sensitivity.pii.allowed_trust", ["internal"], "sensitivity.pii: no tier satisfies"),
    ("sensitivity.credential.allowed_tiers", ["self_hosted"], "sensitivity.credential: allowed_tiers/allowed_trust only apply"),
    ("task_overrides.code.min_tier", "huge", "task_overrides.code.min_tier: unknown tier 'huge'"),
    ("task_overrides.code.min_probability", 1.5, "task_overrides.code.min_probability: must be a number >= 0 and <= 1"),
    ("thresholds.tier", 1.2, "thresholds.tier: must be a number >= 0 and <= 1"),
    ("thresholds.tier", ..., "thresholds.tier: is required"),
    ("thresholds.sensitivity.pii", 0, "thresholds.sensitivity.pii: must be a number > 0 and <= 1"),
    ("thresholds.sensitivity.credential", ..., "thresholds.sensitivity.credential: is required"),
    ("uncertainty.tier_band", 0.7, "uncertainty.tier_band: must be a number >= 0 and <= 0.5"),
    ("uncertainty.action", "panic", "uncertainty.action: must be one of ['escalate', 'safe_decision']"),
    ("uncertainty.min_confidence.sensitivity", {"floor": 2}, "uncertainty.min_confidence.sensitivity.floor: must be a number"),
    ("safe_decision.action", "ignore", "safe_decision.action: must be one of ['route', 'block']"),
    ("safe_decision.tier", ..., "safe_decision.tier: is required when action is 'route'"),
    ("safe_decision.tier", "mars", "safe_decision.tier: unknown tier 'mars'"),
]


@pytest.mark.parametrize(("path", "value", "message"), MALFORMED, ids=[m[0] + "=" + repr(m[1])[:20] for m in MALFORMED])
def test_malformed_field_is_named(raw, path, value, message):
    data = copy.deepcopy(raw)
    _set(path, value)(data)
    if message is None:
        Policy.from_dict(data)
        return
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(data)
    assert message in str(info.value)
    assert isinstance(info.value, TierwiseError) and info.value.http_status == 400


SCHEMA_MISMATCH = [
    ("routing.tier_head", "difficulty", "routing.tier_head: head 'difficulty' is not in the label schema"),
    ("task_overrides.poetry", {"min_tier": "frontier"}, "task_overrides.poetry: not a class of head 'task'"),
    ("sensitivity.phi", {"action": "block"}, "sensitivity.phi: not a class of head 'sensitivity'"),
    ("sensitivity.none", {"action": "block"}, "sensitivity.none: is the head's benign (negative) class"),
    ("uncertainty.min_confidence.mood", 0.5, "uncertainty.min_confidence.mood: head 'mood' is not in the label schema"),
]


@pytest.mark.parametrize(("path", "value", "message"), SCHEMA_MISMATCH, ids=[m[0] for m in SCHEMA_MISMATCH])
def test_policy_checked_against_schema(raw, schema, path, value, message):
    data = copy.deepcopy(raw)
    _set(path, value)(data)
    if path.startswith("sensitivity."):
        data["thresholds"]["sensitivity"][path.split(".")[1]] = 0.5
    policy = Policy.from_dict(data)
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PolicyEngine(policy, schema)


# -- decisions -------------------------------------------------------------------------------------
def test_tier_threshold_routes_cheap_and_frontier(engine):
    low = engine.decide(probs(0.1))
    high = engine.decide(probs(0.9))
    assert (low.tier, low.model, low.rule, low.blocked) == ("cheap", "mistralai/Mixtral-8x7B-Instruct-v0.1", "tier_threshold", False)
    assert (high.tier, high.model, high.rule) == ("frontier", "gpt-4-1106-preview", "tier_threshold")
    assert low.flags == [] and low.policy_version == engine.policy.version
    assert low.probabilities["tier"] == {"cheap": pytest.approx(0.9), "frontier": pytest.approx(0.1)}
    assert low.thresholds["tier"] == {"frontier": 0.5}
    assert "0.100 < threshold 0.5" in low.reason
    json.dumps(low.to_dict())  # serialisable as is


@pytest.mark.parametrize("p_frontier", [0.02, 0.3, 0.6, 0.99])
def test_credential_blocks_whatever_the_tier(engine, p_frontier):
    d = engine.decide(probs(p_frontier, sens="credential"))
    assert d.blocked and d.tier is None and d.model is None
    assert d.rule == "sensitivity:credential:block" and "blocked" in d.flags


@pytest.mark.parametrize(("p_frontier", "task"), [(0.02, "chat_writing"), (0.9, "chat_writing"), (0.1, "code")])
def test_pii_overrides_tier_to_self_hosted(engine, p_frontier, task):
    d = engine.decide(probs(p_frontier, sens="pii", task=task))
    assert (d.tier, d.blocked) == ("self_hosted", False)
    assert d.rule == "sensitivity:pii:restrict"
    assert "restricted -> self_hosted" in d.reason


def test_sensitivity_threshold_is_per_class(raw, schema):
    data = copy.deepcopy(raw)
    data["thresholds"]["sensitivity"]["pii"] = 0.05  # recall-targeted thresholds are low
    engine = PolicyEngine(Policy.from_dict(data), schema)
    p = probs(0.1, sens="none", sens_p=0.88)  # pii 0.06, credential 0.06
    assert engine.decide(p).tier == "self_hosted"  # pii reaches its 0.05
    assert not engine.decide(p).blocked  # credential 0.06 < its 0.5


def test_conflicting_restrictions_block(raw, schema):
    data = copy.deepcopy(raw)
    data["sensitivity"]["credential"] = {"action": "restrict", "allowed_tiers": ["frontier"]}
    engine = PolicyEngine(Policy.from_dict(data), schema)
    s = np.array([0.0, 0.5, 0.5])  # pii and credential both detected, allowed sets disjoint
    d = engine.decide({"tier": np.array([0.9, 0.1]), "task": probs(0.1)["task"], "sensitivity": s})
    assert d.blocked and "no tier satisfies every restriction" in d.reason


def test_uncertain_tier_probability_escalates(engine):
    d = engine.decide(probs(0.47))  # below the 0.5 threshold but within the 0.05 band
    assert d.tier == "frontier" and "uncertain" in d.flags
    assert d.rule == "uncertainty:escalate"
    assert engine.decide(probs(0.44)).tier == "cheap"  # outside the band: stays cheap
    above = engine.decide(probs(0.53))  # already frontier: flagged, rule stays the threshold
    assert above.tier == "frontier" and "uncertain" in above.flags and above.rule == "tier_threshold"


def test_low_confidence_head_escalates(raw, schema):
    data = copy.deepcopy(raw)
    data["uncertainty"]["min_confidence"] = {"task": 0.6}
    engine = PolicyEngine(Policy.from_dict(data), schema)
    p = probs(0.1)
    p["task"] = np.array([0.4, 0.3, 0.2, 0.1])
    d = engine.decide(p)
    assert d.tier == "frontier" and "uncertain" in d.flags and "head 'task' top probability 0.400" in d.reason


def test_low_sensitivity_confidence_takes_safe_decision(engine):
    p = probs(0.1)
    p["sensitivity"] = np.array([0.45, 0.35, 0.2])  # example policy: floor 0.5, action safe_decision
    d = engine.decide(p)
    assert d.tier == "self_hosted" and d.rule == "uncertainty:safe_decision" and "uncertain" in d.flags


def test_task_override_raises_the_tier(engine):
    d = engine.decide(probs(0.1, task="code"))
    assert d.tier == "frontier" and d.rule == "task_override:code"


@pytest.mark.parametrize("bad", [
    {"tier": np.array([np.nan, 0.5])},
    {"tier": np.array([0.7, 0.7])},
    {"tier": np.array([1.2, -0.2])},
])
def test_unreadable_probabilities_get_the_safe_decision(engine, bad):
    p = probs(0.1)
    p.update(bad)
    d = engine.decide(p, flags=["truncated"])
    assert d.rule == "safe_decision" and d.tier == "self_hosted"
    assert d.flags[:1] == ["truncated"] and "fallback" in d.flags


def test_missing_head_or_wrong_shape_gets_the_safe_decision(engine):
    p = probs(0.1)
    del p["sensitivity"]
    assert engine.decide(p).rule == "safe_decision"
    p = probs(0.1)
    p["tier"] = np.array([0.2, 0.3, 0.5])
    d = engine.decide(p)
    assert d.rule == "safe_decision" and "shape" in d.reason


def test_safe_decision_block_mode(raw, schema):
    data = copy.deepcopy(raw)
    data["safe_decision"] = {"action": "block"}
    engine = PolicyEngine(Policy.from_dict(data), schema)
    d = engine.safe_decision("empty prompt", ["invalid_input"])
    assert d.blocked and d.tier is None and d.flags == ["invalid_input", "fallback", "blocked"]
    assert isinstance(d, Decision) and d.to_dict()["blocked"] is True


def test_decide_batch_matches_decide_and_tier_indices(engine):
    rng = np.random.default_rng(0)
    n = 300
    batch = {
        "tier": rng.dirichlet([1, 1], n),
        "task": rng.dirichlet([1, 1, 1, 1], n),
        "sensitivity": rng.dirichlet([3, 1, 1], n),
    }
    batch["tier"][5] = np.nan  # one unreadable row
    flags = [["truncated"] if i % 7 == 0 else [] for i in range(n)]
    decisions = engine.decide_batch(batch, flags=flags)
    assert len(decisions) == n
    singles = [engine.decide({h: a[i] for h, a in batch.items()}, flags=["truncated"] if i % 7 == 0 else [])
               for i in range(n)]
    assert [d.to_dict() for d in decisions] == [d.to_dict() for d in singles]
    idx = engine.tier_indices(batch, flags=flags)
    names = engine.policy.tier_names
    assert [names[i] if i >= 0 else None for i in idx] == [d.tier for d in decisions]
    # every rule family fired somewhere in a random batch
    rules = {d.rule.split(":")[0] for d in decisions}
    assert {"tier_threshold", "sensitivity", "safe_decision", "uncertainty"} <= rules
