"""Export a trained model directory to a verified ONNX bundle (``tierwise export``).

Steps: load ``MultiHeadEncoder`` in eval mode; export it with ``torch.onnx`` (dynamo exporter,
dynamic batch and sequence axes, inputs ``input_ids``/``attention_mask`` int64, outputs
``logits_<head>``); check that ONNX Runtime reproduces the PyTorch logits on a fixed list of varied
prompts (plus test-split prompts of ``data/build/dataset.parquet`` when present): max abs logit
difference and argmax agreement, ``ExportValidationError`` when over tolerance; optionally
quantise to INT8 (dynamic, per-channel, reduced range, with its own looser parity check); write
the bundle (model, tokenizer, schema, policy, calibration, manifest) and its ``.tar.gz``; log the
bundle to the model's MLflow run when that run and store are reachable.

What this module leaves out: training (``trainer``), calibration (``tierwise calibrate`` refits the
temperatures this writes as 1.0) and serving (``classifier.serving``). The parity helpers
(:func:`compare_logits`, :func:`check_parity`, :func:`quantize_int8`) take any module whose
``forward(input_ids, attention_mask)`` returns per-head logits in schema order, so the student
exporter can reuse them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from classifier.errors import ConfigError, ExportValidationError, TypedConfig
from classifier.serving import bundle as bundle_io
from classifier.serving.detectors import DETECTORS_FILE, default_rules_bytes
from classifier.serving.policy import packaged as packaged_policy

logger = logging.getLogger(__name__)

DEFAULT_POLICY = Path("serving/policy.example.yaml")
DEFAULT_DATASET = Path("data/build/dataset.parquet")
INPUT_NAMES = ("input_ids", "attention_mask")

# Varied prompts for the parity check: short and long (past 128 tokens), code, maths, personal
# data, credentials, non-English text, odd whitespace and punctuation.
PARITY_PROMPTS: tuple[str, ...] = (
    "hi",
    "What is the capital of France?",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n# make this iterative and add type hints",
    "Solve for x: 3x + 7 = 22. Show every step of your reasoning.",
    "A train leaves at 3pm going 60 mph; another leaves at 4pm going 80 mph. When does the second catch up?",
    "My name is John Smith, I live at 221B Baker Street, London, and my phone is +44 20 7946 0958.",
    "Here is my AWS key AKIAIOSFODNN7EXAMPLE and secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, why does s3 fail?",
    "export GITHUB_TOKEN=ghp_1234567890abcdefghijklmnopqrstuvwxyz12 && git push",
    "Explain the difference between a process and a thread, with examples in Python and Rust.",
    "Résumé en français : la photosynthèse transforme la lumière en énergie chimique.",
    "请用三句话解释量子纠缠。",
    "   lots   of    spaces\tand\ttabs\nand\nnew lines   ",
    "!!!??? ... --- ***",
    "Which of the following is a function of the liver? (A) insulin production (B) bile production "
    "(C) red cell storage (D) antibody synthesis",
    "Please write a detailed, well structured essay on the economic causes of the First World War, "
    "covering imperial rivalry, the alliance system, naval arms races, colonial competition in "
    "Africa and Asia, the role of industrial capacity and trade networks, financial markets and the "
    "gold standard, the Balkan crises of 1908 and 1912-13, and how each of these shaped the "
    "decisions of the great powers in July 1914. Include a short historiography section comparing "
    "Fischer, Clark and MacMillan, and end with a one-paragraph conclusion and a list of sources. "
    "Use British spelling, avoid bullet points, and keep it under two thousand words please.",
    "SELECT name, email FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY name;",
    "Translate 'good morning, how are you?' into Spanish, German and Japanese.",
    "credit card 4111 1111 1111 1111 exp 12/29 cvv 123 - is this valid?",
    "sum the numbers from 1 to 100 and explain the trick Gauss used",
    "Can you help me write an email to my landlord about a broken heater?",
    "x" * 600,
    "token " * 200,
    "a",
)


# -- configuration --------------------------------------------------------------------------------
class ExportConfig(TypedConfig):
    """What to export and how strictly to check it."""

    model_dir: Path
    out_dir: Path
    int8: bool = False
    policy: Path | None = None
    max_length: int | None = Field(None, ge=2)  # None: the model dir's model_info.json max_length, else 128
    max_chars: int | None = Field(None, ge=1)  # None: 32 x max_length
    max_batch: int = Field(256, ge=1)
    opset: int = Field(18, ge=13, le=23)
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    atol: float = Field(1e-4, ge=0.0)
    # int8 error grows with the logits' scale: a full-preset teacher's sensitivity logits reach +-7
    # and its int8 copy differs by up to 1.06 on the parity prompts while agreeing on ~99% of
    # argmaxes; the agreement floor below is the check that matters for routing.
    int8_atol: float = Field(1.5, ge=0.0)
    int8_min_agreement: float = Field(0.9, ge=0.0, le=1.0)
    dataset: Path | None = DEFAULT_DATASET
    dataset_prompts: int = Field(256, ge=0)
    extra_prompts: tuple[str, ...] = ()
    pack: bool = True
    log_to_mlflow: bool = True
    kind: Literal[bundle_io.KINDS] = "teacher"
    seed: int = 0

    @field_validator("out_dir")
    @classmethod
    def _not_the_model(cls, out_dir: Path, info: ValidationInfo) -> Path:
        if "model_dir" in info.data and out_dir.resolve() == info.data["model_dir"].resolve():
            raise ValueError("(--out) must differ from --model: the bundle replaces its directory's contents")
        return out_dir


@dataclass
class ExportResult:
    bundle_dir: Path
    archive: Path | None
    manifest: bundle_io.Manifest
    parity: dict[str, Any] = field(default_factory=dict)
    mlflow_logged: bool = False


# -- parity ---------------------------------------------------------------------------------------
def compare_logits(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                   tie_tolerance: float = 1e-4) -> dict[str, Any]:
    """Per-head and overall agreement of two logit sets (same rows, same heads).

    ``ambiguous_disagreements`` counts argmax disagreements on rows whose reference top-2 margin
    is at most ``2 * tie_tolerance``: a near-tie that differences within tolerance may flip, not an
    export fault. The others are ``decisive_disagreements``.
    """
    heads: dict[str, Any] = {}
    worst = 0.0
    agree_all = []
    decisive_disagreements = 0
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(candidate[name], dtype=np.float64)
        if ref.shape != got.shape:
            raise ExportValidationError(f"head {name!r}: ONNX output shape {got.shape} != PyTorch {ref.shape}")
        if not np.isfinite(got).all():
            raise ExportValidationError(f"head {name!r}: ONNX output holds NaN or infinite values")
        diff = np.abs(ref - got)
        max_diff = float(diff.max()) if diff.size else 0.0
        same = ref.argmax(axis=1) == got.argmax(axis=1)
        top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] >= 2 else np.zeros((len(ref), 2))
        margin = top2[:, 1] - top2[:, 0]
        ambiguous = int(np.sum(~same & (margin <= 2 * tie_tolerance)))
        decisive_disagreements += int(np.sum(~same)) - ambiguous
        heads[name] = {
            "max_abs_diff": max_diff,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "argmax_agreement": float(same.mean()) if same.size else 1.0,
            "disagreements": int(np.sum(~same)),
            "ambiguous_disagreements": ambiguous,
        }
        worst = max(worst, max_diff)
        agree_all.append(same)
    agree = np.concatenate(agree_all) if agree_all else np.ones(0, dtype=bool)
    return {
        "max_abs_diff": worst,
        "argmax_agreement": float(agree.mean()) if agree.size else 1.0,
        "decisive_disagreements": decisive_disagreements,
        "heads": heads,
    }


def _batches(texts: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(texts), size):
        yield list(texts[i:i + size])


def _session(path: Path):
    import onnxruntime as ort

    # the same optimisation level the runtime uses: check what will be served
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def paired_logits(model, onnx_path: Path, tokenizer, texts: Sequence[str], head_names: Sequence[str],
                  batch_size: int = 16, singles: int = 8) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """PyTorch and ONNX Runtime logits on identical token batches.

    Prompts go through in padded batches of ``batch_size`` (mixed lengths: exercises padding and
    the dynamic axes), and the first ``singles`` prompts also one at a time (batch of one).
    """
    import torch

    session = _session(onnx_path)
    outputs = [f"logits_{h}" for h in head_names]
    ref: dict[str, list[np.ndarray]] = {h: [] for h in head_names}
    got: dict[str, list[np.ndarray]] = {h: [] for h in head_names}
    groups = list(_batches(texts, batch_size)) + [[t] for t in texts[:singles]]
    model.eval()
    with torch.inference_mode():
        for group in groups:
            encs = tokenizer.encode_batch(group)
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            r = model(torch.from_numpy(ids), torch.from_numpy(mask))
            o = session.run(outputs, {"input_ids": ids, "attention_mask": mask})
            for h, rt, ot in zip(head_names, r, o, strict=True):
                ref[h].append(rt.detach().float().numpy())
                got[h].append(ot)
    return ({h: np.concatenate(v) for h, v in ref.items()}, {h: np.concatenate(v) for h, v in got.items()})


def check_parity(model, onnx_path: str | Path, tokenizer, texts: Sequence[str], head_names: Sequence[str], *,
                 atol: float, min_agreement: float = 1.0, label: str = "fp32") -> dict[str, Any]:
    """Compare ONNX against PyTorch; ``ExportValidationError`` when over tolerance.

    Fails when the max abs logit difference exceeds ``atol``, or when the argmax agreement rate is
    under ``min_agreement``; with ``min_agreement=1`` (fp32) every disagreement that is not a
    near-tie (see :func:`compare_logits`) fails.
    """
    ref, got = paired_logits(model, Path(onnx_path), tokenizer, texts, head_names)
    report = compare_logits(ref, got, tie_tolerance=atol)
    report.update({"prompts": len(texts), "rows_compared": int(next(iter(ref.values())).shape[0]),
                   "atol": atol, "min_agreement": min_agreement})
    problems = []
    if report["max_abs_diff"] > atol:
        worst = max(report["heads"], key=lambda h: report["heads"][h]["max_abs_diff"])
        problems.append(f"max abs logit difference {report['max_abs_diff']:.3g} (head {worst!r}) exceeds tolerance {atol:g}")
    if min_agreement >= 1.0:
        if report["decisive_disagreements"]:
            problems.append(f"{report['decisive_disagreements']} argmax disagreement(s) on prompts that are not near-ties")
    elif report["argmax_agreement"] < min_agreement:
        problems.append(f"argmax agreement {report['argmax_agreement']:.3f} is under {min_agreement:g}")
    report["passed"] = not problems
    if problems:
        raise ExportValidationError(
            f"{label} ONNX export of {onnx_path} disagrees with PyTorch: " + "; ".join(problems)
            + f". Per head: { {h: v['max_abs_diff'] for h, v in report['heads'].items()} }"
        )
    return report


# -- ONNX export and quantisation ---------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporters' progress prints and deprecation chatter (logged at debug instead)."""
    out, err = io.StringIO(), io.StringIO()
    # the exporter's IR passes and the quantiser log one INFO line per tensor
    loggers = [logging.getLogger(name) for name in ("", "onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.ERROR if lg.name.startswith("torch") else logging.WARNING))
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
            text = (out.getvalue() + err.getvalue()).strip()
            if text:
                logger.debug("exporter output:\n%s", text)


def export_onnx(model, path: str | Path, head_names: Sequence[str], tokenizer, *, max_length: int,
                opset: int = 18, exporter: str = "dynamo") -> Path:
    """Write ``model`` (eval mode) as ONNX with dynamic ``batch`` and ``seq`` axes; return the path."""
    import onnx
    import torch

    path = Path(path)
    model.eval()
    # example: batch 2, seq 16 (distinct sizes so the exporter cannot tie the two axes together)
    tokenizer_copy_ids = [e.ids for e in tokenizer.encode_batch(["write a python function", "hello world"])]
    seq = min(16, max_length)
    ids = np.zeros((2, seq), dtype=np.int64)
    mask = np.zeros((2, seq), dtype=np.int64)
    for i, row in enumerate(tokenizer_copy_ids):
        row = row[:seq]
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    outputs = [f"logits_{h}" for h in head_names]
    if exporter == "dynamo":
        batch_dim = torch.export.Dim("batch", min=1, max=65536)
        seq_dim = torch.export.Dim("seq", min=1, max=max(max_length, 2))
        with _quiet(), torch.inference_mode(False):
            program = torch.onnx.export(
                model, args, None, dynamo=True, input_names=list(INPUT_NAMES), output_names=outputs,
                dynamic_shapes={"input_ids": {0: batch_dim, 1: seq_dim}, "attention_mask": {0: batch_dim, 1: seq_dim}},
                opset_version=opset, external_data=False, optimize=True, verbose=False,
            )
            program.save(str(path), external_data=False)
    else:
        axes = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
        axes.update({name: {0: "batch"} for name in outputs})
        with _quiet():
            torch.onnx.export(
                model, args, str(path), dynamo=False, input_names=list(INPUT_NAMES), output_names=outputs,
                dynamic_axes=axes, opset_version=opset,
            )
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    names = [o.name for o in graph.output]
    if names != outputs:
        raise ExportValidationError(f"exported outputs {names} != expected {outputs}")
    return path


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic INT8 quantisation (weights QInt8, per channel, reduced range for AVX2 CPUs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    pre = dst.with_name(dst.stem + ".pre.onnx")
    source = src
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # fold and fuse first so more MatMuls are quantised; symbolic shape inference cannot
        # follow the exporter's Min(max_length, seq) shapes, so it is skipped
        with _quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; quantise without it
        logger.warning("quantisation pre-processing failed (%s); quantising the raw export", exc)
    with _quiet():
        quantize_dynamic(str(source), str(dst), per_channel=True, reduce_range=True, weight_type=QuantType.QInt8)
    pre.unlink(missing_ok=True)
    return dst


# -- inputs ---------------------------------------------------------------------------------------
def parity_prompts(dataset: Path | None, limit: int, seed: int = 0, extra: Sequence[str] = ()) -> list[str]:
    """The fixed prompts, then up to ``limit`` test-split prompts of the data set when present."""
    texts = list(PARITY_PROMPTS) + [t for t in extra if isinstance(t, str) and t.strip()]
    if dataset is None or limit == 0:
        return texts
    if not dataset.is_file():
        logger.info("no data set at %s: parity uses the %d fixed prompts only", dataset, len(texts))
        return texts
    try:
        import pandas as pd

        frame = pd.read_parquet(dataset, columns=["text", "split"])
    except (ImportError, OSError, ValueError, KeyError) as exc:
        logger.warning("cannot read prompts from %s (%s): parity uses the fixed prompts only", dataset, exc)
        return texts
    test = frame.loc[frame["split"] == "test", "text"].dropna()
    test = test[test.map(lambda t: isinstance(t, str) and bool(t.strip()))]
    if len(test) > limit:
        test = test.sample(n=limit, random_state=seed)
    texts += test.tolist()
    logger.info("parity prompts: %d fixed + %d from the test split of %s", len(PARITY_PROMPTS), len(test), dataset)
    return texts


def _model_info(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "model_info.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return info if isinstance(info, dict) else {}


def _first(info: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = info.get(key)
        if value not in (None, ""):
            return str(value)
    return None


def _resolve_policy(policy: Path | None) -> Path:
    if policy is not None:
        if not policy.is_file():
            raise ConfigError(f"policy file {policy} does not exist")
        return policy
    candidates = [DEFAULT_POLICY, packaged_policy()]  # the example shipped in classifier/serving
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"no routing policy: pass --policy PATH (default {DEFAULT_POLICY} was not found)")


# -- MLflow ---------------------------------------------------------------------------------------
def log_bundle_to_mlflow(run_id: str | None, bundle_dir: Path, manifest: bundle_io.Manifest,
                         parity: dict[str, Any], uri: str | None = None) -> bool:
    """Attach the bundle files to the model's MLflow run; False (with a warning) when not possible."""
    if not run_id:
        logger.warning("model_info.json names no training run: the bundle is not logged to MLflow")
        return False
    from classifier import tracking

    uri = uri or tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        # a missing database is not "reachable": do not create an empty store just to fail in it
        db = Path(unquote(uri[len("sqlite:///"):]))
        if not db.is_file():
            logger.warning("MLflow store %s does not exist: the bundle is not logged to run %s", uri, run_id)
            return False
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        logger.warning("mlflow is not installed: the bundle is not logged to run %s", run_id)
        return False
    client = tracking.client(uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        logger.warning("MLflow run %s not found in %s (%s): the bundle is not logged", run_id, uri, exc)
        return False
    prefix = "int8" if manifest.quantization == "int8" else "fp32"
    client.log_artifacts(run_id, str(bundle_dir), artifact_path=f"bundles/{bundle_dir.name}")
    client.set_tag(run_id, f"bundle.{bundle_dir.name}.model_sha256", manifest.files[bundle_io.MODEL_FILE])
    for label, report in parity.items():
        client.log_metric(run_id, f"export_{label}_max_abs_diff", float(report["max_abs_diff"]))
        client.log_metric(run_id, f"export_{label}_argmax_agreement", float(report["argmax_agreement"]))
    logger.info("logged bundle %s (%s) to MLflow run %s", bundle_dir.name, prefix, run_id)
    return True


# -- the whole export -----------------------------------------------------------------------------
def export_model(config: ExportConfig) -> ExportResult:
    """Export, validate, bundle, pack and log one model directory (see module docstring)."""
    from classifier.serving.policy import Policy, PolicyEngine
    from classifier.training.model import MultiHeadEncoder, load_tokenizer

    if not (config.model_dir / "tokenizer.json").is_file():
        raise ConfigError(f"{config.model_dir} has no tokenizer.json: re-save the model with its tokenizer")
    info = _model_info(config.model_dir)
    max_length = config.max_length or int(info.get("max_length") or 128)
    model = MultiHeadEncoder.load(config.model_dir)
    model.eval()
    positions = getattr(model.encoder.config, "max_position_embeddings", None)
    if positions is not None and max_length > int(positions):
        raise ConfigError(f"max_length {max_length} exceeds the encoder's {positions} position embeddings")
    schema = model.schema
    heads = schema.head_names
    policy_path = _resolve_policy(config.policy)
    policy = Policy.from_yaml(policy_path)
    PolicyEngine(policy, schema)  # the policy must fit the schema before it is bundled
    tokenizer = load_tokenizer(config.model_dir, max_length=max_length)
    texts = parity_prompts(config.dataset, config.dataset_prompts, config.seed, config.extra_prompts)

    limits = bundle_io.InputLimits(max_length=max_length, max_chars=config.max_chars or 32 * max_length,
                                   max_batch=config.max_batch)
    config.out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=config.out_dir.parent) as tmp:
        fp32_path = Path(tmp) / "model.fp32.onnx"
        logger.info("exporting %s to ONNX (%s exporter, opset %d)", config.model_dir, config.exporter, config.opset)
        export_onnx(model, fp32_path, heads, tokenizer, max_length=max_length, opset=config.opset, exporter=config.exporter)
        parity: dict[str, Any] = {}
        parity["fp32"] = check_parity(model, fp32_path, tokenizer, texts, heads, atol=config.atol, label="fp32")
        logger.info("fp32 parity: max abs logit diff %.2e, argmax agreement %.4f on %d rows",
                    parity["fp32"]["max_abs_diff"], parity["fp32"]["argmax_agreement"], parity["fp32"]["rows_compared"])
        model_path = fp32_path
        if config.int8:
            int8_path = Path(tmp) / "model.int8.onnx"
            quantize_int8(fp32_path, int8_path)
            parity["int8"] = check_parity(model, int8_path, tokenizer, texts, heads, atol=config.int8_atol,
                                          min_agreement=config.int8_min_agreement, label="int8")
            parity["int8"]["size_ratio"] = int8_path.stat().st_size / fp32_path.stat().st_size
            logger.info("int8 parity: max abs logit diff %.3f, argmax agreement %.4f, size x%.2f",
                        parity["int8"]["max_abs_diff"], parity["int8"]["argmax_agreement"], parity["int8"]["size_ratio"])
            model_path = int8_path
        files = {
            bundle_io.MODEL_FILE: model_path,
            bundle_io.TOKENIZER_FILE: config.model_dir / "tokenizer.json",
            bundle_io.SCHEMA_FILE: _yaml_text(schema.to_dict()),
            bundle_io.POLICY_FILE: policy_path,
            bundle_io.CALIBRATION_FILE: bundle_io.identity_calibration(heads),
        }
        rules = default_rules_bytes()  # the deterministic detectors' rule file, from the shared gitleaks config
        if rules is not None:
            files[DETECTORS_FILE] = rules
        run_id = _first(info, "training_run_id", "run_id", "mlflow_run_id")
        manifest = bundle_io.write_bundle_files(
            config.out_dir, files,
            kind=config.kind,
            training_run_id=run_id,
            mlflow_model_version=_first(info, "mlflow_model_version", "model_version", "registered_model_version"),
            library_versions=bundle_io.library_versions(),
            input_limits=limits,
            quantization="int8" if config.int8 else None,
            parity=parity,
            export={"exporter": config.exporter, "opset": config.opset, "source_model": str(config.model_dir),
                    "policy_source": str(policy_path), "max_length": max_length},
        )
    bundle_io.verify_bundle(config.out_dir)
    archive = bundle_io.pack(config.out_dir) if config.pack else None
    logged = False
    if config.log_to_mlflow:
        logged = log_bundle_to_mlflow(run_id, config.out_dir, manifest, parity)
    return ExportResult(bundle_dir=config.out_dir, archive=archive, manifest=manifest, parity=parity, mlflow_logged=logged)


def _yaml_text(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


# -- CLI ------------------------------------------------------------------------------------------
def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model directory written by tierwise train")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to write (a .tar.gz is written next to it)")
    parser.add_argument("--int8", action="store_true", help="quantise weights to INT8 (dynamic, per channel)")
    parser.add_argument("--policy", type=Path, default=None, help=f"routing policy YAML to bundle (default {DEFAULT_POLICY})")
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per prompt (default: the model's max_length, else 128)")
    parser.add_argument("--max-chars", type=int, default=None, help="characters read per prompt (default 32 x max-length)")
    parser.add_argument("--max-batch", type=int, default=256, help="prompts per inference batch (default 256)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch.onnx exporter (default: dynamo)")
    # defaults come from ExportConfig, so the library and the CLI cannot drift apart
    default = {name: f.default for name, f in ExportConfig.model_fields.items()}
    parser.add_argument("--atol", type=float, default=default["atol"],
                        help=f"fp32 parity: max abs logit difference (default {default['atol']:g})")
    parser.add_argument("--int8-atol", type=float, default=default["int8_atol"],
                        help=f"int8 parity: max abs logit difference (default {default['int8_atol']:g})")
    parser.add_argument("--int8-min-agreement", type=float, default=default["int8_min_agreement"],
                        help=f"int8 parity: minimum argmax agreement rate (default {default['int8_min_agreement']:g})")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                        help=f"data set whose test split adds parity prompts (default {DEFAULT_DATASET}, if present)")
    parser.add_argument("--parity-prompts", type=int, default=256, help="test-split prompts to check (default 256)")
    parser.add_argument("--no-pack", action="store_true", help="do not write the .tar.gz")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the bundle to the model's MLflow run")


def run_export(args: argparse.Namespace) -> int:
    config = ExportConfig(
        model_dir=args.model, out_dir=args.out, int8=args.int8, policy=args.policy, max_length=args.max_length,
        max_chars=args.max_chars, max_batch=args.max_batch, opset=args.opset, exporter=args.exporter,
        atol=args.atol, int8_atol=args.int8_atol, int8_min_agreement=args.int8_min_agreement,
        dataset=args.dataset, dataset_prompts=args.parity_prompts, pack=not args.no_pack,
        log_to_mlflow=not args.no_mlflow,
    )
    result = export_model(config)
    summary = {
        "bundle": str(result.bundle_dir),
        "archive": str(result.archive) if result.archive else None,
        "quantization": result.manifest.quantization,
        "parity": {k: {"max_abs_diff": v["max_abs_diff"], "argmax_agreement": v["argmax_agreement"],
                       "rows": v["rows_compared"]} for k, v in result.parity.items()},
        "mlflow_logged": result.mlflow_logged,
    }
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
