"""Distil the fine-tuned encoder into the sub-millisecond static-embedding student.

Recipe: (1) embed every vocabulary token with the teacher and reduce with PCA (the student's
initial token table); (2) run the teacher over the training rows once for soft targets; (3) train
the student on the labels and the teacher's softened distribution (KD) with the one training loop
(``classifier.training.trainer.Trainer``: the same loss, schedule, early stopping and
checkpoint/resume as the teacher's), early-stopping on the validation split; (4) build its ONNX
graph, check parity against the torch student, and write a bundle in the same format as the
teacher's. Quality is reported next to the teacher's on every split, with per-head argmax
agreement. It does not calibrate (``tierwise calibrate`` does, on the bundle) and leaves the
teacher untouched. Settings: ``classifier.training.config.DistillConfig``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from classifier.errors import DataError, ExportValidationError
from classifier.numeric import softmax
from classifier.training.config import DistillConfig, add_config_arguments, config_from_args
from classifier.training.trainer import Trainer, predict_heads

log = logging.getLogger(__name__)


class StudentDistiller(Trainer):
    """The student trained by the teacher's loop. sklearn-shaped: ``fit()`` returns self.

    What differs from the teacher: the model (a ``StaticStudent`` whose token table is distilled
    from the teacher), the soft targets (the teacher's softened distribution on every row, not the
    data's ``<column>_soft``), two optimiser groups (the token table takes a larger step: each of
    its rows sees few gradients) and a plain shuffled batch order. Learned state as the
    ``Trainer``'s, plus ``report_`` (per split: student and teacher metrics, argmax agreement),
    ``teacher_seconds_`` and ``seconds_``.
    """

    def __init__(self, config: DistillConfig) -> None:
        super().__init__(config, save_model=False)

    def fit(self, frame=None, *, max_steps: int | None = None) -> StudentDistiller:
        t0 = time.perf_counter()
        super().fit(frame, max_steps=max_steps)
        if self.interrupted_:
            return self
        shutil.rmtree(self.config.model_dir, ignore_errors=True)  # the checkpoints served their purpose
        self.report_ = {}
        for split, metrics in self.metrics_.items():
            student, teacher = self.eval_probs_[split], self._teacher_eval[split]
            self.report_[split] = {
                "n": len(next(iter(student.values()))),
                "student": metrics,
                "teacher": self._teacher_metrics[split],
                "agreement": {n: float(np.mean(student[n].argmax(1) == teacher[n].argmax(1))) for n in self.schema_.head_names},
            }
        self.best_validation_score_ = self.best_score_
        self.seconds_ = time.perf_counter() - t0
        return self

    # -- what differs from the teacher -----------------------------------------------------------
    def _load_schema(self):
        from classifier.data.schema import LabelSchema

        return LabelSchema.from_yaml(Path(self.config.teacher) / "schema.yaml")

    def _build(self, frame, train, valid):
        from classifier.data.reader import select_split
        from classifier.evaluation.metrics import evaluate_heads
        from classifier.training.dataset import PromptDataset
        from classifier.training.model import MultiHeadEncoder, load_tokenizer
        from classifier.training.student import StaticStudent

        cfg = self.config
        t0 = time.perf_counter()
        teacher = MultiHeadEncoder.load(cfg.teacher)
        tokenizer = load_tokenizer(cfg.teacher, max_length=cfg.max_length)
        if valid.empty:
            raise DataError(f"the data set has no {cfg.validation_split!r} split to early-stop the student on")
        splits = {cfg.validation_split: valid}
        splits.update({s: select_split(frame, s, cfg.max_eval_rows, cfg.seed) for s in cfg.eval_splits})
        splits = {s: f for s, f in splits.items() if len(f)}
        log.info("distil: %d training rows, teacher %s", len(train), cfg.teacher)
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
            def logits(part):
                return predict_heads(teacher, PromptDataset(part["text"].tolist(), tokenizer, cfg.max_length),
                                     cfg.teacher_batch_size, softmax=False)

            teacher_train = logits(train)
            teacher_eval = {s: logits(f) for s, f in splits.items()}
            arrays = {f"train/{n}": v for n, v in teacher_train.items()}
            arrays.update({f"{s}/{n}": v for s, d in teacher_eval.items() for n, v in d.items()})
            np.savez(cache, **arrays)
        self.teacher_seconds_ = time.perf_counter() - t0
        self._teacher_soft = {n: softmax(z, cfg.soft_temperature).astype(np.float32) for n, z in teacher_train.items()}
        self._teacher_eval = teacher_eval
        self._teacher_metrics = {s: evaluate_heads(self.schema_, f, {n: softmax(z) for n, z in teacher_eval[s].items()})
                                 for s, f in splits.items()}

        special = [tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")]
        table = self._token_table(teacher, tokenizer, special)
        student = StaticStudent(table, self.schema_, hidden=cfg.hidden, dropout=cfg.dropout,
                                context_channels=cfg.context_channels, context_kernel=cfg.context_kernel,
                                context_dilation=cfg.context_dilation)
        return student, tokenizer

    def _datasets(self, train, valid):
        from classifier.training.dataset import PromptDataset, head_labels

        cfg = self.config
        texts = train["text"].tolist()
        labels = head_labels(self.schema_, train)
        soft = {n: (p, np.ones(len(train), dtype=bool)) for n, p in self._teacher_soft.items()}
        if cfg.traffic_shapes > 0:
            from classifier.training.traffic import with_traffic_shapes

            texts, labels, soft = with_traffic_shapes(train, texts, labels, soft, schema=self.schema_,
                                                      tokenizer=self.tokenizer_, config=cfg)
        train_ds = PromptDataset(texts, self.tokenizer_, cfg.max_length, labels=labels, soft=soft,
                                 view=cfg.view)
        return train_ds, PromptDataset(valid["text"].tolist(), self.tokenizer_, cfg.max_length,
                                       view=cfg.view)

    def _optimizer(self, params):
        import torch

        cfg = self.config
        # The token table needs a larger step than the trunk: each row sees few gradients.
        emb = [p for n, p in params if n.startswith("embedding")]
        other = [p for n, p in params if not n.startswith("embedding")]
        return torch.optim.Adam([{"params": emb, "lr": cfg.embedding_lr},
                                 {"params": other, "lr": cfg.lr, "weight_decay": cfg.weight_decay}])

    def _epoch_batches(self, epoch: int, lengths: np.ndarray) -> list[np.ndarray]:
        """Plain shuffled batches: epoch e takes the (e+1)-th permutation of one seeded stream (a
        pure function of (seed, epoch), so a resumed run sees the same order)."""
        rng = np.random.default_rng(self.config.seed)
        for _ in range(epoch + 1):
            order = rng.permutation(len(lengths))
        return [order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]

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
        onnx_model = self.model_.to_onnx()
        probe = ["Write a haiku about autumn.", "My AWS key AKIAIOSFODNN7EXAMPLE leaks, help",
                 "Solve 3x + 5 = 20 and explain each step carefully please. " * 4]
        self.tokenizer_.enable_padding(pad_id=self.tokenizer_.token_to_id("[PAD]") or 0, pad_token="[PAD]")
        enc = self.tokenizer_.encode_batch(probe)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.inference_mode():
            want = [z.numpy() for z in self.model_(torch.from_numpy(ids), torch.from_numpy(mask))]
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
            extra={"parity": parity, "distillation": {"config": cfg.to_dict(), "teacher": str(cfg.teacher),
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
    add_config_arguments(parser, DistillConfig)


def run_distill(args: argparse.Namespace) -> int:
    distiller = StudentDistiller(config_from_args(args, DistillConfig)).fit()
    path = distiller.export()
    sys.stdout.write(f"student bundle written to {path} in {distiller.seconds_:.0f}s\n\n")
    sys.stdout.write(format_report(distiller.report_, distiller.schema_) + "\n")
    return 0
