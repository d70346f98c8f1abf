"""Hyper-parameter search with Optuna: ``tierwise tune``.

A study maximises the trainer's validation score (``early_stopping_metric``, calibration-free) over
learning rate, epochs, batch size, max length, per-head loss weights, dropout and frozen layers
(``SearchSpace``). Sampling is TPE, seeded; a ``MedianPruner`` stops a trial whose validation score
after an epoch (or ``eval_every_steps`` evaluation) is below the median of earlier trials at the same
point. Every trial is a nested MLflow run under one parent run for this invocation. A trial that
raises is recorded as FAIL and the study goes on. The best trial's settings are applied to the base
config and written back as YAML (``--out``, default ``training/best.yaml``), ready for
``tierwise train --config training/best.yaml``.

The study lives in an RDB storage (default ``sqlite:///mlruns/optuna.db``), so it survives the
process and can be shared. To run one study on several machines, point every machine at the same
database and study name, e.g.::

    # once per machine, all at the same time; the study is created by the first, loaded by the rest
    tierwise tune --preset quick --trials 20 \\
        --storage postgresql://user:pass@db-host:5432/optuna --study-name tierwise-q1 \\
        --sampler-seed $RANDOM

Each process creates or loads the study (``load_if_exists=True``) and asks the shared storage for
its next trial, so trials are spread over the machines with no coordinator. Give each machine its
own ``--sampler-seed``, or they draw the same start-up trials. Set ``MLFLOW_TRACKING_URI`` to a
shared tracking server as well, so all trial runs land in one place (each machine has its own
parent run, tagged with the study name). The PostgreSQL driver (``psycopg2``) must be installed;
trials left RUNNING by a machine that died are failed by the storage heartbeat.

What is left out: trials do not save model directories or register models, and they never look at
the test or OOD splits: train the best config with ``tierwise train`` for that.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)

from classifier.errors import ConfigError, TierwiseError, TypedConfig
from classifier.training.config import TrainingConfig, add_config_arguments, config_from_args
from classifier.yaml_io import read_yaml

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
DEFAULT_OUT = "training/best.yaml"


Positives = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]


class SearchSpace(TypedConfig):
    """Ranges searched. Pairs are ``(low, high)`` inclusive; tuples of values are categorical.
    ``frozen_layers`` is clipped to the encoder's depth."""

    lr: tuple[PositiveFloat, float] = (1e-5, 2e-4)  # searched on a log scale
    epochs: tuple[PositiveInt, int] = (1, 4)
    batch_size: Positives = (16, 32, 64)
    max_length: Positives = (64, 96, 128)
    head_weight: tuple[NonNegativeFloat, float] = (0.5, 2.0)
    dropout: tuple[NonNegativeFloat, Annotated[float, Field(lt=1.0)]] = (0.0, 0.3)
    frozen_layers: tuple[NonNegativeInt, int] = (0, 4)
    heads: list[str] | None = None
    """Heads whose loss weight is searched; None = every schema head."""

    @field_validator("lr", "epochs", "head_weight", "dropout", "frozen_layers")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"must be [low, high] with low <= high, got {list(value)}")
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        return cls.from_mapping(read_yaml(path, ConfigError, "search space file"), str(path))


def suggest_config(trial, base: TrainingConfig, space: SearchSpace, *, n_layers: int, heads: list[str]) -> TrainingConfig:
    """The base config with this trial's suggestions applied."""
    params = {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "epochs": trial.suggest_int("epochs", *space.epochs),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_size)),
        "max_length": trial.suggest_categorical("max_length", list(space.max_length)),
        "dropout": trial.suggest_float("dropout", *space.dropout),
        "frozen_layers": trial.suggest_int("frozen_layers", min(space.frozen_layers[0], n_layers),
                                           min(space.frozen_layers[1], n_layers)),
    }
    for head in space.heads or heads:
        params[f"head_weight.{head}"] = trial.suggest_float(f"head_weight.{head}", *space.head_weight)
    return apply_params(base, params)


def apply_params(base: TrainingConfig, params: dict[str, Any]) -> TrainingConfig:
    """``base`` with Optuna ``params`` (``head_weight.<head>`` keys fold into ``head_weights``)."""
    changes: dict[str, Any] = {}
    head_weights = dict(base.head_weights)
    for key, value in params.items():
        if key.startswith("head_weight."):
            head_weights[key.split(".", 1)[1]] = float(value)
        else:
            changes[key] = value
    return base.replace(head_weights=head_weights, **changes)


def _public_url(url: str) -> str:
    """The storage URL without credentials, for logs and tags."""
    parsed = urlparse(url)
    if parsed.password or parsed.username:
        host = parsed.hostname or ""
        port = f":{parsed.port}" if parsed.port else ""
        return parsed._replace(netloc=f"{host}{port}").geturl()
    return url


def open_study(storage: str, study_name: str, *, seed: int, pruner_startup_trials: int = 3):
    """Create or load the study (``load_if_exists=True``): what lets several machines share one."""
    import optuna

    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    # the heartbeat fails trials whose process died (a machine lost mid-trial) instead of
    # leaving them RUNNING for ever; Optuna flags the argument as experimental
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180)
    return optuna.create_study(
        storage=rdb,
        study_name=study_name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner_startup_trials, n_warmup_steps=1),
        load_if_exists=True,
    )


class Tuner:
    """Runs trials of one study. sklearn-shaped: ``fit()`` returns self; ``study_``,
    ``best_config_``, ``best_value_``, ``parent_run_id_`` afterwards."""

    def __init__(
        self,
        base: TrainingConfig,
        *,
        n_trials: int,
        storage: str = DEFAULT_STORAGE,
        study_name: str | None = None,
        space: SearchSpace | None = None,
        sampler_seed: int | None = None,
        timeout: float | None = None,
        out: str | Path | None = DEFAULT_OUT,
        trainer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if n_trials < 1:
            raise ConfigError(f"tune: --trials must be >= 1, got {n_trials}")
        self.base = base
        self.n_trials = n_trials
        self.storage = storage
        self.study_name = study_name or f"{base.name}-tune"
        self.space = space or SearchSpace()
        self.sampler_seed = base.seed if sampler_seed is None else sampler_seed
        self.timeout = timeout
        self.out = out
        # tests inject a schema / tiny model here; the real search builds from base.encoder
        self.trainer_kwargs = dict(trainer_kwargs or {})

    def fit(self, frame=None) -> Tuner:
        import optuna

        from classifier.data.reader import read_dataset
        from classifier.data.schema import LabelSchema
        from classifier.training.trainer import encoder_num_layers

        base = self.base
        schema = self.trainer_kwargs.get("schema") or LabelSchema.from_yaml(base.schema)
        frame = read_dataset(base.data, require_text=True) if frame is None else frame
        model = self.trainer_kwargs.get("model")
        n_layers = int(model.encoder.config.num_hidden_layers) if model is not None else encoder_num_layers(base)
        self.study_ = open_study(self.storage, self.study_name, seed=self.sampler_seed)
        parent = None
        if base.track:
            from classifier.tracking import TrackedRun

            parent = TrackedRun(base.experiment, run_name=f"tune-{self.study_name}", tags={
                "tierwise.command": "tune", "optuna.study": self.study_name,
                "optuna.storage": _public_url(self.storage),
            })
            parent.log_params({**base.to_dict(), "tune.trials": self.n_trials,
                               "tune.sampler_seed": self.sampler_seed, "tune.space": self.space.model_dump()})
        self.parent_run_id_ = parent.run_id if parent else None

        def objective(trial: optuna.Trial) -> float:
            from classifier.tracking import TrackedRun
            from classifier.training.trainer import Trainer

            cfg = suggest_config(trial, base, self.space, n_layers=n_layers, heads=schema.head_names)
            # trials select on validation only: no test/OOD look, no model dir, no registration
            cfg = cfg.replace(name=f"{self.study_name}-trial-{trial.number}", eval_splits=[], resume_from=None,
                              registered_model=None, checkpoint_every_steps=0)
            run = None
            if parent is not None:
                run = TrackedRun(base.experiment, run_name=f"trial-{trial.number}", parent_run_id=parent.run_id,
                                 tags={"tierwise.command": "tune-trial", "optuna.study": self.study_name,
                                       "optuna.trial": str(trial.number)})
            trial.set_user_attr("mlflow_run_id", run.run_id if run else None)

            def report(n_eval: int, score: float) -> None:
                if math.isfinite(score):
                    trial.report(score, n_eval)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation score {score:.4f} after evaluation {n_eval} is below the median")

            kwargs = dict(self.trainer_kwargs)
            if "model" in kwargs:
                # each trial starts from the same initial weights, not the previous trial's
                import copy

                kwargs["model"] = copy.deepcopy(kwargs["model"])
            try:
                trainer = Trainer(cfg, run=run, on_evaluate=report, save_model=False, **kwargs).fit(frame)
                score = trainer.best_score_
                if not math.isfinite(score):
                    raise TierwiseError(f"trial {trial.number}: no finite validation score (no labelled validation rows?)")
                if run is not None:
                    run.log_metrics({"trial/value": score})
            except BaseException as exc:
                if run is not None:
                    run.__exit__(type(exc), exc, None)
                raise
            if run is not None:
                run.end("FINISHED")
            return score

        try:
            # catch=Exception: a crashed trial is recorded as FAIL and the search goes on
            self.study_.optimize(objective, n_trials=self.n_trials, timeout=self.timeout, catch=(Exception,))
            self._conclude(parent)
        except BaseException as exc:
            if parent is not None:
                parent.__exit__(type(exc), exc, None)
            raise
        if parent is not None:
            parent.end("FINISHED")
        return self

    def _conclude(self, parent) -> None:
        import optuna

        done = [t for t in self.study_.trials if t.state == optuna.trial.TrialState.COMPLETE]
        counts = {s.name: sum(t.state == s for t in self.study_.trials) for s in optuna.trial.TrialState}
        log.info("study %r: %s", self.study_name, {k: v for k, v in counts.items() if v})
        if not done:
            raise TierwiseError(
                f"study {self.study_name!r}: no trial completed ({ {k: v for k, v in counts.items() if v} }); "
                "see the log for the failed trials' errors"
            )
        best = self.study_.best_trial
        self.best_value_ = float(best.value)
        self.best_trial_number_ = best.number
        self.best_config_ = apply_params(self.base, best.params)
        if self.out is not None:
            self.write_best(self.out)
        if parent is not None:
            parent.log_metrics({"best/value": self.best_value_, "trials/complete": len(done),
                                "trials/pruned": counts.get("PRUNED", 0), "trials/failed": counts.get("FAIL", 0)})
            parent.log_params({f"best.{k}": v for k, v in best.params.items()})
            parent.log_text(self.best_config_.to_yaml(), "best.yaml")

    def write_best(self, path: str | Path) -> Path:
        path = Path(path)
        header = (f"# best config of Optuna study {self.study_name!r} (trial {self.best_trial_number_}, "
                  f"validation {self.base.early_stopping_metric} = {self.best_value_:.4f});\n"
                  f"# written by 'tierwise tune'. Train it with: tierwise train --config {path}\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + self.best_config_.to_yaml(), encoding="utf-8")
        return path


# -- CLI -----------------------------------------------------------------------------------------
def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=int, default=20, help="trials this process runs (default 20)")
    group.add_argument("--storage", default=DEFAULT_STORAGE,
                       help=f"Optuna RDB URL shared by all workers (default {DEFAULT_STORAGE})")
    group.add_argument("--study-name", default=None, help="study to create or join (default <config name>-tune)")
    group.add_argument("--out", default=DEFAULT_OUT, help=f"where the best config is written (default {DEFAULT_OUT})")
    group.add_argument("--space", default=None, help="YAML search space overriding the default ranges")
    group.add_argument("--sampler-seed", type=int, default=None,
                       help="TPE seed (default: the config seed); give each machine its own")
    group.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")


def run_tune(args: argparse.Namespace) -> int:
    base = config_from_args(args)
    space = SearchSpace.from_yaml(args.space) if args.space else None
    tuner = Tuner(base, n_trials=args.trials, storage=args.storage, study_name=args.study_name, space=space,
                  sampler_seed=args.sampler_seed, timeout=args.timeout, out=args.out).fit()
    out = sys.stdout
    out.write(f"study {tuner.study_name!r} at {_public_url(tuner.storage)}: {len(tuner.study_.trials)} trials\n")
    out.write(f"best trial {tuner.best_trial_number_}: validation {base.early_stopping_metric} = {tuner.best_value_:.4f}\n")
    for key, value in sorted(tuner.study_.best_trial.params.items()):
        out.write(f"  {key} = {value}\n")
    if args.out:
        out.write(f"best config written to {args.out}\n")
    if tuner.parent_run_id_:
        out.write(f"mlflow parent run: {tuner.parent_run_id_}\n")
    return 0
