"""The fast path: the context student's hand-built ONNX graph, and the student -> teacher cascade.

Real ONNX Runtime sessions and real bundles built from the tiny fixtures; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import ROOT

from classifier.data.schema import LabelSchema
from classifier.errors import BundleError, ConfigError
from classifier.serving import bundle as bundle_io
from classifier.serving.cascade import (
    CASCADE_FILE,
    FLAG_ESCALATED,
    Band,
    Cascade,
    CascadeSpec,
    composite_scores,
    fit_band,
    read_cascade,
    write_cascade,
)
from classifier.serving.runtime import Router
from classifier.training.config import DistillConfig
from classifier.training.student import StaticStudent

SCHEMA = LabelSchema.default()
PROMPTS = ["write a poem", "my name is anna and i live here", "solve the sum please", "key secret token"]


def _student(vocab: int, context: int, kernel: int = 3, dilation: int = 1, seed: int = 0) -> StaticStudent:
    torch.manual_seed(seed)
    table = np.random.default_rng(seed).normal(size=(vocab, 16)).astype(np.float32)
    return StaticStudent(table, SCHEMA, hidden=16, context_channels=context, context_kernel=kernel,
                         context_dilation=dilation).eval()


def _onnx_logits(student: StaticStudent, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(student.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})


# -- the context student's graph -----------------------------------------------------------------
@pytest.mark.parametrize(("context", "kernel", "dilation"), [(0, 3, 1), (8, 3, 1), (6, 5, 2), (4, 1, 1)])
def test_student_graph_matches_torch(context: int, kernel: int, dilation: int) -> None:
    student = _student(200, context, kernel, dilation)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 200, size=(4, 13)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # padded rows: padding must add nothing to the last real tokens' windows
    mask[2, 3:] = 0
    mask[3, 1:] = 0
    got = _onnx_logits(student, ids, mask)
    with torch.inference_mode():
        want = [z.numpy() for z in student(torch.from_numpy(ids), torch.from_numpy(mask))]
    for g, w in zip(got, want, strict=True):
        assert np.abs(g - w).max() < 1e-4
        assert (g.argmax(1) == w.argmax(1)).all()


def test_padding_does_not_change_a_prompt() -> None:
    """A prompt padded in a batch gets the logits it gets alone, also at its window's edge."""
    student = _student(200, 8, kernel=5, dilation=2)
    ids = np.array([[5, 17, 42, 99, 7, 3]], dtype=np.int64)
    alone = _onnx_logits(student, ids, np.ones_like(ids))
    padded = np.concatenate([ids, np.full((1, 4), 123, dtype=np.int64)], axis=1)
    mask = np.concatenate([np.ones_like(ids), np.zeros((1, 4), dtype=np.int64)], axis=1)
    batched = _onnx_logits(student, padded, mask)
    for a, b in zip(alone, batched, strict=True):
        assert np.abs(a - b).max() < 1e-5


def test_context_reads_word_order_and_the_bag_does_not() -> None:
    ids = np.array([[5, 17, 42, 99, 7, 3]], dtype=np.int64)
    shuffled = ids[:, [3, 0, 5, 1, 4, 2]]
    mask = np.ones_like(ids)
    bag, bag_shuffled = _onnx_logits(_student(200, 0), ids, mask), _onnx_logits(_student(200, 0), shuffled, mask)
    ctx, ctx_shuffled = _onnx_logits(_student(200, 8), ids, mask), _onnx_logits(_student(200, 8), shuffled, mask)
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(bag, bag_shuffled, strict=True))
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(ctx, ctx_shuffled, strict=True))


@pytest.mark.parametrize("bad", [{"context_channels": -1}, {"context_kernel": 2}, {"context_kernel": 0},
                                 {"context_dilation": 0}])
def test_bad_context_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        DistillConfig(**bad)
    with pytest.raises(ConfigError, match=next(iter(bad))):
        StaticStudent(np.zeros((10, 4), np.float32), SCHEMA, **bad)


# -- band fitting ----------------------------------------------------------------------------------
def test_fit_band_meets_its_miss_and_precision_budgets() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.1
    s = np.clip(np.where(y, rng.beta(5, 1.5, 4000), rng.beta(1, 8, 4000)), 0, 1)
    band, summary = fit_band(s, y, max_miss=0.02, min_precision=0.99, policy_threshold=0.5, cls="pii")
    assert np.sum(y & (s < band.lo)) <= 0.02 * y.sum()
    above = s >= band.hi
    assert y[above].mean() >= 0.99
    assert band.lo <= 0.5 <= band.hi
    assert summary["share_escalated"] == pytest.approx(np.mean((s >= band.lo) & (s < band.hi)))
    # a stricter miss budget can only widen the band downwards
    tighter, _ = fit_band(s, y, max_miss=0.0, min_precision=0.99, cls="pii")
    assert tighter.lo <= band.lo and tighter.lo == pytest.approx(s[y].min())


def test_fit_band_without_a_precise_region_escalates_everything_above_lo() -> None:
    s = np.linspace(0, 1, 100)
    y = np.arange(100) % 2 == 0  # no threshold reaches 0.99 precision
    band, _ = fit_band(s, y, max_miss=0.0, min_precision=0.99)
    assert band.hi == 1.0 and band.lo == 0.0


def test_composite_scores_rank_escalated_rows_inside_the_band() -> None:
    band = Band("pii", 0.2, 0.8)
    fast = np.array([0.1, 0.9, 0.5, 0.5])
    strong = np.array([0.0, 0.0, 0.99, 0.01])
    esc = np.array([False, False, True, True])
    comp = composite_scores(fast, strong, esc, band)
    assert comp[0] < comp[3] < comp[2] < comp[1]
    assert band.lo <= comp[3] < comp[2] < band.hi


# -- the cascade -------------------------------------------------------------------------------------
@pytest.fixture()
def cascade_bundles(tmp_path: Path, tiny_bundle: Path) -> tuple[Path, Path]:
    """A tiny context student (fast) and a copy of the tiny teacher bundle (strong)."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json")).get_vocab_size()
    fast = bundle_io.write_bundle(
        tmp_path / "fast", onnx_bytes=_student(vocab, 8).to_onnx().SerializeToString(),
        tokenizer_path=tiny_bundle / "tokenizer.json", schema=SCHEMA,
        policy_path=ROOT / "serving" / "policy.example.yaml", kind="student", max_length=32)
    strong = tmp_path / "teacher"
    shutil.copytree(tiny_bundle, strong)
    return Path(fast), strong


def _spec(fast: Path, strong: Path, lo: float, hi: float) -> CascadeSpec:
    return CascadeSpec(bands={"pii": Band("pii", lo, hi)}, escalate_to="teacher",
                       escalate_bundle_hash=bundle_io.sha256_file(strong / bundle_io.MANIFEST_FILE))


def test_cascade_escalates_exactly_the_prompts_in_the_band(cascade_bundles: tuple[Path, Path]) -> None:
    fast, strong = cascade_bundles
    with Router.load(fast) as r:
        p = r.predict_proba(PROMPTS)["sensitivity"][:, SCHEMA.head("sensitivity").index("pii")]
    with Router.load(strong) as r:
        teacher = r.route(PROMPTS[1]).to_dict()  # escalated prompts go to the teacher on their own
    # a band around the second prompt's p(pii) only
    others = np.delete(p, 1)
    gap = np.min(np.abs(others - p[1]))
    assert gap > 0, "tiny student gives two prompts the same p(pii); change the prompts"
    write_cascade(fast, _spec(fast, strong, p[1] - gap / 2, p[1] + gap / 2))
    with Cascade.load(fast) as cascade:  # the strong bundle is found through escalate_to
        out = cascade.route(PROMPTS)
        assert [FLAG_ESCALATED in d.flags for d in out] == [False, True, False, False]
        d = out[1].to_dict()
        d["flags"].remove(FLAG_ESCALATED)
        assert d == teacher  # the teacher's whole decision
        assert out[0].probabilities == cascade.fast.route(PROMPTS[0]).probabilities
        single = cascade.route(PROMPTS[1])
        assert FLAG_ESCALATED in single.flags
        mask = cascade.escalation_mask(cascade.fast.predict_proba(PROMPTS))
        assert mask.tolist() == [False, True, False, False]


def test_cascade_never_escalates_bad_input_and_an_empty_band_nothing(cascade_bundles: tuple[Path, Path]) -> None:
    fast, strong = cascade_bundles
    write_cascade(fast, _spec(fast, strong, 0.0, 1.0))  # everything valid escalates
    with Cascade.load(fast, strong) as cascade:
        out = cascade.route(["", *PROMPTS])
        assert "invalid_input" in out[0].flags and FLAG_ESCALATED not in out[0].flags
        assert all(FLAG_ESCALATED in d.flags for d in out[1:])
    write_cascade(fast, _spec(fast, strong, 0.5, 0.5))  # an empty band
    with Cascade.load(fast, strong) as cascade:
        assert not any(FLAG_ESCALATED in d.flags for d in cascade.route(PROMPTS))


def test_cascade_refuses_another_strong_bundle_and_a_missing_band(cascade_bundles: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    fast, strong = cascade_bundles
    with pytest.raises(BundleError, match="no cascade.json"):
        Cascade.load(fast, strong)
    write_cascade(fast, _spec(fast, strong, 0.1, 0.9))
    other = tmp_path / "other"
    shutil.copytree(strong, other)
    bundle_io.update_manifest(other, training_run_id="another-run")
    with pytest.raises(BundleError, match="not the escalation bundle"):
        Cascade.load(fast, other)
    Cascade.load(fast, other, check_hash=False).close()
    # cascade.json is hashed like every bundle file: an edit after the fact is refused
    (fast / CASCADE_FILE).write_text(json.dumps({**_spec(fast, strong, 0.0, 1.0).to_dict()}))
    with pytest.raises(BundleError, match="does not match its manifest hash|the manifest records"):
        read_cascade(fast)


def test_cascade_spec_rejects_malformed_bands() -> None:
    good = CascadeSpec(bands={"pii": Band("pii", 0.1, 0.2)}).to_dict()
    assert CascadeSpec.from_dict(good).bands["pii"] == Band("pii", 0.1, 0.2)
    for bad in ({**good, "bands": {"pii": [0.5, 0.1]}}, {**good, "bands": {"pii": [0.1]}},
                {**good, "format": "x"}, {**good, "bands": {}}):
        with pytest.raises(BundleError):
            CascadeSpec.from_dict(bad)


def test_fit_cascade_writes_bands_from_the_calibration_rows(cascade_bundles: tuple[Path, Path]) -> None:
    from classifier.evaluation.cascade_cmd import fit_cascade

    fast, strong = cascade_bundles
    rng = np.random.default_rng(0)
    words = ["poem", "anna", "sum", "key", "token", "name", "live", "write", "solve", "secret"]
    texts = [" ".join(rng.choice(words, 6)) for _ in range(120)]
    labels = rng.choice(["none", "pii", "credential"], 120, p=[0.6, 0.2, 0.2])
    frame = pd.DataFrame({"text": texts, "sensitivity": labels})
    spec = fit_cascade(fast, strong, frame, {"pii": 0.05, "credential": 0.0}, 0.99)
    assert set(spec.bands) == {"pii", "credential"}
    assert spec.escalate_to == "teacher" and spec.fit["n"] == 120
    with Router.load(fast) as r:
        thresholds = r.policy.sensitivity_thresholds
        p = r.predict_proba(texts)["sensitivity"]
    for cls, band in spec.bands.items():
        assert band.lo <= thresholds[cls] <= band.hi
        k = SCHEMA.head("sensitivity").index(cls)
        assert np.sum((labels == cls) & (p[:, k] < band.lo)) <= spec.fit["per_class"][cls]["max_miss"] * np.sum(labels == cls)
    write_cascade(fast, spec)
    assert read_cascade(fast).to_dict() == json.loads(json.dumps(spec.to_dict()))


def test_a_detector_hit_stands_in_for_escalation(cascade_bundles: tuple[Path, Path]) -> None:
    """Where the runtime's decision already carries a detector hit of the band's class, the gate
    holds without the teacher (``Decision.detections``, added by the detectors)."""
    fast, strong = cascade_bundles
    write_cascade(fast, _spec(fast, strong, 0.0, 1.0))
    with Cascade.load(fast, strong) as cascade:
        d = cascade.fast.route(PROMPTS[0])
        assert cascade.needs_escalation(d)
        d.detections = [{"rule": "detector:email", "class": "pii", "start": 0, "end": 4}]  # type: ignore[attr-defined]
        assert not cascade.needs_escalation(d)
        d.detections = [{"rule": "detector:aws", "class": "credential", "start": 0, "end": 4}]  # type: ignore[attr-defined]
        assert cascade.needs_escalation(d)


def test_cascade_command_fits_on_calibration_rows_only(cascade_bundles: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from classifier.cli import main

    fast, strong = cascade_bundles
    rng = np.random.default_rng(1)
    words = ["poem", "anna", "sum", "key", "token", "name", "live"]
    n = 90
    frame = pd.DataFrame({
        "text": [" ".join(rng.choice(words, 5)) for _ in range(n)],
        "sensitivity": rng.choice(["none", "pii", "credential"], n),
        "split": ["calibration"] * 60 + ["test"] * 30,
    })
    data = tmp_path / "dataset.parquet"
    frame.to_parquet(data)
    assert main(["cascade", "--fast", str(fast), "--strong", str(strong), "--data", str(data),
                 "--max-miss", "pii=0.1"]) == 0
    spec = read_cascade(fast)
    assert set(spec.bands) == {"pii"} and spec.fit["n"] == 60 and spec.fit["split"] == "calibration"
    assert json.loads(capsys.readouterr().out)["bands"]["pii"] == [spec.bands["pii"].lo, spec.bands["pii"].hi]
    assert main(["cascade", "--fast", str(fast), "--strong", str(strong), "--data", str(data),
                 "--max-miss", "tier=0.1"]) == 2  # not a gated sensitivity class: a clear error
