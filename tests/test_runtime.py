"""Bundle verification, the torch-free runtime, and ``tierwise route`` (single and file mode)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT

from classifier.errors import BundleError, ConfigError, InputError
from classifier.serving import bundle as bundle_io
from classifier.serving.runtime import Router

TEXTS = [
    "hi",
    "write a python function to sort a list",
    "my name is john smith, call me at 555 0100",
    "explain why the sum of two odd numbers is even " * 3,
    "aws key AKIA1234 secret token",
]


def assert_same_decision(a: dict, b: dict) -> None:
    """Equal decisions: same routing, probabilities equal up to float noise (padding differs)."""
    assert {k: v for k, v in a.items() if k != "probabilities"} == {k: v for k, v in b.items() if k != "probabilities"}
    assert a["probabilities"].keys() == b["probabilities"].keys()
    for head, probs in a["probabilities"].items():
        assert probs == pytest.approx(b["probabilities"][head], abs=1e-5)


@pytest.fixture()
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "b"
    shutil.copytree(tiny_bundle, dest)
    return dest


@pytest.fixture(scope="module")
def router(tiny_bundle: Path) -> Router:
    with Router.load(tiny_bundle) as r:
        yield r


# -- bundle verification --------------------------------------------------------------------------
def test_verified_bundle_loads(tiny_bundle: Path) -> None:
    manifest = bundle_io.verify_bundle(tiny_bundle)
    assert manifest.kind == "teacher" and manifest.input_limits.max_length == 64


def test_tampered_model_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'model.onnx' does not match its manifest hash"):
        bundle_io.verify_bundle(bundle_copy)
    with pytest.raises(BundleError, match="model.onnx"):
        Router.load(bundle_copy)


def test_missing_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"incomplete bundle, file 'tokenizer.json'"):
        Router.load(bundle_copy)


def test_unlisted_file_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "extra.txt").write_text("smuggled")
    with pytest.raises(BundleError, match=r"\['extra.txt'\] are not in the manifest"):
        bundle_io.verify_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].update({"policy.yaml": "0" * 64}), r"'policy.yaml' does not match"),
        (lambda m: m.update({"format_version": 99}), "unsupported format_version 99"),
        (lambda m: m.update({"format": "onnx-zoo"}), "unknown bundle format 'onnx-zoo'"),
        (lambda m: m["files"].pop("schema.yaml"), r"manifest lists no \['schema.yaml'\]"),
        (lambda m: m["files"].update({"../evil": "0" * 64}), "not a valid bundle file name"),
        (lambda m: m.update({"kind": "giant"}), "kind must be one of"),
    ],
)
def test_edited_manifest_is_refused(bundle_copy: Path, edit, message: str) -> None:
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        Router.load(bundle_copy)


def test_damaged_manifest_json_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / "manifest.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(BundleError, match="manifest.json: not valid JSON"):
        bundle_io.verify_bundle(bundle_copy)
    path.unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        bundle_io.verify_bundle(bundle_copy)


def test_update_bundle_file_rehashes_and_temperatures_apply(bundle_copy: Path, router: Router) -> None:
    calibration = {"temperatures": {"tier": 2.0, "task": 0.5}, "fitted_on": "calibration", "metrics": {}}
    manifest = bundle_io.update_bundle_file(bundle_copy, "calibration.json", json.dumps(calibration))
    assert manifest.files["calibration.json"] == bundle_io.sha256_file(bundle_copy / "calibration.json")
    assert bundle_io.verify_bundle(bundle_copy).files == manifest.files

    with Router.load(bundle_copy) as calibrated:
        assert calibrated.temperatures == {"tier": 2.0, "task": 0.5, "sensitivity": 1.0}
        logits = router.logits(TEXTS)
        probs = calibrated.predict_proba(TEXTS)
        for head, temp in calibrated.temperatures.items():
            z = logits[head].astype(np.float64) / temp
            want = np.exp(z - z.max(axis=1, keepdims=True))
            want /= want.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probs[head], want, rtol=1e-6, atol=1e-9)
        # tier temperature 2 flattens the tier distribution compared with the uncalibrated router
        raw = router.predict_proba(TEXTS)["tier"]
        assert np.all(np.abs(probs["tier"][:, 1] - 0.5) <= np.abs(raw[:, 1] - 0.5) + 1e-12)


def test_calibration_biases_apply(bundle_copy: Path, router: Router) -> None:
    """``softmax(logits / T + b)``: what ``tierwise calibrate`` writes for a head that needs a bias."""
    assert router.biases == {}  # the tiny bundle has temperatures only
    calibration = {"temperatures": {"tier": 2.0, "task": 0.5},
                   "biases": {"tier": [-0.4, 0.4], "sensitivity": [0.1, -0.3, 0.2]}, "fitted_on": "calibration", "method": "temperature_scaling+bias", "metrics": {}}
    bundle_io.update_bundle_file(bundle_copy, "calibration.json", json.dumps(calibration))
    with Router.load(bundle_copy) as calibrated:
        assert set(calibrated.biases) == {"tier", "sensitivity"}
        assert calibrated.info()["biases"] == calibration["biases"]
        logits = router.logits(TEXTS)
        probs = calibrated.predict_proba(TEXTS)
        for head in calibrated.head_names:
            z = logits[head].astype(np.float64) / calibrated.temperatures[head]
            z = z + np.asarray(calibration["biases"].get(head, 0.0))
            want = np.exp(z - z.max(axis=1, keepdims=True))
            want /= want.sum(axis=1, keepdims=True)
            np.testing.assert_allclose(probs[head], want, rtol=1e-6, atol=1e-9)
        # a +0.8 shift of the tier log-odds towards frontier, on top of T = 2
        raw = logits["tier"].astype(np.float64)
        log_odds = np.log(probs["tier"][:, 1] / probs["tier"][:, 0])
        np.testing.assert_allclose(log_odds, (raw[:, 1] - raw[:, 0]) / 2.0 + 0.8, rtol=1e-6, atol=1e-9)
        # decisions use the biased probabilities
        decision = calibrated.route(TEXTS[1])
        tier_probs = decision.to_dict()["probabilities"]["tier"]
        assert [tier_probs["cheap"], tier_probs["frontier"]] == pytest.approx(probs["tier"][1].tolist(), abs=1e-5)
        # the single-prompt path leaves the caller's logits alone
        one = {h: z[:1].astype(np.float64) for h, z in logits.items()}
        before = {h: z.copy() for h, z in one.items()}
        calibrated.proba_from_logits(one)
        for h in one:
            np.testing.assert_array_equal(one[h], before[h])


@pytest.mark.parametrize(
    ("biases", "message"),
    [
        ({"tier": [0.1]}, r"biases.tier must be a list of 2 finite numbers"),
        ({"tier": [0.1, float("nan")]}, r"biases.tier must be a list of 2 finite numbers"),
        ({"tier": "0.1"}, r"biases.tier must be a list"),
        ({"nope": [0.0, 0.0]}, r"biases.nope: not a head of the schema"),
        ([0.1, 0.2], r"'biases' must map head names"),
    ],
)
def test_bad_biases_are_refused(bundle_copy: Path, biases, message: str) -> None:
    doc = {"temperatures": {"tier": 1.0}, "biases": biases}
    bundle_io.update_bundle_file(bundle_copy, "calibration.json", json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        Router.load(bundle_copy)


def test_update_refuses_a_tampered_bundle(bundle_copy: Path) -> None:
    (bundle_copy / "policy.yaml").write_text("owner: someone else\n")
    with pytest.raises(BundleError, match="policy.yaml"):
        bundle_io.update_bundle_file(bundle_copy, "calibration.json", "{}")


def test_bad_calibration_is_refused(bundle_copy: Path) -> None:
    bundle_io.update_bundle_file(bundle_copy, "calibration.json", json.dumps({"temperatures": {"tier": -1}}))
    with pytest.raises(BundleError, match=r"temperatures.tier must be a finite number > 0"):
        Router.load(bundle_copy)


def test_write_bundle_by_role(tiny_bundle: Path, tmp_path: Path) -> None:
    """The keyword form the student exporter uses: defaults for calibration and limits."""
    from classifier.data.schema import LabelSchema

    out = bundle_io.write_bundle(
        tmp_path / "student", onnx_bytes=(tiny_bundle / "model.onnx").read_bytes(),
        tokenizer_path=tiny_bundle / "tokenizer.json", schema=LabelSchema.from_yaml(tiny_bundle / "schema.yaml"),
        policy_path=ROOT / "serving" / "policy.example.yaml", kind="student", max_length=32,
        training_run_id="run-1", extra={"parity": {"max_abs_logit_diff": 0.0}},
    )
    manifest = bundle_io.verify_bundle(out)
    assert manifest.kind == "student" and manifest.training_run_id == "run-1"
    assert manifest.input_limits.max_length == 32 and manifest.extra["parity"] == {"max_abs_logit_diff": 0.0}
    assert "onnxruntime" in manifest.library_versions
    with Router.load(out) as r:
        assert r.temperatures == {"tier": 1.0, "task": 1.0, "sensitivity": 1.0}
        assert "long_request" in r.route("word " * 40).flags  # max_length 32 applies: several windows
    with pytest.raises(BundleError, match="not empty and is not a bundle"):
        bundle_io.write_bundle(tmp_path, onnx_bytes=b"x", tokenizer_path=tiny_bundle / "tokenizer.json",
                               schema=LabelSchema.from_yaml(tiny_bundle / "schema.yaml"))


# -- archives -------------------------------------------------------------------------------------
@pytest.mark.slow  # unpacks and loads the bundle twice
def test_load_from_tar_gz_equals_directory(tiny_bundle: Path, router: Router, tmp_path: Path) -> None:
    archive = bundle_io.pack(tiny_bundle, tmp_path / "tiny.tar.gz")
    with Router.load(archive) as packed:
        extracted = packed.bundle_dir
        assert extracted.is_dir() and extracted != tiny_bundle
        np.testing.assert_array_equal(packed.logits(TEXTS)["tier"], router.logits(TEXTS)["tier"])
        assert packed.bundle_hash == router.bundle_hash
    assert not extracted.exists()  # the temporary extraction is removed on close
    # the archive written by export next to the bundle loads too
    with Router.load(tiny_bundle.with_name("tiny.tar.gz")) as exported:
        assert exported.route("hi").to_dict() == router.route("hi").to_dict()


def _tar_with(path: Path, members: list[tarfile.TarInfo], data: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../evil.txt", "unsafe member path"),
        ("/etc/evil.txt", "unsafe member path"),
        ("b/../../evil.txt", "unsafe member path"),
        ("b/sub/deep.txt", "is not '<bundle>/<file>'"),
    ],
)
def test_unsafe_archives_are_refused(tmp_path: Path, member: str, message: str) -> None:
    archive = _tar_with(tmp_path / "bad.tar.gz", [tarfile.TarInfo(member)])
    with pytest.raises(BundleError, match=message):
        Router.load(archive)
    assert not (tmp_path / "evil.txt").exists()


def test_archive_with_a_link_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("b/model.onnx")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(BundleError, match="link or special file"):
        Router.load(_tar_with(tmp_path / "link.tar.gz", [link]))


# -- runtime --------------------------------------------------------------------------------------
@pytest.mark.slow  # a child interpreter
def test_runtime_never_imports_torch_or_transformers(tiny_bundle: Path) -> None:
    code = (
        "import sys, json\n"
        "from classifier.serving.runtime import Router\n"
        f"r = Router.load({str(tiny_bundle)!r})\n"
        "d = r.route('write a python function')\n"
        "ds = r.route(['hi', 'solve 2x = 4'])\n"
        "assert d.tier is not None and len(ds) == 2\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"torch": False, "transformers": False}


def test_batch_results_equal_single_results(router: Router) -> None:
    batch = router.route(TEXTS)
    assert isinstance(batch, list) and len(batch) == len(TEXTS)
    batch_logits = router.logits(TEXTS)
    for i, text in enumerate(TEXTS):
        assert_same_decision(router.route(text).to_dict(), batch[i].to_dict())
        one = router.logits([text])
        for head in router.head_names:
            np.testing.assert_allclose(one[head][0], batch_logits[head][i], atol=1e-5)


def test_chunked_batches_equal_one_batch(tiny_bundle: Path, router: Router) -> None:
    texts = TEXTS * 3
    with Router.load(tiny_bundle) as small:
        small._max_batch = 4  # force the sorted, chunked path
        chunked = small.logits(texts)
    whole = router.logits(texts)
    for head in router.head_names:
        np.testing.assert_allclose(chunked[head], whole[head], atol=1e-5)


def test_probabilities_are_distributions(router: Router) -> None:
    probs = router.predict_proba(TEXTS)
    for head in router.head_names:
        assert probs[head].shape == (len(TEXTS), router.schema.head(head).num_classes)
        np.testing.assert_allclose(probs[head].sum(axis=1), 1.0, atol=1e-9)
    assert router.logits([])["tier"].shape == (0, 2)


def test_unclassifiable_prompts_get_the_flagged_safe_decision(router: Router) -> None:
    bad = [None, "", "   \n", 42, "broken \ud800 surrogate"]
    decisions = router.route(["fine prompt", *bad, "another fine prompt"])
    assert "invalid_input" not in decisions[0].flags and "invalid_input" not in decisions[-1].flags
    safe = router.safe_decision("x")
    for d in decisions[1:-1]:
        assert "invalid_input" in d.flags
        assert d.tier == safe.tier and d.rule == safe.rule and not d.probabilities
    # the valid neighbours are decided exactly as on their own
    assert_same_decision(decisions[0].to_dict(), router.route("fine prompt").to_dict())
    assert "invalid_input" in router.route(None).flags  # a single bad prompt: a Decision, not a crash
    with pytest.raises(InputError, match=r"texts\[1\]: the prompt is empty"):
        router.logits(["ok", ""])


def test_long_prompts_are_read_in_windows_and_cuts_flagged(router: Router) -> None:
    short = router.route("short prompt")
    assert "truncated" not in short.flags and "long_request" not in short.flags
    long_tokens = router.route("word " * 200)  # > 64 tokens: several windows, all of it read
    assert "long_request" in long_tokens.flags and "truncated" not in long_tokens.flags
    limit = router.max_chars
    long_chars = router.route("a" * (limit + 10))  # one enormous 'word': cut by characters
    assert "truncated" in long_chars.flags


def test_policy_override_and_bad_threads(tiny_bundle: Path) -> None:
    policy = yaml.safe_load((ROOT / "serving" / "policy.example.yaml").read_text())
    policy["version"] = "override-7"
    with Router.load(tiny_bundle, policy=policy) as r:
        assert r.route("hi").policy_version == "override-7"
        assert r.info()["policy_version"] == "override-7"
    with pytest.raises(ConfigError, match="threads"):
        Router.load(tiny_bundle, threads=0)


# -- tierwise route -------------------------------------------------------------------------------
def test_cli_route_single_prompt(tiny_bundle: Path, capsys) -> None:
    from classifier.cli import main

    assert main(["route", "write a python function to sort a list", "--bundle", str(tiny_bundle)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"tier", "model", "rule", "reason", "probabilities", "flags", "policy_version"} <= set(doc)
    assert set(doc["probabilities"]) == {"tier", "task", "sensitivity"}


def test_cli_route_file_with_bad_lines(tiny_bundle: Path, router: Router, tmp_path: Path, capsys) -> None:
    from classifier.cli import main
    from classifier.serving.audit import verify

    src = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": "a", "text": TEXTS[1]}),
        "{not json",
        json.dumps({"id": "c", "prompt": "wrong field"}),
        json.dumps({"id": "d", "text": 17}),
        json.dumps({"id": "e", "text": TEXTS[2]}),
        json.dumps({"id": "f", "text": ""}),
    ]
    src.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe not utf-8\n" + json.dumps({"text": "last"}).encode() + b"\n")
    out = tmp_path / "out.jsonl"
    audit = tmp_path / "audit.jsonl"
    rc = main(["route", "--bundle", str(tiny_bundle), "--input", str(src), "--output", str(out),
               "--batch-size", "2", "--audit-log", str(audit), "--no-progress"])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 9))  # one answer per input line, in order
    assert [r["id"] for r in rows] == ["a", None, "c", "d", "e", "f", None, None]
    invalid = {r["line"] for r in rows if "invalid_input" in r["flags"]}
    assert invalid == {2, 3, 4, 6, 7}
    for r in rows:
        if r["line"] in invalid:
            assert r["error"].startswith(f"line {r['line']}:") and r["tier"] == router.safe_decision("x").tier
    assert "not valid JSON" in rows[1]["error"] and "'text' or 'messages' field" in rows[2]["error"]
    assert_same_decision({k: v for k, v in rows[0].items() if k not in ("line", "id")}, router.route(TEXTS[1]).to_dict())
    assert "8 line(s), 5 invalid" in capsys.readouterr().err
    result = verify(audit)
    assert result.ok and result.entries == 8
