"""MLflow tracking of a training run, in a real sqlite store under tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from test_trainer import make_frame, tiny_config  # noqa: E402


@pytest.fixture()
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_tracking_uri_and_artifact_root(monkeypatch, tmp_path):
    from classifier.tracking import (
        DEFAULT_TRACKING_URI,
        artifact_root,
        flatten_params,
        tracking_uri,
    )

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlruns/mlflow.db"
    assert artifact_root(DEFAULT_TRACKING_URI) == (Path("mlruns") / "artifacts").resolve()
    assert artifact_root(f"sqlite:///{tmp_path}/x/m.db") == tmp_path / "x" / "artifacts"
    # a tracking server keeps its own artifact root: the URL is used unchanged
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert tracking_uri() == "http://mlflow.internal:5000" and artifact_root(tracking_uri()) is None
    assert flatten_params({"a": {"b": 1}, "c": [1, 2], "d": None}) == {"a.b": "1", "c": "[1, 2]", "d": "None"}


@pytest.mark.slow
def test_training_run_is_tracked_and_registered(tmp_path, store, tiny_model_dir):
    import mlflow
    from mlflow import MlflowClient

    from classifier.tracking import git_commit
    from classifier.training.model import MultiHeadEncoder
    from classifier.training.trainer import Trainer

    data = tmp_path / "build"
    data.mkdir()
    make_frame().to_parquet(data / "dataset.parquet")
    (data / "CARD.md").write_text("# card\n")
    cfg = tiny_config(data, tmp_path / "model", tiny_model_dir, epochs=2, track=True, experiment="tw-test",
                      registered_model="tw-tiny")
    trainer = Trainer(cfg).fit()
    assert trainer.run_id_ and trainer.model_version_ == "1"

    client = MlflowClient(tracking_uri=store, registry_uri=store)
    run = client.get_run(trainer.run_id_)
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "tw-test"
    assert exp.artifact_location.startswith((tmp_path / "store" / "artifacts").as_uri())
    params = run.data.params
    assert params["lr"] == str(cfg.lr) and params["batch_size"] == "16" and params["head_weights"] == "{}"
    assert params["data.train_rows"] == "96"
    metrics = run.data.metrics
    for key in ("validation/score", "train/loss", "final/test/tier/accuracy", "final/ood/sensitivity/macro_f1",
                "throughput/train_prompts_per_s", "throughput/eval_prompts_per_s", "peak_rss_mb"):
        assert key in metrics, key
    assert metrics["peak_rss_mb"] > 10
    history = client.get_metric_history(trainer.run_id_, "validation/score")
    assert [m.step for m in history] == [6, 12]  # one per epoch
    commit = git_commit()
    if commit:
        assert run.data.tags["mlflow.source.git.commit"] == commit

    def listing(path=None):
        out = []
        for f in client.list_artifacts(trainer.run_id_, path):
            out.extend(listing(f.path) if f.is_dir else [f.path])
        return out

    files = set(listing())
    assert {"training_config.yaml", "metrics.json", "data/CARD.md", "confusion/test_tier.png",
            "confusion/ood_sensitivity.png", "confusion/validation_task.png"} <= files

    version = client.get_model_version("tw-tiny", "1")
    assert version.run_id == trainer.run_id_
    info = json.loads((tmp_path / "model" / "model_info.json").read_text())
    assert info["training_run_id"] == trainer.run_id_ and info["mlflow_model_version"] == "1"
    # the registered version holds the model dir (safetensors, no pickle) and loads as it is
    local = Path(mlflow.artifacts.download_artifacts("models:/tw-tiny/1", dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=store))
    assert (local / "model.safetensors").is_file() and not list(local.rglob("*.pkl"))
    assert not (local / "checkpoints").exists()
    MultiHeadEncoder.load(local)

    again = Trainer(cfg.replace(epochs=1, output_dir=str(tmp_path / "model2"))).fit()
    assert again.model_version_ == "2"
