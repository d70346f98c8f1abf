"""Distil the fine-tuned encoder into the sub-millisecond static-embedding student.

Recipe: (1) embed every vocabulary token with the teacher and reduce with PCA (the student's
initial token table); (2) run the teacher over the training rows once for soft targets; (3) train
the student on the labels and the teacher's softened distribution (KD), early-stopping on the
validation split; (4) build its ONNX graph, check parity against the torch student, and write a
bundle in the same format as the teacher's. Quality is reported next to the teacher's on every
split, with per-head argmax agreement. It does not calibrate (``tierwise calibrate`` does, on the
bundle) and leaves the teacher untouched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from classifier.errors import ConfigError, DataError, ExportValidationError

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Settings of ``tierwise distill``. Validated on construction."""

    teacher: str = "models/default"
    data: str = "data/build"
    out: str = "bundles/student"
    policy: str = "serving/policy.example.yaml"
    dim: int = 256
    hidden: int = 256
    # context convolution over the token vectors (0 channels: the plain bag-of-vectors student)
    context_channels: int = 0
    context_kernel: int = 3
    context_dilation: int = 1
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    embedding_lr: float = 2e-2
    weight_decay: float = 0.0
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    dropout: float = 0.1
    head_weights: dict[str, float] = field(default_factory=lambda: {"sensitivity": 2.0})
    max_length: int = 128
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    patience: int = 3
    seed: int = 13
    teacher_batch_size: int = 64
    eval_splits: list[str] = field(default_factory=lambda: ["validation", "test", "ood"])

    def __post_init__(self) -> None:
        positive = {"dim": self.dim, "epochs": self.epochs, "batch_size": self.batch_size,
                    "max_length": self.max_length, "teacher_batch_size": self.teacher_batch_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"distill config: {name} must be a positive integer, got {value!r}")
        if self.hidden < 0:
            raise ConfigError(f"distill config: hidden must be >= 0, got {self.hidden}")
        if self.context_channels < 0:
            raise ConfigError(f"distill config: context_channels must be >= 0 (0: no context), got {self.context_channels}")
        if self.context_kernel < 1 or self.context_kernel % 2 == 0:
            raise ConfigError(f"distill config: context_kernel must be an odd number >= 1, got {self.context_kernel}")
        if self.context_dilation < 1:
            raise ConfigError(f"distill config: context_dilation must be >= 1, got {self.context_dilation}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ConfigError(f"distill config: kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.kd_temperature <= 0 or self.lr <= 0 or self.embedding_lr <= 0:
            raise ConfigError("distill config: kd_temperature, lr and embedding_lr must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"distill config: dropout must be in [0, 1), got {self.dropout}")


def _pad(seqs: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(s) for s in seqs))
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    tokenizer.no_padding()
    return [e.ids for e in tokenizer.encode_batch(texts)]


def _batched_logits(model, seqs: list[list[int]], pad_id: int, batch_size: int, desc: str) -> dict[str, np.ndarray]:
    """Run a torch model over token sequences, longest first, and return logits in input order."""
    import torch
    from tqdm.auto import tqdm

    order = np.argsort([-len(s) for s in seqs], kind="stable")
    outs: dict[str, list[np.ndarray]] = {n: [] for n in model.head_names}
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(seqs), batch_size), desc=desc, leave=False):
            idx = order[start : start + batch_size]
            ids, mask = _pad([seqs[i] for i in idx], pad_id)
            for name, z in zip(model.head_names, model(torch.from_numpy(ids), torch.from_numpy(mask)), strict=True):
                outs[name].append(z.float().numpy())
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return {n: np.concatenate(v)[inverse] for n, v in outs.items()}


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _label_matrix(frame, schema) -> dict[str, np.ndarray]:
    out = {}
    for head in schema.heads:
        col = frame[head.column] if head.column in frame.columns else None
        labels = np.full(len(frame), -100, dtype=np.int64)
        if col is not None:
            for i, v in enumerate(col.tolist()):
                if isinstance(v, str):
                    labels[i] = head.index(v)
        out[head.name] = labels
    return out


def _selection_score(metrics: dict[str, dict[str, float]]) -> float:
    """Mean over heads of AUROC (binary heads) or macro-F1: the same calibration-free kind of
    number the trainer early-stops on."""
    vals = [m.get("auroc", m.get("macro_f1")) for m in metrics.values()]
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


class StudentDistiller:
    """sklearn-shaped: ``fit()`` trains the student and returns self; learned state ends in ``_``."""

    def __init__(self, config: DistillConfig) -> None:
        self.config = config

    def fit(self) -> StudentDistiller:
        import pandas as pd
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        from classifier.evaluation.metrics import evaluate_heads
        from classifier.training.model import MultiHeadEncoder, load_tokenizer
        from classifier.training.student import StaticStudent

        cfg = self.config
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        t0 = time.perf_counter()
        data_path = Path(cfg.data)
        data_file = data_path / "dataset.parquet" if data_path.is_dir() else data_path
        if not data_file.is_file():
            raise DataError(f"no data set at {data_file}; run 'tierwise data build' first or pass --data")
        frame = pd.read_parquet(data_file)
        teacher = MultiHeadEncoder.load(cfg.teacher)
        schema = teacher.schema
        tokenizer = load_tokenizer(cfg.teacher, max_length=cfg.max_length)
        pad_id = tokenizer.token_to_id("[PAD]") or 0

        train = frame[frame["split"] == "train"].reset_index(drop=True)
        if cfg.max_train_rows and len(train) > cfg.max_train_rows:
            train = train.sample(n=cfg.max_train_rows, random_state=cfg.seed).reset_index(drop=True)
        splits = {s: frame[frame["split"] == s].reset_index(drop=True) for s in cfg.eval_splits}
        splits = {s: f for s, f in splits.items() if len(f)}
        if cfg.max_eval_rows:
            splits = {s: (f.sample(n=cfg.max_eval_rows, random_state=cfg.seed).reset_index(drop=True)
                          if len(f) > cfg.max_eval_rows else f) for s, f in splits.items()}
        if "validation" not in splits:
            raise DataError("the data set has no 'validation' split to early-stop the student on")

        log.info("distil: %d training rows, teacher %s", len(train), cfg.teacher)
        train_seqs = _encode(tokenizer, train["text"].tolist())
        split_seqs = {s: _encode(tokenizer, f["text"].tolist()) for s, f in splits.items()}
        # Teacher inference is the slow part (minutes on CPU); its logits are cached beside the
        # teacher, keyed by the rows and the max length, so re-running the student is seconds.
        key = hashlib.sha256(json.dumps([cfg.max_length, train["id"].tolist(),
                                         {s: f["id"].tolist() for s, f in splits.items()}]).encode()).hexdigest()[:16]
        cache = Path(cfg.teacher) / f"distill_cache_{key}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                teacher_train = {n: z[f"train/{n}"] for n in teacher.head_names}
                teacher_eval = {s: {n: z[f"{s}/{n}"] for n in teacher.head_names} for s in splits}
            log.info("teacher logits read from %s", cache)
        else:
            teacher_train = _batched_logits(teacher, train_seqs, pad_id, cfg.teacher_batch_size, "teacher (train)")
            teacher_eval = {s: _batched_logits(teacher, q, pad_id, cfg.teacher_batch_size, f"teacher ({s})")
                            for s, q in split_seqs.items()}
            arrays = {f"train/{n}": v for n, v in teacher_train.items()}
            arrays.update({f"{s}/{n}": v for s, d in teacher_eval.items() for n, v in d.items()})
            np.savez(cache, **arrays)
        self.teacher_seconds_ = time.perf_counter() - t0

        special = [tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")]
        table = self._token_table(teacher, tokenizer, special)
        student = StaticStudent(table, schema, hidden=cfg.hidden, dropout=cfg.dropout,
                                context_channels=cfg.context_channels, context_kernel=cfg.context_kernel,
                                context_dilation=cfg.context_dilation)
        del teacher

        labels = _label_matrix(train, schema)
        soft = {n: _softmax(z / cfg.kd_temperature) for n, z in teacher_train.items()}
        emb_params = list(student.embedding.parameters())
        other = [p for n, p in student.named_parameters() if not n.startswith("embedding")]
        # The token table needs a larger step than the trunk: each row sees few gradients.
        opt = torch.optim.Adam([{"params": emb_params, "lr": cfg.embedding_lr},
                                {"params": other, "lr": cfg.lr, "weight_decay": cfg.weight_decay}])
        # Class weights from label frequencies, so rare classes (code, credential) are not drowned.
        class_w = {}
        for head in schema.heads:
            y = labels[head.name]
            counts = np.bincount(y[y >= 0], minlength=head.num_classes).astype(np.float64)
            w = np.where(counts > 0, counts.sum() / (head.num_classes * np.maximum(counts, 1)), 0.0)
            class_w[head.name] = torch.tensor(np.sqrt(w), dtype=torch.float32)

        best_score, best_state, bad_epochs, history = -np.inf, None, 0, []
        rng = np.random.default_rng(cfg.seed)
        for epoch in range(cfg.epochs):
            student.train()
            order = rng.permutation(len(train_seqs))
            total, n_batches = 0.0, 0
            bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"student epoch {epoch + 1}", leave=False)
            for start in bar:
                idx = order[start : start + cfg.batch_size]
                ids, mask = _pad([train_seqs[i] for i in idx], pad_id)
                outs = student(torch.from_numpy(ids), torch.from_numpy(mask))
                loss = torch.zeros(())
                for head, z in zip(schema.heads, outs, strict=True):
                    y = torch.from_numpy(labels[head.name][idx])
                    hw = float(cfg.head_weights.get(head.name, 1.0))
                    if (y >= 0).any():
                        loss = loss + hw * (1 - cfg.kd_weight) * F.cross_entropy(z, y, weight=class_w[head.name], ignore_index=-100)
                    target = torch.from_numpy(soft[head.name][idx])
                    kd = F.kl_div(F.log_softmax(z / cfg.kd_temperature, dim=1), target, reduction="batchmean")
                    loss = loss + hw * cfg.kd_weight * kd * cfg.kd_temperature**2
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
                n_batches += 1
                bar.set_postfix(loss=f"{total / n_batches:.4f}")
            val_logits = _batched_logits(student, split_seqs["validation"], pad_id, 512, "student (validation)")
            val_metrics = evaluate_heads(schema, splits["validation"], {n: _softmax(z) for n, z in val_logits.items()})
            score = _selection_score(val_metrics)
            history.append({"epoch": epoch + 1, "loss": total / max(n_batches, 1), "validation_score": score})
            log.info("student epoch %d: loss %.4f, validation score %.4f", epoch + 1, total / max(n_batches, 1), score)
            if score > best_score + 1e-4:
                best_score, bad_epochs = score, 0
                best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    break
        if best_state is not None:
            student.load_state_dict(best_state)
        student.eval()

        report: dict[str, dict] = {}
        for s, f in splits.items():
            st = _batched_logits(student, split_seqs[s], pad_id, 512, f"student ({s})")
            te = teacher_eval[s]
            report[s] = {
                "n": len(f),
                "student": evaluate_heads(schema, f, {n: _softmax(z) for n, z in st.items()}),
                "teacher": evaluate_heads(schema, f, {n: _softmax(z) for n, z in te.items()}),
                "agreement": {n: float(np.mean(st[n].argmax(1) == te[n].argmax(1))) for n in schema.head_names},
            }
        self.student_ = student
        self.tokenizer_ = tokenizer
        self.schema_ = schema
        self.history_ = history
        self.report_ = report
        self.best_validation_score_ = best_score
        self.seconds_ = time.perf_counter() - t0
        return self

    def _token_table(self, teacher, tokenizer, special: list[int]) -> np.ndarray:
        """The PCA'd token table, cached beside the teacher like its logits (keyed by the weights
        file's size and mtime, the width and the seed), so trying student variants skips it."""
        from classifier.training.student import token_table_from_teacher

        cfg = self.config
        weights = Path(cfg.teacher) / "model.safetensors"
        stamp = [weights.stat().st_size, weights.stat().st_mtime_ns] if weights.is_file() else None
        key = hashlib.sha256(json.dumps([stamp, cfg.dim, cfg.seed, tokenizer.get_vocab_size()]).encode()).hexdigest()[:16]
        cache = Path(cfg.teacher) / f"distill_table_{key}.npy"
        if stamp is not None and cache.is_file():
            log.info("token table read from %s", cache)
            return np.load(cache)
        table = token_table_from_teacher(teacher, tokenizer.get_vocab_size(), special, cfg.dim, seed=cfg.seed)
        if stamp is not None:
            np.save(cache, table)
        return table

    def export(self, out: str | Path | None = None) -> Path:
        """Write the student bundle (ONNX + tokenizer + schema + policy + manifest) and check parity."""
        import onnxruntime as ort
        import torch

        from classifier.serving.bundle import write_bundle

        cfg = self.config
        out = Path(out or cfg.out)
        onnx_model = self.student_.to_onnx()
        probe = ["Write a haiku about autumn.", "My AWS key AKIAIOSFODNN7EXAMPLE leaks, help",
                 "Solve 3x + 5 = 20 and explain each step carefully please. " * 4]
        self.tokenizer_.enable_padding(pad_id=self.tokenizer_.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        enc = self.tokenizer_.encode_batch(probe)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.inference_mode():
            want = [z.numpy() for z in self.student_(torch.from_numpy(ids), torch.from_numpy(mask))]
        diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True))
        agree = all(bool((g.argmax(1) == w.argmax(1)).all()) for g, w in zip(got, want, strict=True))
        if diff > 1e-4 or not agree:
            raise ExportValidationError(f"student ONNX graph disagrees with torch: max abs diff {diff:.2e}, argmax agree {agree}")
        parity = {"max_abs_logit_diff": diff, "argmax_agreement": 1.0 if agree else 0.0, "n_prompts": len(probe)}
        teacher_info_path = Path(cfg.teacher) / "model_info.json"
        teacher_info = json.loads(teacher_info_path.read_text()) if teacher_info_path.is_file() else {}
        from classifier.serving.detectors import DETECTORS_FILE, default_rules_bytes

        rules = default_rules_bytes()  # the deterministic detectors' rule file, from the shared gitleaks config
        path = write_bundle(
            out,
            files={DETECTORS_FILE: rules} if rules is not None else None,
            onnx_bytes=onnx_model.SerializeToString(),
            tokenizer_path=Path(cfg.teacher) / "tokenizer.json",
            schema=self.schema_,
            policy_path=Path(cfg.policy) if cfg.policy else None,
            kind="student",
            max_length=cfg.max_length,
            training_run_id=teacher_info.get("run_id") or teacher_info.get("training_run_id"),
            mlflow_model_version=teacher_info.get("mlflow_model_version"),
            extra={"parity": parity, "distillation": {"config": asdict(cfg), "teacher": str(cfg.teacher),
                                                       "history": self.history_}},
        )
        from classifier.serving.bundle import pack

        pack(path)
        (path.parent / f"{path.name}.distill_report.json").write_text(
            json.dumps({"report": self.report_, "history": self.history_, "seconds": self.seconds_}, indent=2))
        return path


def format_report(report: dict, schema) -> str:
    """A Markdown table: student vs teacher per split and head, with agreement."""
    lines = ["| split | head | metric | teacher | student | agreement |", "|---|---|---|---|---|---|"]
    for split, r in report.items():
        for head in schema.heads:
            keys = ["auroc", "macro_f1"] if head.num_classes == 2 else ["macro_f1", "accuracy"]
            if head.negative_class:
                keys += [f"recall_{c}" for c in head.classes if c != head.negative_class]
            for k in keys:
                t = r["teacher"].get(head.name, {}).get(k)
                s = r["student"].get(head.name, {}).get(k)
                if t is None and s is None:
                    continue
                fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
                lines.append(f"| {split} | {head.name} | {k} | {fmt(t)} | {fmt(s)} | {r['agreement'][head.name]:.3f} |")
    return "\n".join(lines)


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DistillConfig()
    parser.add_argument("--teacher", default=defaults.teacher, help="fine-tuned model directory (tierwise train output)")
    parser.add_argument("--data", default=defaults.data, help="data build directory or dataset.parquet")
    parser.add_argument("--out", default=defaults.out, help="student bundle directory to write")
    parser.add_argument("--policy", default=defaults.policy, help="policy YAML to ship in the bundle")
    for name in ("dim", "hidden", "context_channels", "context_kernel", "context_dilation", "epochs", "batch_size", "max_length", "max_train_rows", "max_eval_rows",
                 "patience", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=getattr(defaults, name))
    for name in ("lr", "embedding_lr", "kd_weight", "kd_temperature", "dropout"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=getattr(defaults, name))
    parser.add_argument("--head-weights", type=_parse_weights, default=defaults.head_weights,
                        help="per-head loss weights, e.g. sensitivity=2,tier=1 (default sensitivity=2)")


def _parse_weights(spec: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--head-weights: {part!r} is not HEAD=NUMBER") from None
        if not sep or out[name.strip()] < 0:
            raise argparse.ArgumentTypeError(f"--head-weights: {part!r} is not HEAD=NUMBER with NUMBER >= 0")
    return out


def run_distill(args: argparse.Namespace) -> int:
    fields = DistillConfig.__dataclass_fields__
    config = DistillConfig(**{k: v for k, v in vars(args).items() if k in fields})
    distiller = StudentDistiller(config).fit()
    path = distiller.export()
    sys.stdout.write(f"student bundle written to {path} in {distiller.seconds_:.0f}s\n\n")
    sys.stdout.write(format_report(distiller.report_, distiller.schema_) + "\n")
    return 0
