"""The student trained by the one training loop: tiny teacher, synthetic data, seconds per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from test_trainer import make_frame  # noqa: E402 - tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    make_frame().to_parquet(out / "dataset.parquet")
    return out


def _config(teacher: Path, data: Path, out: Path, **overrides):
    from classifier.training.config import DistillConfig

    base = dict(teacher=str(teacher), data=str(data), out=str(out), dim=8, hidden=8, epochs=3, batch_size=16,
                max_length=32, seed=3, progress=False, policy=str(ROOT / "serving" / "policy.example.yaml"))
    return DistillConfig(**{**base, **overrides})


@pytest.mark.slow
def test_student_trains_reports_and_resumes_like_an_uninterrupted_run(tmp_path, data_dir, tiny_model_dir):
    import torch

    from classifier.training.distillation import StudentDistiller

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)  # the distiller caches teacher logits beside the teacher
    full = StudentDistiller(_config(teacher, data_dir, tmp_path / "a")).fit()
    assert [h["epoch"] for h in full.history_] == [1, 2, 3] and full.global_step_ == 3 * 6
    assert set(full.report_) == {"validation", "test", "ood"}
    for split in full.report_.values():
        assert set(split["agreement"]) == {"tier", "task", "sensitivity"} and "auroc" in split["student"]["tier"]
        assert "auroc" in split["teacher"]["tier"]

    cfg = _config(teacher, data_dir, tmp_path / "b")
    part = StudentDistiller(cfg).fit(max_steps=8)
    assert part.interrupted_ and (cfg.model_dir / "checkpoints").is_dir()
    resumed = StudentDistiller(cfg.replace(resume_from="auto")).fit()
    assert not cfg.model_dir.exists()  # checkpoints removed after the run
    for k, v in full.model_.state_dict().items():
        assert torch.equal(v, resumed.model_.state_dict()[k]), k
    assert resumed.best_score_ == full.best_score_


def test_cli_flags_reach_the_distill_config_and_bad_values_name_the_field():
    import argparse

    from classifier.errors import ConfigError
    from classifier.training.config import DistillConfig, config_from_args
    from classifier.training.distillation import add_distill_arguments

    parser = argparse.ArgumentParser()
    add_distill_arguments(parser)
    args = parser.parse_args(["--teacher", "t", "--soft-temperature", "3", "--head-weights", "{tier: 1.5}",
                              "--max-train-rows", "none", "--eval-splits", "test"])
    cfg = config_from_args(args, DistillConfig)
    assert (cfg.teacher, cfg.soft_temperature, cfg.head_weights, cfg.eval_splits) == ("t", 3.0, {"tier": 1.5}, ["test"])
    assert cfg.epochs == DistillConfig().epochs  # not given: the built-in default
    for bad, field in ((["--soft-weight", "2"], "soft_weight"), (["--head-weights", "{tier: -1}"], "head_weights.tier"),
                       (["--epochs", "many"], "epochs")):
        with pytest.raises(ConfigError, match=f"distill config: {field}"):
            config_from_args(parser.parse_args(bad), DistillConfig)
    with pytest.raises(ConfigError, match="kd_weight: unknown key"):
        DistillConfig(kd_weight=0.5)


@pytest.mark.slow
def test_student_bundle_serves(tmp_path, data_dir, tiny_model_dir):
    from classifier.serving.runtime import Router
    from classifier.training.distillation import StudentDistiller

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model_dir, teacher)
    distiller = StudentDistiller(_config(teacher, data_dir, tmp_path / "student", epochs=1)).fit()
    path = distiller.export()
    with Router.load(path) as router:
        probs = router.predict_proba(["please write python code", "my aws key is ghp sk"])
    assert all(np.allclose(p.sum(axis=1), 1.0) for p in probs.values())
