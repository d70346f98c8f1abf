"""``tierwise tune``: a real Optuna study in sqlite, trials as nested MLflow runs, tiny model."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("optuna")

from test_trainer import make_frame, tiny_config  # noqa: E402

SMALL_SPACE = dict(lr=(1e-3, 5e-3), epochs=(1, 2), batch_size=(16, 32), max_length=(16, 32),
                   head_weight=(0.5, 2.0), dropout=(0.0, 0.2), frozen_layers=(0, 1))


@pytest.fixture()
def data_dir(tmp_path):
    out = tmp_path / "build"
    out.mkdir()
    make_frame({"train": 48, "validation": 24, "test": 12}).to_parquet(out / "dataset.parquet")
    return out


@pytest.mark.slow
def test_tune_runs_trials_as_nested_runs_and_writes_best_config(tmp_path, monkeypatch, data_dir, tiny_model_dir):
    import optuna
    from mlflow import MlflowClient

    from classifier.training.config import TrainingConfig
    from classifier.training.hpo import SearchSpace, Tuner

    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    storage = f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}"
    base = tiny_config(data_dir, tmp_path / "m", tiny_model_dir, track=True, experiment="tw-tune")
    out = tmp_path / "best.yaml"
    tuner = Tuner(base, n_trials=2, storage=storage, study_name="s1", space=SearchSpace(**SMALL_SPACE), out=out).fit()

    study = optuna.load_study(study_name="s1", storage=storage)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert tuner.best_value_ == pytest.approx(study.best_value)
    best = TrainingConfig.from_yaml(out)
    assert best.lr == pytest.approx(study.best_params["lr"])
    assert best.batch_size == study.best_params["batch_size"]
    assert best.head_weights["tier"] == pytest.approx(study.best_params["head_weight.tier"])
    assert best.data == base.data and best.eval_splits == base.eval_splits  # the rest of the base config

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("tw-tune")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tuner.parent_run_id_]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags["optuna.trial"] for r in children} == {"0", "1"}
    assert all("validation/score" in r.data.metrics for r in children)
    parent = client.get_run(tuner.parent_run_id_)
    assert parent.data.metrics["best/value"] == pytest.approx(study.best_value)

    # a second process joining the same study adds trials to it (load_if_exists)
    Tuner(base.replace(track=False), n_trials=1, storage=storage, study_name="s1",
          space=SearchSpace(**SMALL_SPACE), sampler_seed=99, out=None).fit()
    assert len(optuna.load_study(study_name="s1", storage=storage).trials) == 3


@pytest.mark.slow
def test_crashed_trials_are_recorded_as_failed_and_the_study_goes_on(tmp_path, data_dir, tiny_model_dir):
    import optuna

    from classifier.errors import TierwiseError
    from classifier.training.hpo import SearchSpace, Tuner

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    base = tiny_config(data_dir, tmp_path / "m", tiny_model_dir)
    # max_length 200 exceeds the tiny encoder's 128 positions: every trial raises
    space = SearchSpace(**{**SMALL_SPACE, "max_length": (200,)})
    with pytest.raises(TierwiseError, match="no trial completed"):
        Tuner(base, n_trials=2, storage=storage, study_name="bad", space=space, out=None).fit()
    study = optuna.load_study(study_name="bad", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


@pytest.mark.slow
def test_tune_cli(tmp_path, data_dir, tiny_model_dir, monkeypatch):
    import yaml

    from classifier.training.hpo import add_tune_arguments, run_tune

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(data_dir, tmp_path / "m", tiny_model_dir)
    cfg.to_yaml(tmp_path / "base.yaml")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({k: list(v) for k, v in SMALL_SPACE.items()}))
    parser = argparse.ArgumentParser()
    add_tune_arguments(parser)
    args = parser.parse_args(["--config", "base.yaml", "--trials", "1", "--space", "space.yaml",
                              "--out", "training/best.yaml", "--epochs", "1"])
    assert run_tune(args) == 0
    assert (tmp_path / "mlruns" / "optuna.db").is_file()  # the default storage
    assert (tmp_path / "training" / "best.yaml").is_file()


def test_search_space_validation(tmp_path):
    from classifier.errors import ConfigError
    from classifier.training.hpo import SearchSpace

    with pytest.raises(ConfigError, match="lr"):
        SearchSpace(lr=(1e-3, 1e-5))
    with pytest.raises(ConfigError, match="batch_size"):
        SearchSpace(batch_size=())
    (tmp_path / "s.yaml").write_text("learning_rate: [1, 2]\n")
    with pytest.raises(ConfigError, match="learning_rate|keys"):
        SearchSpace.from_yaml(tmp_path / "s.yaml")
