"""Typed settings of ``tierwise train`` (``TrainingConfig``) and ``tierwise distill`` (``DistillConfig``).

Both are pydantic v2 models over one base, ``LoopConfig``: the settings of the one training loop
(``classifier.training.trainer.Trainer``) that the teacher and the student share, with each
command's own defaults. Unknown keys are refused (``extra="forbid"``) and every invalid value
raises ``ConfigError`` naming the field path (``class_weights.tier.cheap: ...``). A config comes
from a YAML file (the shipped presets, package data under ``classifier/training/presets/``:
``default.yaml`` is the full teacher preset, ``quick.yaml`` a few-minute CPU preset), from keyword arguments, or both plus command line overrides:
``add_config_arguments`` generates one ``--flag`` per field of either model, so a new field is
overridable without touching the CLI. Flag and YAML values arrive as strings or plain YAML values:
``none``/``null`` is None for optional fields, ``a,b`` a list, ``{k: v}`` a mapping.

What is left out: the hyper-parameter *search space* (``classifier.training.hpo``) and the label
schema itself (``classifier.data.schema``); this module only points at the schema file.
"""

from __future__ import annotations

import argparse
import typing
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from classifier.data.schema import DEFAULT_SCHEMA_PATH
from classifier.errors import ConfigError
from classifier.yaml_io import read_yaml

# where ``--preset NAME`` looks for ``NAME.yaml``: ./training first, then the source checkout's
# ``--preset NAME`` is the shipped ``presets/NAME.yaml`` (package data; pip unpacks wheels, so a real file)
PRESET_DIR = Path(str(files("classifier.training").joinpath("presets")))

Weight = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
WeightMode = Literal["balanced", "sqrt_balanced", "none"]
# 'balanced' (inverse class frequency in the training split), its square root, 'none', or per head
ClassWeights = WeightMode | dict[str, WeightMode | dict[str, Weight] | list[Weight]]
_NULLS = {"none", "null", "~", ""}


# what a model reads of a long prompt in training: the first window, or a tier view of the runtime
TrainView = Literal["head", "last_user_tail", "last_user_para"]

class LoopConfig(BaseModel):
    """The training loop's settings, shared by teacher and student (each sets its own defaults)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, validate_default=True)
    _what: typing.ClassVar[str] = "config"

    name: str = Field("teacher", min_length=1, description="run name; also the default output directory models/<name>")

    # -- inputs ---------------------------------------------------------------------------------
    data: str = Field("data/build", min_length=1,
                      description="build directory holding dataset.parquet (with a split column), or the parquet file")
    max_length: int = Field(128, ge=1, le=512, description="tokens per prompt (longer prompts are truncated)")
    # whole requests (issue 13). Session 17 measured students trained on the serving view and on
    # traffic shapes (README, "Whole requests"): none beat the head-trained student on every goal,
    # so the defaults reproduce the shipped models
    view: TrainView = Field("head", description="what the model reads of a prompt longer than max_length: head = its "
                            "first max_length tokens; last_user_tail / last_user_para = that serving view "
                            "(classifier/serving/view.py)")
    traffic_shapes: float = Field(0.0, ge=0.0, le=4.0, description="wrapped copies of training prompts per training "
                                  "prompt (k-shot examples or pasted context flattened into the user's message, the "
                                  "prompt last; classifier.training.traffic), each with the prompt's labels and soft "
                                  "targets (the student's: the teacher's on the prompt alone); 0 = none")
    max_train_rows: int | None = Field(None, ge=1, description="seeded subsample of the training split; none = all rows")
    max_eval_rows: int | None = Field(None, ge=1, description="seeded subsample of the validation and evaluation splits; none = all rows")
    validation_split: str = Field("validation", min_length=1, description="split used for early stopping and model selection")
    eval_splits: list[str] = Field(["test", "ood"], description="splits evaluated at the end (comma-separated)")

    # -- optimisation ---------------------------------------------------------------------------
    batch_size: int = Field(32, ge=1, description="training batch size")
    eval_batch_size: int = Field(128, ge=1, description="inference batch size for validation and evaluation")
    epochs: int = Field(3, ge=1, description="passes over the training split")
    lr: float = Field(5e-5, gt=0.0, lt=1.0, description="peak learning rate (AdamW)")
    weight_decay: float = Field(0.01, ge=0.0, allow_inf_nan=False, description="AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of steps with linear warm-up")
    lr_schedule: Literal["linear", "constant"] = Field("linear", description="after warm-up: linear decay to 0, or constant")
    grad_clip: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="max global gradient norm; 0 disables clipping")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout before the heads")
    head_weights: dict[str, Weight] = Field({}, description="loss weight per head, e.g. '{tier: 2.0}'; heads not named weigh 1.0")
    class_weights: ClassWeights = Field("balanced", description="'balanced' (inverse class frequency in the training split), "
                                        "'sqrt_balanced', 'none', or '{head: balanced | sqrt_balanced | none | "
                                        "{class: weight} | [weights in class order]}'")
    soft_weight: float = Field(0.5, ge=0.0, le=1.0, description="share of a head's loss taken by KL to its soft targets where a row has them")
    soft_temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False,
                                    description="temperature of the prediction in the KL term (its gradient is scaled by T^2)")

    # -- early stopping and checkpoints ---------------------------------------------------------
    patience: int = Field(2, ge=0, description="validations without improvement before stopping; 0 disables early stopping")
    min_delta: float = Field(0.0, ge=0.0, description="a validation improves on the best score only by more than this")
    early_stopping_metric: Literal["auroc_or_macro_f1", "goals", "macro_f1", "auroc", "accuracy"] = Field(
        "auroc_or_macro_f1", description="mean over heads on the validation split of: auroc_or_macro_f1 (AUROC for "
        "binary and gate heads, macro-F1 otherwise), goals (the same, but a gate head by its recall at precision "
        "0.95, averaged over its sensitive classes), macro_f1, auroc or accuracy; calibration-free")
    eval_every_steps: int = Field(0, ge=0, description="validate every N optimiser steps as well as at epoch ends (0 = epoch ends only)")
    checkpoint_every_steps: int = Field(0, ge=0, description="write a resumable checkpoint every N steps (0 = at epoch ends only)")
    resume_from: str | None = Field(None, description="checkpoint directory to resume from, or 'auto' for the newest of this run")
    seed: int = Field(13, ge=0, description="seed of torch, numpy, random and the data order")
    threads: int = Field(2, ge=1, description="torch CPU threads")

    # -- tracking -------------------------------------------------------------------------------
    track: bool = Field(True, description="log to MLflow (MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    experiment: str = Field("tierwise", min_length=1, description="MLflow experiment name")
    progress: bool = Field(True, description="show tqdm progress bars")

    @field_validator("*", mode="before")
    @classmethod
    def _from_text(cls, value: Any, info) -> Any:
        """Flag and YAML strings to the field's shape: null words, comma lists, YAML mappings."""
        if not isinstance(value, str):
            return value
        hint = cls.model_fields[info.field_name].annotation
        args = typing.get_args(hint)
        if type(None) in args and value.strip().lower() in _NULLS:
            return None
        if typing.get_origin(hint) is list:
            return [v.strip() for v in value.split(",") if v.strip()]
        if value.strip().startswith(("{", "[")) or (typing.get_origin(hint) is dict and not value.strip()):
            try:
                return yaml.safe_load(value) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{value!r} is not valid YAML: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check(self) -> LoopConfig:
        if self.validation_split in self.eval_splits:
            raise ValueError(f"eval_splits must not contain the validation split {self.validation_split!r}")
        if not self.data.strip():
            raise ValueError("data must name a build directory or a parquet file")
        return self

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_message(exc, self._what)) from None

    # -- derived values -------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        raise NotImplementedError

    @property
    def data_file(self) -> Path:
        path = Path(self.data)
        return path / "dataset.parquet" if path.suffix != ".parquet" else path

    # -- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text, encoding="utf-8")
        return text

    def replace(self, **changes: Any):
        """A validated copy with ``changes`` applied."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<dict>"):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a {cls._what} must be a mapping of field: value")
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any):
        data = read_yaml(path, ConfigError, f"{cls._what} file")
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: a {cls._what} must be a mapping of field: value")
        return cls.from_dict({**(data or {}), **overrides}, source=str(path))


def _message(exc: ValidationError, what: str) -> str:
    """One line per error, each naming the field path, e.g. ``class_weights.tier.cheap``."""
    parts = []
    errors = exc.errors()
    # a union reports every branch it tried: keep, per field, the errors that got deepest
    depth: dict[Any, int] = {}
    for err in errors:
        depth[err["loc"][:1]] = max(depth.get(err["loc"][:1], 0), len(err["loc"]))
    for err in (e for e in errors if len(e["loc"]) == depth[e["loc"][:1]]):
        # a union reports each branch it tried; the branch names (literal[...], dict[...]) are noise
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("str", "int"))))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if err["type"] in ("extra_forbidden", "value_error") else f", got {err['input']!r}"
        parts.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return f"{what}: " + "; ".join(dict.fromkeys(parts))


class TrainingConfig(LoopConfig):
    """Settings of one teacher training run (``tierwise train``). Paths are relative to the working directory."""

    _what: typing.ClassVar[str] = "training config"

    schema_path: str = Field(str(DEFAULT_SCHEMA_PATH), alias="schema", description="label schema YAML (default: the shipped one)")
    encoder: str | None = Field(None, description="Hugging Face model dir (config.json + weights) or tierwise model dir; "
                                "none = the pretrained all-MiniLM-L6-v2")
    tokenizer: str | None = Field(None, description="tokenizer.json or a directory holding one; none = the encoder dir's, else MiniLM's")
    output_dir: str | None = Field(None, description="model directory to write; none = models/<name>")
    frozen_layers: int = Field(0, ge=0, description="freeze the embeddings and the first N transformer layers (0 = train everything)")
    registered_model: str | None = Field("tierwise-teacher", description="MLflow registered model name; none = register nothing")

    model_config = ConfigDict(populate_by_name=True)

    @property
    def schema(self) -> str:
        return self.schema_path

    @property
    def model_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("models") / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


class DistillConfig(LoopConfig):
    """Settings of ``tierwise distill``: the student trained by the same loop, on the teacher's soft targets."""

    _what: typing.ClassVar[str] = "distill config"

    name: str = Field("student", min_length=1, description="run name (MLflow)")
    teacher: str = Field("models/default", description="fine-tuned model directory (tierwise train output)")
    out: str = Field("bundles/student", description="student bundle directory to write")
    policy: str = Field("serving/policy.example.yaml", description="policy YAML to ship in the bundle")
    dim: int = Field(256, ge=1, description="width of the distilled token table (PCA of the teacher's token vectors)")
    hidden: int = Field(256, ge=0, description="trunk width (0: no trunk)")
    # context convolution over the token vectors (0 channels: the plain bag-of-vectors student)
    context_channels: int = Field(0, ge=0, description="context convolution channels (0: no context)")
    context_kernel: int = Field(3, ge=1, description="context convolution taps (an odd number)")
    context_dilation: int = Field(1, ge=1, description="distance between context taps")
    embedding_lr: float = Field(2e-2, gt=0.0, lt=1.0, description="learning rate of the token table (each row sees few gradients)")
    teacher_batch_size: int = Field(64, ge=1, description="batch size of the teacher's inference")
    # the student's own defaults for the shared loop settings: a deliberate mirror of LoopConfig's
    # fields (pydantic changes a default only by redeclaring the whole field, bounds included)
    epochs: int = Field(12, ge=1, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="training batch size")
    eval_batch_size: int = Field(512, ge=1, description="inference batch size for validation and evaluation")
    lr: float = Field(2e-3, gt=0.0, lt=1.0, description="learning rate of the trunk and heads")
    weight_decay: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="weight decay of the trunk and heads")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="share of steps with linear warm-up")
    lr_schedule: Literal["linear", "constant"] = Field("constant", description="after warm-up: linear decay to 0, or constant")
    grad_clip: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="max global gradient norm; 0 disables clipping")
    head_weights: dict[str, Weight] = Field({"sensitivity": 2.0}, description="loss weight per head; heads not named weigh 1.0")
    class_weights: ClassWeights = Field("sqrt_balanced", description="as for train; the square root keeps rare classes "
                                        "(code, credential) from being drowned without over-weighting them")
    soft_weight: float = Field(0.5, ge=0.0, le=1.0, description="share of the loss taken by KL to the teacher's distribution")
    soft_temperature: float = Field(2.0, gt=0.0, allow_inf_nan=False, description="temperature of teacher and student in the KL term")
    patience: int = Field(3, ge=0, description="epochs without improvement before stopping; 0 disables early stopping")
    min_delta: float = Field(1e-4, ge=0.0, description="a validation improves on the best score only by more than this")
    track: bool = Field(False, description="log to MLflow")

    @field_validator("context_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"context_kernel must be an odd number >= 1, got {value}")
        return value

    @property
    def model_dir(self) -> Path:
        """Where the student's checkpoints are kept while it trains (beside the bundle, removed after)."""
        return Path(f"{self.out}.train")


# -- command line -------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, cls: type[LoopConfig] = TrainingConfig) -> None:
    """``--config`` (and ``--preset`` for train) and one ``--<field>`` override per field of ``cls``.

    Overrides default to "not given" (``argparse.SUPPRESS``) so that only flags on the command line
    replace values from the YAML file or the built-in defaults.
    """
    parser.add_argument("--config", default=None, help=f"{cls._what} YAML (fields as below)")
    if cls is TrainingConfig:
        parser.add_argument("--preset", default=None, help="named preset: training/<NAME>.yaml, e.g. quick or default")
    group = parser.add_argument_group(f"overrides (any {cls.__name__} field)")
    for name, f in cls.model_fields.items():
        flag = f.alias or name
        origin = typing.get_origin(f.annotation)
        meta = "YAML" if origin is dict or flag == "class_weights" else "A,B" if origin is list else flag.upper()
        group.add_argument("--" + flag.replace("_", "-"), dest=f"override_{flag}", default=argparse.SUPPRESS,
                           metavar=meta, help=f"{f.description or ''} (built-in default: {f.default!r})")


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no preset {name!r}: the shipped presets are {sorted(p.stem for p in PRESET_DIR.glob('*.yaml'))}; "
                          "pass --config PATH for a config file of your own")
    return path


def config_from_args(args: argparse.Namespace, cls: type[LoopConfig] = TrainingConfig):
    """The config named by ``--config``/``--preset`` (train: default preset ``default``) plus overrides."""
    config_path = getattr(args, "config", None)
    preset = getattr(args, "preset", None)
    if config_path and preset:
        raise ConfigError("give either --config or --preset, not both")
    overrides = {key[len("override_"):]: value for key, value in vars(args).items() if key.startswith("override_")}
    if config_path is None and cls is not TrainingConfig:
        return cls.from_dict(overrides, source="command line")
    path = Path(config_path) if config_path else preset_path(preset or "default")
    return cls.from_yaml(path, **overrides)
