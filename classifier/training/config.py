"""``TrainingConfig``: every setting of ``tierwise train``, validated in one place.

A config comes from a YAML file (the shipped presets, package data under
``classifier/training/presets/``: ``default.yaml`` is the full preset, ``quick.yaml`` a few-minute
CPU preset), from keyword arguments, or from both plus command
line overrides: ``add_config_arguments`` generates one ``--flag`` per dataclass field, so a new
field is overridable without touching the CLI. Values from YAML and the command line arrive as
strings or plain YAML values and are coerced to the field's type in ``__post_init__``; an invalid
value raises ``ConfigError`` naming the field and what it accepts.

What is left out: the hyper-parameter *search space* (``classifier.training.hpo``) and the label
schema itself (``classifier.data.schema``); this module only points at the schema file.
"""

from __future__ import annotations

import argparse
import copy
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any, Union

import yaml

from classifier.data.schema import DEFAULT_SCHEMA_PATH
from classifier.errors import ConfigError
from classifier.yaml_io import read_yaml

# ``--preset NAME`` is the shipped ``presets/NAME.yaml`` (package data; pip unpacks wheels, so a real file)
PRESET_DIR = Path(str(files("classifier.training").joinpath("presets")))

EARLY_STOPPING_METRICS = ("auroc_or_macro_f1", "macro_f1", "auroc", "accuracy")
CLASS_WEIGHT_MODES = ("balanced", "none")


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its ``--help`` text (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainingConfig:
    """Settings of one training run. All paths are relative to the working directory."""

    # -- what and where -------------------------------------------------------------------------
    name: str = _f("teacher", "run name; also the default output directory models/<name>")
    data: str = _f("data/build", "build directory holding dataset.parquet (with a split column), or the parquet file")
    schema: str = _f(str(DEFAULT_SCHEMA_PATH), "label schema YAML (default: the shipped one)")
    encoder: str | None = _f(None, "Hugging Face model dir (config.json + weights) or tierwise model dir; "
                             "none = the pretrained all-MiniLM-L6-v2")
    tokenizer: str | None = _f(None, "tokenizer.json or a directory holding one; none = the encoder dir's, else MiniLM's")
    output_dir: str | None = _f(None, "model directory to write; none = models/<name>")
    resume_from: str | None = _f(None, "checkpoint directory to resume from, or 'auto' for the newest under the output dir")

    # -- inputs ---------------------------------------------------------------------------------
    max_length: int = _f(128, "tokens per prompt (longer prompts are truncated)")
    max_train_rows: int | None = _f(None, "seeded subsample of the training split; none = all rows")
    max_eval_rows: int | None = _f(None, "seeded subsample of the validation and evaluation splits; none = all rows")
    validation_split: str = _f("validation", "split used for early stopping and model selection")
    eval_splits: list[str] = _f(["test", "ood"], "splits evaluated at the end (comma-separated)")

    # -- optimisation ---------------------------------------------------------------------------
    batch_size: int = _f(32, "training batch size")
    eval_batch_size: int = _f(128, "inference batch size for validation and evaluation")
    epochs: int = _f(3, "passes over the training split")
    lr: float = _f(5e-5, "AdamW peak learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = _f(0.1, "share of steps with linear warm-up; then linear decay to 0")
    grad_clip: float = _f(1.0, "max global gradient norm; 0 disables clipping")
    dropout: float = _f(0.1, "dropout on the pooled embedding")
    frozen_layers: int = _f(0, "freeze the embeddings and the first N transformer layers (0 = train everything)")
    head_weights: dict[str, float] = _f({}, "loss weight per head, e.g. '{tier: 2.0}'; heads not named weigh 1.0")
    class_weights: Any = _f("balanced", "'balanced' (inverse class frequency in the training split), 'none', or "
                            "'{head: balanced | none | {class: weight} | [weights in class order]}'")
    soft_weight: float = _f(0.5, "share of a head's loss taken by KL to <column>_soft targets where a row has them")

    # -- early stopping and checkpoints ---------------------------------------------------------
    patience: int = _f(2, "validations without improvement before stopping; 0 disables early stopping")
    early_stopping_metric: str = _f(
        "auroc_or_macro_f1", "mean over heads on the validation split of: auroc_or_macro_f1 (AUROC for binary "
        "and gate heads, macro-F1 otherwise), macro_f1, auroc or accuracy; calibration-free")
    eval_every_steps: int = _f(0, "validate every N optimiser steps as well as at epoch ends (0 = epoch ends only)")
    checkpoint_every_steps: int = _f(0, "write a resumable checkpoint every N steps (0 = at epoch ends only)")
    seed: int = _f(13, "seed of torch, numpy, random and the data order")
    threads: int = _f(2, "torch CPU threads")

    # -- tracking -------------------------------------------------------------------------------
    track: bool = _f(True, "log to MLflow (MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    experiment: str = _f("tierwise", "MLflow experiment name")
    registered_model: str | None = _f("tierwise-teacher", "MLflow registered model name; none = register nothing")
    progress: bool = _f(True, "show tqdm progress bars")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._validate()

    # -- validation -----------------------------------------------------------------------------
    def _validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"training config: {name} {what}, got {getattr(self, name)!r}")

        need(bool(self.name.strip()), "name", "must be a non-empty string")
        need(bool(self.data.strip()), "data", "must name a build directory or a parquet file")
        for name in ("max_length", "batch_size", "eval_batch_size", "epochs", "threads"):
            need(getattr(self, name) >= 1, name, "must be a positive integer")
        need(self.max_length <= 512, "max_length", "must be at most 512 (the encoder's positions)")
        for name in ("max_train_rows", "max_eval_rows"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, name, "must be >= 1 or null")
        for name in ("patience", "eval_every_steps", "checkpoint_every_steps", "frozen_layers", "seed"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(math.isfinite(self.lr) and 0.0 < self.lr < 1.0, "lr", "must be in (0, 1)")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0.0, "weight_decay", "must be >= 0")
        need(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", "must be in [0, 1)")
        need(math.isfinite(self.grad_clip) and self.grad_clip >= 0.0, "grad_clip", "must be >= 0 (0 = off)")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(0.0 <= self.soft_weight <= 1.0, "soft_weight", "must be in [0, 1]")
        need(self.early_stopping_metric in EARLY_STOPPING_METRICS, "early_stopping_metric",
             f"must be one of {list(EARLY_STOPPING_METRICS)}")
        need(bool(self.validation_split), "validation_split", "must name a split")
        need(self.validation_split not in self.eval_splits, "eval_splits",
             f"must not contain the validation split {self.validation_split!r}")
        for head, w in self.head_weights.items():
            if not (math.isfinite(w) and w >= 0.0):
                raise ConfigError(f"training config: head_weights[{head!r}] must be >= 0, got {w!r}")
        self._validate_class_weights()
        need(bool(self.experiment.strip()), "experiment", "must be a non-empty string")

    def _validate_class_weights(self) -> None:
        cw = self.class_weights
        if isinstance(cw, str):
            if cw not in CLASS_WEIGHT_MODES:
                raise ConfigError(
                    f"training config: class_weights must be 'balanced', 'none' or a mapping "
                    f"{{head: balanced | none | {{class: weight}} | [weights]}}, got {cw!r}"
                )
            return
        if not isinstance(cw, dict):
            raise ConfigError(f"training config: class_weights must be a string or a mapping, got {cw!r}")
        for head, spec in cw.items():
            where = f"training config: class_weights[{head!r}]"
            if isinstance(spec, str):
                if spec not in CLASS_WEIGHT_MODES:
                    raise ConfigError(f"{where} must be 'balanced', 'none', a mapping or a list, got {spec!r}")
                continue
            values = spec.values() if isinstance(spec, dict) else spec if isinstance(spec, list) else None
            if values is None:
                raise ConfigError(f"{where} must be 'balanced', 'none', a mapping or a list, got {spec!r}")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                    raise ConfigError(f"{where} holds {v!r}; weights must be numbers >= 0")

    # -- derived values -------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("models") / self.name

    @property
    def data_file(self) -> Path:
        path = Path(self.data)
        return path / "dataset.parquet" if path.suffix != ".parquet" else path

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    def replace(self, **changes: Any) -> TrainingConfig:
        """A validated copy with ``changes`` applied."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>") -> TrainingConfig:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a training config must be a mapping of field: value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training config keys {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainingConfig:
        data = read_yaml(path, ConfigError, "training config file")
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: a training config must be a mapping of field: value")
        return cls.from_dict({**(data or {}), **overrides}, source=str(path))


# -- type coercion ------------------------------------------------------------------------------
_NULLS = {"none", "null", "~", ""}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Bring ``value`` (from YAML, a flag or Python) to the type ``hint`` or raise ``ConfigError``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
            if len(non_null) < len(args):
                return None
        return _coerce(name, value, non_null[0]) if len(non_null) == 1 else value
    if hint is Any:
        # class_weights: a flag value like "{tier: balanced}" is YAML
        if isinstance(value, str) and value.strip().startswith(("{", "[")):
            return _yaml_value(name, value)
        return value
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in {"true", "yes", "1", "on"}:
                return True
            if isinstance(value, str) and value.strip().lower() in {"false", "no", "0", "off"}:
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            # PyYAML reads "3e-5" (no dot) as a string: float() takes it
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"training config: {name} must be {getattr(hint, '__name__', hint)}, got {value!r}"
        ) from None
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"training config: {name} must be a list (or comma-separated), got {value!r}")
        return [_coerce(f"{name}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = _yaml_value(name, value) if value.strip() else {}
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"training config: {name} must be a mapping like '{{tier: 2.0}}', got {value!r}")
        return {str(k): _coerce(f"{name}[{k!r}]", v, args[1]) for k, v in value.items()}
    return value


def _yaml_value(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"training config: {name}: {text!r} is not valid YAML: {exc}") from None


# -- command line -------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--preset`` and one ``--<field>`` override per ``TrainingConfig`` field.

    Overrides default to "not given" (``argparse.SUPPRESS``) so that only flags on the command line
    replace values from the YAML file.
    """
    parser.add_argument("--config", default=None, help="training config YAML (default: the 'default' preset)")
    parser.add_argument("--preset", default=None, help="shipped preset: quick or default "
                        "(classifier/training/presets/<NAME>.yaml)")
    group = parser.add_argument_group("config overrides (any TrainingConfig field)")
    defaults = TrainingConfig()
    hints = typing.get_type_hints(TrainingConfig)
    for f in fields(TrainingConfig):
        hint = hints[f.name]
        shown = getattr(defaults, f.name)
        kind = typing.get_origin(hint)
        if kind is dict or hint is Any:
            meta = "YAML"
        elif kind is list:
            meta = "A,B"
        else:
            meta = f.name.upper()
        group.add_argument(
            _flag(f.name), dest=f"override_{f.name}", default=argparse.SUPPRESS, metavar=meta,
            help=f"{f.metadata.get('help', '')} (built-in default: {shown!r})",
        )


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}: the shipped presets are {sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))}; "
                          "pass --config PATH for a config file of your own")
    return path


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The config named by ``--config``/``--preset`` (default preset ``default``) plus overrides."""
    config_path = getattr(args, "config", None)
    preset = getattr(args, "preset", None)
    if config_path and preset:
        raise ConfigError("give either --config or --preset, not both")
    path = Path(config_path) if config_path else preset_path(preset or "default")
    overrides = {
        key[len("override_"):]: value for key, value in vars(args).items() if key.startswith("override_")
    }
    return TrainingConfig.from_yaml(path, **overrides)
