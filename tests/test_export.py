"""Export: ONNX parity with PyTorch, typed failures, INT8, bundle layout, CLI and MLflow logging."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from classifier.errors import ExportValidationError
from classifier.serving import bundle as bundle_io

POLICY = ROOT / "serving" / "policy.example.yaml"


def _torch_logits(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    import torch

    from classifier.training.model import MultiHeadEncoder

    model = MultiHeadEncoder.load(model_dir)
    with torch.inference_mode():
        return [t.numpy() for t in model(torch.from_numpy(ids), torch.from_numpy(mask))]


def test_bundle_layout_manifest_and_fp32_parity(tiny_bundle: Path) -> None:
    names = {p.name for p in tiny_bundle.iterdir()}
    # detectors.json is written when the shared gitleaks rules are there (they are in CI)
    assert names - {"detectors.json"} == {"model.onnx", "tokenizer.json", "schema.yaml", "policy.yaml",
                                          "calibration.json", "manifest.json"}
    assert tiny_bundle.with_name("tiny.tar.gz").is_file()

    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format"] == "tierwise-bundle" and manifest["format_version"] == 1
    assert manifest["kind"] == "teacher" and manifest["quantization"] is None
    assert set(manifest["files"]) == names - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert bundle_io.sha256_file(tiny_bundle / name) == digest
    # max_length comes from the model dir's model_info.json (64), not the 128 default
    assert manifest["input_limits"]["max_length"] == 64
    assert {"torch", "onnx", "onnxruntime", "tokenizers"} <= set(manifest["library_versions"])
    assert manifest["training_run_id"] is None  # the tiny model was never tracked

    parity = manifest["parity"]["fp32"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert parity["argmax_agreement"] == 1.0
    assert set(parity["heads"]) == {"tier", "task", "sensitivity"}
    assert parity["rows_compared"] > parity["prompts"]  # batches plus single-prompt passes

    calibration = json.loads((tiny_bundle / "calibration.json").read_text())
    assert calibration["temperatures"] == {"tier": 1.0, "task": 1.0, "sensitivity": 1.0}


@pytest.mark.slow  # loads the torch model (imports transformers)
def test_onnx_graph_has_dynamic_axes_and_matches_torch_on_new_shapes(tiny_bundle: Path, tiny_model_dir: Path) -> None:
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(tiny_bundle / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits_tier", "logits_task", "logits_sensitivity"]
    for inp in graph.input:
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        dims = inp.type.tensor_type.shape.dim
        assert all(d.dim_param for d in dims), f"{inp.name} has a fixed axis: {dims}"

    session = ort.InferenceSession(str(tiny_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 2), (5, 37), (3, 64)]:  # shapes the exporter never saw
        ids = rng.integers(5, 60, size=(batch, seq), dtype=np.int64)
        mask = np.ones_like(ids)
        if seq > 2:
            mask[0, seq // 2:] = 0  # a padded row
        got = session.run(None, {"input_ids": ids, "attention_mask": mask})
        want = _torch_logits(tiny_model_dir, ids, mask)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, atol=1e-4)


@pytest.mark.slow
def test_corrupted_onnx_weights_raise_export_validation_error(tiny_bundle: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from classifier.training.export import PARITY_PROMPTS, check_parity
    from classifier.training.model import MultiHeadEncoder, load_tokenizer

    model_proto = onnx.load(str(tiny_bundle / "model.onnx"))
    changed = 0
    for init in model_proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim == 2 and arr.shape[0] <= 4:  # a head's weight matrix
            init.CopyFrom(numpy_helper.from_array(arr * 1.5 + 0.01, init.name))
            changed += 1
    assert changed, "no head weights found to corrupt"
    bad = tmp_path / "bad.onnx"
    onnx.save(model_proto, str(bad))

    model = MultiHeadEncoder.load(tiny_model_dir)
    tok = load_tokenizer(tiny_model_dir, max_length=64)
    heads = model.schema.head_names
    # the untouched export passes the same check, so the failure below is the corruption's
    check_parity(model, tiny_bundle / "model.onnx", tok, PARITY_PROMPTS[:6], heads, atol=1e-4)
    with pytest.raises(ExportValidationError, match="disagrees with PyTorch"):
        check_parity(model, bad, tok, PARITY_PROMPTS[:6], heads, atol=1e-4)


@pytest.mark.slow
def test_impossible_tolerance_fails_export_and_writes_no_bundle(tiny_model_dir: Path, tmp_path: Path) -> None:
    from classifier.training.export import ExportConfig, export_model

    out = tmp_path / "never"
    with pytest.raises(ExportValidationError, match="exceeds tolerance"):
        export_model(ExportConfig(model_dir=tiny_model_dir, out_dir=out, policy=POLICY, dataset=None,
                                  atol=1e-12, log_to_mlflow=False))
    assert not out.exists()
    assert not out.with_name("never.tar.gz").exists()


def test_compare_logits_counts_near_ties_as_ambiguous() -> None:
    from classifier.training.export import compare_logits

    ref = {"h": np.array([[1.0, 1.0 + 1e-7], [0.0, 5.0]])}
    got = {"h": np.array([[1.0 + 2e-7, 1.0], [0.0, 5.0]])}
    report = compare_logits(ref, got, tie_tolerance=1e-6)
    assert report["heads"]["h"]["disagreements"] == 1
    assert report["heads"]["h"]["ambiguous_disagreements"] == 1
    assert report["decisive_disagreements"] == 0
    got_bad = {"h": np.array([[1.0, 1.0], [6.0, 5.0]])}
    assert compare_logits(ref, got_bad, tie_tolerance=1e-6)["decisive_disagreements"] == 1


@pytest.mark.slow
def test_cli_int8_export_with_dataset_prompts_logs_to_mlflow(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """tierwise export --int8 on a tracked model: int8 parity report, data-set prompts, MLflow artifacts."""
    import pandas as pd

    from classifier import tracking
    from classifier.cli import main
    from classifier.serving.runtime import Router

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = tracking.client(uri)
    exp = tracking.get_or_create_experiment("export-test", uri)
    run_id = client.create_run(exp).info.run_id
    client.set_terminated(run_id)

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    info = json.loads((model_dir / "model_info.json").read_text())
    info.update({"training_run_id": run_id, "mlflow_model_version": "3"})
    (model_dir / "model_info.json").write_text(json.dumps(info))

    data = tmp_path / "dataset.parquet"
    pd.DataFrame({
        "text": [f"test prompt number {i} please solve" for i in range(5)] + ["train only"] * 3,
        "split": ["test"] * 5 + ["train"] * 3,
    }).to_parquet(data)

    out = tmp_path / "bundles" / "tiny-int8"
    rc = main(["export", "--model", str(model_dir), "--out", str(out), "--int8", "--policy", str(POLICY),
               "--dataset", str(data), "--parity-prompts", "10"])
    assert rc == 0
    manifest = bundle_io.verify_bundle(out)
    assert manifest.quantization == "int8"
    assert manifest.training_run_id == run_id and manifest.mlflow_model_version == "3"
    fp32, int8 = manifest.extra["parity"]["fp32"], manifest.extra["parity"]["int8"]
    from classifier.training.export import PARITY_PROMPTS

    assert fp32["prompts"] == len(PARITY_PROMPTS) + 5  # the 5 test-split rows, not the train rows
    assert int8["passed"] and 0.9 <= int8["argmax_agreement"] <= 1.0
    assert int8["max_abs_diff"] > fp32["max_abs_diff"]  # quantisation really changed the weights
    assert int8["size_ratio"] < 0.8
    assert out.with_name("tiny-int8.tar.gz").is_file()

    artifacts = {a.path for a in client.list_artifacts(run_id, "bundles/tiny-int8")}
    assert "bundles/tiny-int8/model.onnx" in artifacts and "bundles/tiny-int8/manifest.json" in artifacts
    metrics = client.get_run(run_id).data.metrics
    assert metrics["export_int8_argmax_agreement"] == pytest.approx(int8["argmax_agreement"])

    with Router.load(out) as router:
        assert router.manifest.quantization == "int8"
        assert router.route("write a python function").tier is not None


def test_mlflow_logging_is_skipped_with_a_warning(tiny_bundle: Path, tmp_path: Path, caplog, monkeypatch) -> None:
    from classifier.training.export import log_bundle_to_mlflow

    manifest = bundle_io.verify_bundle(tiny_bundle)
    caplog.set_level(logging.WARNING, logger="classifier.training.export")
    assert log_bundle_to_mlflow(None, tiny_bundle, manifest, {}) is False
    assert "names no training run" in caplog.text
    missing = tmp_path / "nowhere" / "mlflow.db"
    assert log_bundle_to_mlflow("abc123", tiny_bundle, manifest, {}, uri=f"sqlite:///{missing}") is False
    assert "does not exist" in caplog.text
    assert not missing.exists()  # no empty store was created on the way
