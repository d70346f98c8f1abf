"""Detectors in the router, the policy and the bundle (issue 14): a key past the model window is
blocked by its detector rule with offsets and no secret in the decision or audit log; policy
``gate`` semantics and validation; the rules file hashed by the manifest; older bundles."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifier.cli import main as cli_main
from classifier.data.schema import LabelSchema
from classifier.errors import BundleError, PolicyError
from classifier.serving import bundle as bundle_io
from classifier.serving.audit import AuditLog
from classifier.serving.detectors import DETECTORS_FILE, Hit, build_rules, rules_bytes
from classifier.serving.policy import Policy, PolicyEngine
from classifier.serving.runtime import Router

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "serving" / "policy.example.yaml"
AWS = "AKIAQ3EGRUZ4TWLN6YJ5"  # fabricated


@pytest.fixture(scope="module")
def rules(shared_data: Path) -> bytes:
    return rules_bytes(build_rules(shared_data / "gitleaks" / "gitleaks.toml"))


@pytest.fixture()
def bundle_with_rules(tiny_bundle: Path, tmp_path: Path, rules: bytes) -> Path:
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    bundle_io.update_bundle_file(out, DETECTORS_FILE, rules)
    return out


def _without_rules(src: Path, dst: Path) -> Path:
    """``src`` rewritten as an older bundle: same files and metadata, no detectors.json."""
    manifest = bundle_io.verify_bundle(src)
    files = {n: src / n for n in manifest.files if n != DETECTORS_FILE}
    meta = {k: v for k, v in manifest.to_dict().items() if k not in ("files", "format", "format_version")}
    bundle_io.write_bundle_files(dst, files, **meta)
    return dst


def test_key_past_the_window_is_blocked_by_its_detector(bundle_with_rules: Path, tmp_path: Path) -> None:
    filler = "Please summarise the following meeting notes for the team. " * 80
    text = f"{filler}\nexport AWS_ACCESS_KEY_ID={AWS}\n"
    start = text.index(AWS)
    with Router.load(bundle_with_rules) as router:
        assert len(text) > router.input_limits.max_chars  # far past what the model reads
        d = router.route(text)
        assert d.blocked and d.tier is None
        assert "long_request" in d.flags  # read in windows now; the detector gates it all the same
        assert d.rule == "sensitivity:credential:block:detector:aws-access-token"
        assert "detector:aws-access-token" in d.reason
        hit = next(h for h in d.detections if h["rule"] == "detector:aws-access-token")
        assert hit == {"rule": "detector:aws-access-token", "class": "credential", "start": start, "end": start + len(AWS)}
        doc = json.dumps(d.to_dict())
        assert AWS not in doc and AWS[4:] not in doc
        log = AuditLog(tmp_path / "audit.jsonl")
        entry = log.append(d, request_id="r1", prompt=text)
        assert entry["detections"] == d.detections
        assert AWS not in (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
        # an ordinary prompt gets no detections
        ok = router.route("Write code to parse an XML document using SWI Prolog")
        assert ok.detections == [] and "detector" not in ok.rule
        info = router.info()["detectors"]
        assert info["enabled"] and info["credential_rules"] > 200


def test_gate_model_ignores_detectors_in_the_router(bundle_with_rules: Path) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    raw["sensitivity"]["credential"]["gate"] = "model"
    raw["thresholds"]["sensitivity"]["credential"] = 0.999999
    with Router.load(bundle_with_rules, policy=raw) as router:
        d = router.route(f"key {AWS}")
        assert not d.blocked and d.detections and d.detections[0]["rule"] == "detector:aws-access-token"


def test_older_bundle_without_rules_loads_with_detectors_off(tiny_bundle: Path, tmp_path: Path) -> None:
    old = _without_rules(tiny_bundle, tmp_path / "old")
    with Router.load(old) as router:
        info = router.info()["detectors"]
        assert info["enabled"] is False and "detectors install" in info["reason"]
        d = router.route(f"key {AWS}")
        assert d.detections == []


@pytest.mark.slow
def test_tampered_rules_are_refused_and_install_rehashes(bundle_with_rules: Path, tmp_path: Path,
                                                         shared_data: Path, capsys) -> None:
    path = bundle_with_rules / DETECTORS_FILE
    doc = json.loads(path.read_bytes())
    doc["credential"]["rules"] = [r for r in doc["credential"]["rules"] if r["id"] != "aws-access-token"]
    path.write_bytes(rules_bytes(doc))  # someone removes a rule by hand
    with pytest.raises(BundleError, match="detectors.json"):
        Router.load(bundle_with_rules)
    # the CLI refuses to re-hash a tampered bundle, then installs fresh rules into a good one
    assert cli_main(["detectors", "install", str(bundle_with_rules), "--gitleaks",
                     str(shared_data / "gitleaks" / "gitleaks.toml")]) == 2
    good = tmp_path / "good"
    shutil.copytree(bundle_with_rules, good)
    path = good / DETECTORS_FILE
    manifest = json.loads((good / bundle_io.MANIFEST_FILE).read_text())
    manifest["files"][DETECTORS_FILE] = bundle_io.sha256_file(path)  # make it consistent again
    if "sizes" in manifest:
        manifest["sizes"][DETECTORS_FILE] = path.stat().st_size
    (good / bundle_io.MANIFEST_FILE).write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cli_main(["detectors", "install", str(good), "--gitleaks",
                     str(shared_data / "gitleaks" / "gitleaks.toml")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["credential_rules"] > 200 and out["replaced"] == manifest["files"][DETECTORS_FILE]
    assert bundle_io.verify_bundle(good).files[DETECTORS_FILE] == out["sha256"] != out["replaced"]
    with Router.load(good) as router:
        assert router.route(f"key {AWS}").blocked


# -- policy gate -------------------------------------------------------------------------------------
@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def probs(sens: tuple[float, float, float]) -> dict[str, np.ndarray]:
    return {"tier": np.array([0.9, 0.1]), "task": np.array([0.7, 0.1, 0.1, 0.1]), "sensitivity": np.array(sens)}


CRED_HIT = Hit("aws-access-token", "credential", 5, 25)
PII_HIT = Hit("us-ssn", "pii", 30, 41)


def test_gate_validation_names_the_field(raw: dict) -> None:
    bad = copy.deepcopy(raw)
    bad["sensitivity"]["pii"]["gate"] = "both"
    with pytest.raises(PolicyError, match=r"sensitivity\.pii\.gate: must be one of \['either', 'model', 'detectors'\]"):
        Policy.from_dict(bad)
    # a detectors-only class needs no threshold; a model-gated one still does
    ok = copy.deepcopy(raw)
    ok["sensitivity"]["credential"]["gate"] = "detectors"
    del ok["thresholds"]["sensitivity"]["credential"]
    assert Policy.from_dict(ok).sensitivity_rules["credential"].gate == "detectors"
    ok["sensitivity"]["credential"]["gate"] = "either"
    with pytest.raises(PolicyError, match=r"thresholds\.sensitivity\.credential: is required"):
        Policy.from_dict(ok)


@pytest.mark.parametrize(("gate", "model_p", "hit", "blocked"), [
    ("either", 0.0, True, True), ("either", 0.9, False, True), ("either", 0.0, False, False),
    ("model", 0.0, True, False), ("model", 0.9, False, True),
    ("detectors", 0.9, False, False), ("detectors", 0.0, True, True),
])
def test_gate_semantics(raw: dict, gate: str, model_p: float, hit: bool, blocked: bool) -> None:
    raw["sensitivity"]["credential"]["gate"] = gate
    engine = PolicyEngine(Policy.from_dict(raw), LabelSchema.default())
    p = probs((1.0 - model_p, 0.0, model_p))
    dets = [CRED_HIT] if hit else []
    d = engine.decide(p, detections=dets)
    batch = engine.decide_batch({h: np.stack([a, a]) for h, a in p.items()}, detections=[dets, dets])
    assert d.blocked is blocked and all(b.to_dict() == d.to_dict() for b in batch)
    assert d.detections == [h.to_dict() for h in dets]
    if blocked and hit and gate != "model":
        assert d.rule.endswith(":detector:aws-access-token") and "at [5, 25)" in d.reason


def test_pii_detector_restricts_to_self_hosted(raw: dict) -> None:
    engine = PolicyEngine(Policy.from_dict(raw), LabelSchema.default())
    d = engine.decide(probs((0.98, 0.01, 0.01)), detections=[PII_HIT])
    assert d.tier == "self_hosted" and d.rule == "sensitivity:pii:restrict:detector:us-ssn"


@pytest.mark.slow  # hypothesis property
def test_decide_and_decide_batch_agree_with_detections(raw: dict) -> None:
    schema = LabelSchema.default()
    hits = st.lists(st.sampled_from([CRED_HIT, PII_HIT]), max_size=2)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(["either", "model", "detectors"]), st.sampled_from(["either", "model", "detectors"]),
           st.lists(st.tuples(st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3), hits), min_size=2, max_size=8),
           st.floats(0.01, 1.0))
    def prop(cred_gate: str, pii_gate: str, rows, threshold: float) -> None:
        data = copy.deepcopy(raw)
        data["sensitivity"]["credential"]["gate"] = cred_gate
        data["sensitivity"]["pii"]["gate"] = pii_gate
        data["thresholds"]["sensitivity"] = {"pii": threshold, "credential": threshold}
        engine = PolicyEngine(Policy.from_dict(data), schema)
        sens = np.array([np.array(r) / sum(r) if sum(r) > 0 else np.full(3, 1 / 3) for r, _ in rows])
        n = len(rows)
        batch = {"tier": np.tile([0.2, 0.8], (n, 1)), "task": np.tile([0.7, 0.1, 0.1, 0.1], (n, 1)), "sensitivity": sens}
        dets = [h for _, h in rows]
        vectorised = [d.to_dict() for d in engine.decide_batch(batch, detections=dets)]
        singles = [engine.decide({h: a[i] for h, a in batch.items()}, detections=dets[i]).to_dict() for i in range(n)]
        assert singles == vectorised

    prop()


def test_repeated_system_prompt_is_scanned_once_and_hits_index_the_request(bundle_with_rules: Path) -> None:
    system = "You are a support agent for an airline. Follow the booking rules below. " * 20
    system += f"\nDeploy with AWS_ACCESS_KEY_ID={AWS}\n"  # a key the operator left in the prompt
    with Router.load(bundle_with_rules) as router:
        spans = []
        for i in range(3):  # an agent: the same system prompt, a new user turn each call
            body = {"messages": [{"role": "system", "content": system},
                                 {"role": "user", "content": f"Change my flight number {i} to Friday."}]}
            d = router.route(body)
            full = router.parse(body)[0].full_text
            spans.append([(h["rule"], h["start"], h["end"]) for h in d.detections])
            assert [full[h["start"]:h["end"]] for h in d.detections] == [AWS]
        assert spans[0] == spans[1] == spans[2]
        assert router._scan_piece.cache_info().hits == 2  # scanned once, reused twice
        # a key in the user turn is found at its offset in the whole request, after the system prompt
        body = {"messages": [{"role": "system", "content": system},
                             {"role": "user", "content": f"my key is {AWS}, is it leaked?"}]}
        full = router.parse(body)[0].full_text
        found = sorted(h["start"] for h in router.route(body).detections)
        assert found == [full.index(AWS), full.rindex(AWS)] and found[0] < found[1]
        router.detectors = None  # new detectors (here: none) never see the old ones' cache
        assert router.route(body).detections == []


def test_row_cache_gives_the_logits_of_a_fresh_run(bundle_with_rules: Path) -> None:
    system = "Answer in the style of a patient teacher and cite the syllabus section. " * 60
    with Router.load(bundle_with_rules) as router:
        bodies = [{"messages": [{"role": "system", "content": system},
                                {"role": "user", "content": f"Explain topic {i} of the syllabus."}]} for i in range(3)]
        assert router._row_cache is not None
        cached = [router.logits(b) for b in bodies]
        assert len(router._row_cache._items) > 2  # the system prompt's windows, and each request's own
        router._row_cache = None
        fresh = [router.logits(b) for b in bodies]
        for c, f in zip(cached, fresh, strict=True):
            for h in router.head_names:
                np.testing.assert_allclose(c[h], f[h], atol=1e-5)


@pytest.mark.slow
def test_caches_give_the_same_decisions_under_concurrent_calls(bundle_with_rules: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    system = f"You are a travel agent. Book flights and hotels on request. AWS_ACCESS_KEY_ID={AWS} " * 15
    bodies = [{"messages": [{"role": "system", "content": system},
                            {"role": "user", "content": f"Find me a hotel in city number {i % 7} for {i} nights."}]}
              for i in range(40)]
    with Router.load(bundle_with_rules) as serial_router:
        serial_router._row_cache = None  # the reference: nothing reused
        serial_router.detectors = serial_router.detectors  # and an empty scan cache it never uses twice
        want = [serial_router.route(b).to_dict() for b in bodies]
    with Router.load(bundle_with_rules) as router, ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda b: router.route(b).to_dict(), bodies * 2))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("latency_ms", "decided_at", "request_id")}  # noqa: E731
    assert [strip(d) for d in got] == [strip(d) for d in want * 2]
