"""MLflow helpers: where runs go, what a run records, and how a model dir becomes a registered model.

Tracking URI: ``MLFLOW_TRACKING_URI`` if set (a ``http(s)://`` tracking server, a database URL,
...), else ``sqlite:///mlruns/mlflow.db``. For a sqlite store the artifacts go next to the
database, under ``<db dir>/artifacts/<experiment>`` (so the default is ``mlruns/artifacts``); any
other store keeps its own artifact root, so a tracking server works unchanged through the env var.

``TrackedRun`` wraps one run through an explicit ``MlflowClient`` and run id (no global "active
run", so nested trial runs of a search cannot get mixed up). It logs flattened params, step
metrics, figures (confusion matrices as PNG), text and files; ``register_model_dir`` stores a
tierwise model directory (safetensors weights + JSON/YAML, never a pickle) as an MLflow 3
``LoggedModel`` of the run and registers it as a new version in the model registry.

What is left out: what to log (the trainer decides), serving models from MLflow (bundles are
the serving format; the registry records lineage and versions).
"""

from __future__ import annotations

import logging
import math
import os
import re
import resource
import subprocess
import sys
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
MODEL_ARTIFACT_NAME = "model"
_MAX_PARAM_LEN = 6000  # MLflow's limit on one param value
_KEY_BAD = re.compile(r"[^\w\-./ ]")


# -- where --------------------------------------------------------------------------------------
def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):])
    return Path(path) if path and path != ":memory:" else None


def artifact_root(uri: str) -> Path | None:
    """``<db dir>/artifacts`` for a sqlite store, a ``file:``/plain path's ``artifacts``; else None."""
    db = _sqlite_path(uri)
    if db is not None:
        return (db.parent / "artifacts").resolve()
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return (Path(unquote(parsed.path or uri)) / "artifacts").resolve()
    return None


def client(uri: str | None = None):
    """An ``MlflowClient`` on ``uri`` (default ``tracking_uri()``), registry on the same store."""
    import mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    # MLflow's SQL registry resolves ``models:/<id>`` sources with a fresh default MlflowClient(),
    # so the process-wide URIs must point at the same store, or registering fails with
    # "Logged model ... not found" whenever MLFLOW_TRACKING_URI is not set in the environment.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """The id of experiment ``name``, created with this store's artifact location if new."""
    uri = uri or tracking_uri()
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(uri)
    location = (root / _safe_dir(name)).as_uri() if root is not None else None
    return c.create_experiment(name, artifact_location=location)


def _safe_dir(name: str) -> str:
    return re.sub(r"[^\w\-.]", "_", name) or "experiment"


# -- what ---------------------------------------------------------------------------------------
def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}, "l": [1, 2]}`` -> ``{"a.b": "1", "l": "[1, 2]"}`` (MLflow param strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            text = "None" if value is None else str(value)
            out[name] = text[:_MAX_PARAM_LEN]
    return out


def metric_key(key: str) -> str:
    return _KEY_BAD.sub("_", key)


def git_commit(cwd: Path | None = None) -> str | None:
    """``HEAD``'s commit of the checkout the package is imported from (``cwd``: a folder in it;
    ``+dirty`` if it has uncommitted changes), or None (e.g. an installed wheel outside git)."""
    cwd = cwd if cwd is not None else Path(str(files("classifier")))
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def confusion_figure(title: str, classes: list[str], matrix: np.ndarray):
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    size = 1.2 + 0.9 * len(classes)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot(1, 1, 1)
    row_sums = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, dtype=float), where=row_sums > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    return fig


# -- a run --------------------------------------------------------------------------------------
class TrackedRun:
    """One MLflow run, addressed by id. Use as a context manager: the run ends FINISHED, or
    FAILED (KILLED for ``KeyboardInterrupt`` and pruned trials) if the block raises."""

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        *,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        uri: str | None = None,
    ) -> None:
        self.uri = uri or tracking_uri()
        self.client = client(self.uri)
        self.experiment_id = get_or_create_experiment(experiment, self.uri)
        all_tags = {"tierwise.command": "train"}
        commit = git_commit()
        if commit:
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags.update(tags or {})
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        self.run_id: str = run.info.run_id
        self._ended = False
        log.info("MLflow run %s in experiment %r at %s", self.run_id, experiment, self.uri)

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt) or exc_type.__name__ == "TrialPruned":
            self.end("KILLED")
        else:
            self.end("FAILED")

    def end(self, status: str = "FINISHED") -> None:
        if not self._ended:
            self.client.set_terminated(self.run_id, status=status)
            self._ended = True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(metric_key(k), float(v), now, int(step or 0))
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_confusion_matrices(self, schema, frame, probs: Mapping[str, np.ndarray], split: str) -> list[str]:
        """One PNG per head under ``confusion/<split>_<head>.png``; returns the artifact paths."""
        from classifier.evaluation.metrics import confusion

        paths = []
        for head_name, matrix in confusion(schema, frame, probs).items():
            if int(matrix.sum()) == 0:
                continue
            head = schema.head(head_name)
            path = f"confusion/{split}_{head_name}.png"
            fig = confusion_figure(f"{head_name} on {split} (n={int(matrix.sum())})", list(head.classes), matrix)
            self.log_figure(fig, path)
            paths.append(path)
        return paths

    def register_model_dir(
        self,
        model_dir: str | Path,
        registered_name: str,
        *,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> tuple[str, str]:
        """Log ``model_dir`` as this run's LoggedModel and register it; ``(model_id, version)``.

        The files are uploaded as they are (safetensors, JSON, YAML, tokenizer.json): the model
        is rebuilt with ``MultiHeadEncoder.load`` after
        ``mlflow.artifacts.download_artifacts("models:/<name>/<version>")``.
        """
        from mlflow.exceptions import MlflowException

        flat = flatten_params(params or {})
        model = self.client.create_logged_model(
            self.experiment_id, name=MODEL_ARTIFACT_NAME, source_run_id=self.run_id,
            params=flat, tags=dict(tags or {}), model_type="tierwise-multihead-encoder",
        )
        try:
            self.client.log_model_artifacts(model.model_id, str(model_dir))
        except Exception:
            self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        try:
            self.client.create_registered_model(registered_name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code) and "ALREADY_EXISTS" not in str(exc.error_code):
                raise
        version = self.client.create_model_version(
            registered_name, source=f"models:/{model.model_id}", run_id=self.run_id,
            model_id=model.model_id, tags=dict(tags or {}),
        )
        log.info("registered %s version %s (logged model %s)", registered_name, version.version, model.model_id)
        return model.model_id, str(version.version)
