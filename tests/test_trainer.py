"""Trainer, dataset and config: tiny random BERT on a tiny synthetic data set, seconds per test."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from classifier.data.schema import DEFAULT_SCHEMA_PATH  # noqa: E402 - after the torch check
from classifier.training.tiny import build_tiny_encoder  # noqa: E402

TASK_TEXT = {
    "code": "please write python code function to sort an array",
    "math_reasoning": "solve math equation what is the sum of number",
    "knowledge": "explain the answer to this question what is it",
    "chat_writing": "write a story poem essay for our list",
}
SENSITIVE_TEXT = {
    "pii": "my name is john smith call me at my phone address london street",
    "credential": "my aws api key token secret is ghp sk",
}


def make_frame(n_per_split: dict[str, int] | None = None, seed: int = 0):
    """Rows with the design.md columns; labels follow the words, so a tiny model can learn them."""
    import pandas as pd

    n_per_split = n_per_split or {"train": 96, "validation": 32, "calibration": 8, "test": 32, "ood": 16}
    rng = np.random.default_rng(seed)
    rows = []
    tasks = list(TASK_TEXT)
    for split, n in n_per_split.items():
        for i in range(n):
            kind = i % 6
            words = " ".join(rng.choice(["the", "a", "this", "that", "please", "you", "can"], size=rng.integers(1, 8)))
            row = {"split": split, "source": "synthetic", "group": f"{split}-{i}", "template_id": None, "rule_id": None,
                   "tier": None, "tier_outcome": None, "tier_soft": None, "task": None, "sensitivity": "none",
                   "cheap_model": "cheap-m", "frontier_model": "frontier-m", "cheap_correct": None,
                   "frontier_correct": None, "input_tokens": 20, "output_tokens": 50}
            if kind < 4:
                task = tasks[kind]
                frontier = task in ("code", "math_reasoning")
                share = float(rng.uniform(0.0, 0.4) if frontier else rng.uniform(0.6, 1.0))
                row.update(text=f"{TASK_TEXT[task]} {words}", task=task, source_task=f"syn:{task}",
                           tier="frontier" if frontier else "cheap", tier_outcome="frontier" if frontier else "cheap",
                           tier_soft=[share, 1.0 - share] if i % 3 else None,
                           cheap_correct=share, frontier_correct=1.0)
            else:
                label = "pii" if kind == 4 else "credential"
                row.update(text=f"{words} {SENSITIVE_TEXT[label]}", sensitivity=label, source_task=f"syn:{label}",
                           template_id="t1" if label == "pii" else None, rule_id="r1" if label == "credential" else None)
            row["id"] = f"{split}-{i:05d}"
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    make_frame().to_parquet(out / "dataset.parquet")
    (out / "CARD.md").write_text("# synthetic data card\n", encoding="utf-8")
    return out


def tiny_config(data_dir: Path, out: Path, encoder: Path, **overrides):
    from classifier.training.config import TrainingConfig

    base = dict(
        name="tiny", data=str(data_dir), schema=str(DEFAULT_SCHEMA_PATH),
        encoder=str(encoder), output_dir=str(out), max_length=32, batch_size=16, eval_batch_size=64,
        epochs=2, lr=1e-3, warmup_ratio=0.1, patience=0, seed=7, threads=1, track=False, progress=False,
        dropout=0.1,
    )
    base.update(overrides)
    return TrainingConfig(**base)


# -- config ----------------------------------------------------------------------------------------
def test_config_coerces_yaml_strings_and_validates_fields(tmp_path):
    from classifier.errors import ConfigError
    from classifier.training.config import TrainingConfig

    path = tmp_path / "c.yaml"
    path.write_text("lr: 3e-5\nepochs: '2'\nmax_train_rows: null\neval_splits: test,ood\nhead_weights: {tier: 2}\n")
    cfg = TrainingConfig.from_yaml(path)
    assert cfg.lr == pytest.approx(3e-5) and isinstance(cfg.lr, float)
    assert cfg.epochs == 2 and cfg.eval_splits == ["test", "ood"] and cfg.head_weights == {"tier": 2.0}

    for bad, field in [({"lr": 0}, "lr"), ({"epochs": 0}, "epochs"), ({"dropout": 1.5}, "dropout"),
                       ({"batch_size": "many"}, "batch_size"), ({"class_weights": "weird"}, "class_weights"),
                       ({"early_stopping_metric": "loss"}, "early_stopping_metric"),
                       ({"eval_splits": ["validation"]}, "eval_splits"),
                       ({"head_weights": {"tier": -1}}, "head_weights"),
                       ({"class_weights": {"tier": {"cheap": "x"}}}, "class_weights")]:
        with pytest.raises(ConfigError, match=field):
            TrainingConfig(**bad)
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainingConfig.from_yaml(path)


def test_cli_overrides_replace_only_given_fields(tmp_path):
    from classifier.training.config import config_from_args
    from classifier.training.trainer import add_train_arguments

    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nlr: 1.0e-4\nbatch_size: 8\nregistered_model: tw\n")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--lr", "3e-5", "--epochs", "2", "--max-train-rows", "100",
                              "--class-weights", "{tier: balanced, task: none}", "--registered-model", "none",
                              "--eval-splits", "test", "--track", "false"])
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.max_train_rows) == (3e-5, 2, 8, 100)
    assert cfg.class_weights == {"tier": "balanced", "task": "none"}
    assert cfg.registered_model is None and cfg.eval_splits == ["test"] and cfg.track is False


def test_presets_load_and_quick_is_lighter():
    from classifier.training.config import TrainingConfig, preset_path

    full = TrainingConfig.from_yaml(preset_path("default"))
    quick = TrainingConfig.from_yaml(preset_path("quick"))
    assert quick.max_train_rows is not None and quick.max_train_rows < 20_000
    assert quick.max_length < full.max_length and quick.epochs <= full.epochs
    assert quick.frozen_layers > full.frozen_layers


# -- dataset ---------------------------------------------------------------------------------------
def test_dataset_labels_soft_targets_and_dynamic_padding(tiny_tokenizer_path):
    from classifier.data.schema import LabelSchema
    from classifier.training.dataset import IGNORE_INDEX, PromptDataset, length_bucketed_batches
    from classifier.training.model import load_tokenizer

    frame = make_frame({"train": 24})
    schema = LabelSchema.default()
    ds = PromptDataset.from_frame(frame, schema, load_tokenizer(tiny_tokenizer_path, 32), max_length=32)
    # sensitivity-only rows do not train tier/task
    sens_rows = frame.index[frame["task"].isna()].to_numpy()
    assert (ds.labels["tier"][sens_rows] == IGNORE_INDEX).all() and (ds.labels["task"][sens_rows] == IGNORE_INDEX).all()
    assert (ds.labels["sensitivity"] != IGNORE_INDEX).all()
    targets, present = ds.soft["tier"]
    assert present.sum() == frame["tier_soft"].notna().sum()
    np.testing.assert_allclose(targets[present].sum(axis=1), 1.0, rtol=1e-6)

    batches = length_bucketed_batches(ds.lengths, 4, seed=1, epoch=0, pool=2)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(ds)))
    again = length_bucketed_batches(ds.lengths, 4, seed=1, epoch=0, pool=2)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))
    batch = ds.collate(batches[0])
    assert batch["input_ids"].shape[1] == int(ds.lengths[batches[0]].max())
    assert batch["attention_mask"].sum(dim=1).tolist() == ds.lengths[batches[0]].tolist()


def test_soft_target_of_wrong_length_names_the_row(tiny_tokenizer_path):
    from classifier.data.schema import LabelSchema
    from classifier.errors import DataError
    from classifier.training.dataset import soft_targets

    frame = make_frame({"train": 6})
    frame.at[2, "tier_soft"] = [0.2, 0.3, 0.5]
    with pytest.raises(DataError, match="train-00002"):
        soft_targets(LabelSchema.default(), frame)


# -- training --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_loss_falls_and_model_dir_is_written(tmp_path, data_dir, tiny_model_dir):
    from classifier.training.model import MultiHeadEncoder
    from classifier.training.trainer import Trainer

    cfg = tiny_config(data_dir, tmp_path / "model", tiny_model_dir, epochs=4, eval_splits=["test", "ood"])
    trainer = Trainer(cfg).fit()
    losses = [h["train_loss"] for h in trainer.history_]
    assert losses[-1] < 0.8 * losses[0], losses
    assert set(trainer.metrics_) == {"validation", "test", "ood"}
    # tier/task rows: 4 of every 6; every row has a sensitivity label
    assert trainer.metrics_["test"]["sensitivity"]["n"] == 32 and trainer.metrics_["test"]["tier"]["n"] == 22
    out = tmp_path / "model"
    for name in ("model.safetensors", "encoder_config.json", "schema.yaml", "tokenizer.json", "model_info.json",
                 "training_config.yaml", "metrics.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["throughput"]["train_prompts_per_s"] > 0
    # the saved model reproduces the trainer's predictions
    import torch

    loaded = MultiHeadEncoder.load(out)
    texts = ["solve math equation sum", "my aws key token secret"]
    probs = trainer.predict_proba(texts)
    enc = trainer.tokenizer_.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    with torch.inference_mode():
        got = {k: torch.softmax(v, -1).numpy() for k, v in loaded.logits_dict(ids, mask).items()}
    for head in probs:
        np.testing.assert_allclose(got[head], probs[head], atol=1e-5)


@pytest.mark.slow  # three training runs
def test_training_is_seeded(tmp_path, data_dir, tiny_model_dir):
    from classifier.training.trainer import Trainer

    a = Trainer(tiny_config(data_dir, tmp_path / "a", tiny_model_dir, epochs=1), save_model=False).fit()
    b = Trainer(tiny_config(data_dir, tmp_path / "b", tiny_model_dir, epochs=1), save_model=False).fit()
    c = Trainer(tiny_config(data_dir, tmp_path / "c", tiny_model_dir, epochs=1, seed=8), save_model=False).fit()
    sa, sb, sc = (t.model_.state_dict() for t in (a, b, c))
    assert all(torch_equal(sa[k], sb[k]) for k in sa)
    assert not all(torch_equal(sa[k], sc[k]) for k in sa)


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


@pytest.mark.slow
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, data_dir, tiny_model_dir):
    from safetensors.torch import load_file

    from classifier.training.trainer import Trainer, latest_checkpoint

    # 96 train rows / 16 = 6 steps an epoch, 3 epochs; interrupt mid-epoch 2 at step 8
    full = Trainer(tiny_config(data_dir, tmp_path / "full", tiny_model_dir, epochs=3, eval_every_steps=4)).fit()
    part_cfg = tiny_config(data_dir, tmp_path / "part", tiny_model_dir, epochs=3, eval_every_steps=4)
    part = Trainer(part_cfg).fit(max_steps=8)
    assert part.interrupted_ and part.global_step_ == 8
    ckpt = latest_checkpoint(tmp_path / "part")
    assert ckpt is not None and ckpt.name == "step-00000008"
    # no pickle: the checkpoint is safetensors + JSON only
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.safetensors", "trainer_state.json"]
    resumed = Trainer(part_cfg.replace(resume_from="auto")).fit()
    assert resumed.global_step_ == full.global_step_ == 18
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch_equal(a[k], b[k]), k
    assert [h["step"] for h in resumed.history_] == [h["step"] for h in full.history_]


@pytest.mark.slow  # a training loop and its resume
def test_resume_refuses_a_changed_config(tmp_path, data_dir, tiny_model_dir):
    from classifier.errors import ConfigError
    from classifier.training.trainer import Trainer

    cfg = tiny_config(data_dir, tmp_path / "m", tiny_model_dir, epochs=2)
    Trainer(cfg).fit(max_steps=3)
    with pytest.raises(ConfigError, match="lr"):
        Trainer(cfg.replace(resume_from="auto", lr=5e-4)).fit()


@pytest.mark.slow  # a training loop
def test_early_stopping_keeps_best_weights(tmp_path, data_dir, tiny_model_dir):
    from classifier.training.trainer import Trainer

    # a huge learning rate wrecks the model after the first validations: training must stop
    cfg = tiny_config(data_dir, tmp_path / "m", tiny_model_dir, epochs=6, lr=0.5, patience=1, eval_every_steps=2,
                      grad_clip=0.0, warmup_ratio=0.0)
    trainer = Trainer(cfg, save_model=False).fit()
    scores = [h["score"] for h in trainer.history_]
    assert trainer.global_step_ < 36
    assert trainer.best_score_ == pytest.approx(max(s for s in scores if np.isfinite(s)))
    assert trainer.metrics_["validation"] is not None


@pytest.mark.slow  # training loops
def test_injected_model_and_errors_name_the_field(tmp_path, data_dir, tiny_tokenizer_path, tiny_model_dir):
    from classifier.data.schema import LabelSchema
    from classifier.errors import ConfigError, DataError
    from classifier.training.model import MultiHeadEncoder, load_tokenizer
    from classifier.training.trainer import Trainer

    tok = load_tokenizer(tiny_tokenizer_path, 32)
    schema = LabelSchema.default()
    model = MultiHeadEncoder(build_tiny_encoder(tok.get_vocab_size()), schema)
    cfg = tiny_config(data_dir, tmp_path / "m", None, epochs=1)
    trainer = Trainer(cfg, schema=schema, model=model, tokenizer=tok, save_model=False).fit()
    assert trainer.model_ is model and trainer.global_step_ == 6

    with pytest.raises(ConfigError, match="head_weights"):
        Trainer(cfg.replace(head_weights={"nope": 1.0}), schema=schema, model=model, tokenizer=tok).fit()
    with pytest.raises(ConfigError, match="frozen_layers"):
        Trainer(tiny_config(data_dir, tmp_path / "x", tiny_model_dir, frozen_layers=9)).fit()
    with pytest.raises(ConfigError, match="encoder"):
        Trainer(tiny_config(data_dir, tmp_path / "x", tmp_path / "missing")).fit()
    with pytest.raises(DataError, match="dataset.parquet"):
        Trainer(cfg.replace(data=str(tmp_path / "nodata")), schema=schema, model=model, tokenizer=tok).fit()


def test_class_weights_and_soft_targets_enter_the_loss():
    import torch

    from classifier.training.trainer import multitask_loss

    # two labelled rows in different classes, with different losses, and one soft-only row
    logits = {"tier": torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])}
    batch = {"labels": {"tier": torch.tensor([0, 1, -100])},
             "soft": {"tier": torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])},
             "soft_mask": {"tier": torch.tensor([False, False, True])}}
    ce = [float(-torch.log_softmax(logits["tier"][i], -1)[c]) for i, c in ((0, 0), (1, 1))]
    plain, _ = multitask_loss(logits, batch, class_weights={}, head_weights={}, soft_weight=0.0)
    assert float(plain) == pytest.approx((ce[0] + ce[1]) / 2)
    weighted, _ = multitask_loss(logits, batch, class_weights={"tier": torch.tensor([3.0, 1.0])},
                                 head_weights={}, soft_weight=0.0)
    # the class-weighted mean: (3 * ce0 + 1 * ce1) / (3 + 1), far from the plain mean
    assert float(weighted) == pytest.approx((3 * ce[0] + ce[1]) / 4)
    assert abs(float(weighted) - float(plain)) > 0.05
    # weights are relative: scaling them all leaves the loss alone; rows of one class cancel them
    scaled, _ = multitask_loss(logits, batch, class_weights={"tier": torch.tensor([6.0, 2.0])},
                               head_weights={}, soft_weight=0.0)
    assert float(scaled) == pytest.approx(float(weighted))
    one_class = {**batch, "labels": {"tier": torch.tensor([0, -100, -100])}}
    alone, _ = multitask_loss(logits, one_class, class_weights={"tier": torch.tensor([3.0, 1.0])},
                              head_weights={}, soft_weight=0.0)
    assert float(alone) == pytest.approx(ce[0])
    mixed, _ = multitask_loss(logits, batch, class_weights={}, head_weights={}, soft_weight=0.5)
    kl = float(torch.nn.functional.kl_div(torch.log_softmax(logits["tier"][2:], -1), batch["soft"]["tier"][2:],
                                          reduction="batchmean"))
    assert float(mixed) == pytest.approx(0.5 * float(plain) + 0.5 * kl)
    doubled, _ = multitask_loss(logits, batch, class_weights={}, head_weights={"tier": 2.0}, soft_weight=0.0)
    assert float(doubled) == pytest.approx(2 * float(plain))
    none, parts = multitask_loss({"tier": logits["tier"][2:]},
                                 {"labels": {"tier": torch.tensor([-100])}, "soft": {}, "soft_mask": {}},
                                 class_weights={}, head_weights={}, soft_weight=0.5)
    assert none is None and parts == {}


def test_class_weight_modes_balanced_and_its_square_root():
    import torch

    from classifier.data.schema import LabelSchema
    from classifier.training.config import TrainingConfig
    from classifier.training.trainer import resolve_class_weights

    schema = LabelSchema.default()
    tier = np.array([0, 0, 0, 1, -100])  # 3 cheap, 1 frontier, 1 unlabelled
    labels = {"tier": tier, "task": np.full(5, -100), "sensitivity": np.zeros(5, dtype=np.int64)}
    balanced = resolve_class_weights(TrainingConfig(class_weights="balanced"), schema, labels)
    root = resolve_class_weights(TrainingConfig(class_weights={"tier": "sqrt_balanced", "task": "none"}), schema, labels)
    assert torch.allclose(balanced["tier"], torch.tensor([4 / 6, 4 / 2]))
    assert torch.allclose(root["tier"], balanced["tier"].sqrt())
    assert root["task"] is None and root["sensitivity"] is None  # heads not named are unweighted


def test_goals_selection_counts_a_gate_head_by_its_recall_at_precision() -> None:
    from classifier.training.trainer import selection_score

    metrics = {"tier": {"auroc": 0.7, "macro_f1": 0.6}, "task": {"macro_f1": 0.9},
               "sensitivity": {"auroc": 0.99, "macro_f1": 0.95, "recall_at_p95_pii": 0.5,
                               "recall_at_p95_credential": 0.9}}
    assert selection_score(metrics, "auroc_or_macro_f1") == pytest.approx((0.7 + 0.9 + 0.99) / 3)
    assert selection_score(metrics, "goals") == pytest.approx((0.7 + 0.9 + 0.7) / 3)
    metrics["sensitivity"]["recall_at_p95_pii"] = float("nan")  # a class absent from the split
    assert selection_score(metrics, "goals") == pytest.approx((0.7 + 0.9 + 0.9) / 3)
