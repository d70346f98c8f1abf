"""Traffic-shaped training: the student trains on what the router reads of a request."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from test_trainer import make_frame  # noqa: E402 - tests/ is on sys.path under pytest


def _train() -> pd.DataFrame:
    frame = make_frame({"train": 60}, seed=1)
    return frame[frame["split"] == "train"].reset_index(drop=True)


def test_wrapped_copies_end_with_their_prompt_behind_benign_context():
    from classifier.evaluation.wrappers import SHOT_ANSWER
    from classifier.training.traffic import flat_wrappers

    train = _train()
    wrapped = flat_wrappers(train, per_row=1.5, seed=4)
    # the integer part for every prompt, the fraction for about half of them
    assert len(train) * 1.3 <= len(wrapped) <= len(train) * 1.7
    assert set(wrapped["kind"]) == {"kshot_flat", "context_flat"}
    sensitive = set(train.loc[train["sensitivity"] != "none", "text"])
    for row in wrapped.itertuples():
        prompt = train["text"].iloc[row.origin]
        assert row.text.endswith(prompt) and len(row.text) > len(prompt) and row.prompt_chars == len(prompt)
        context = row.text[: -len(prompt)]
        # a benign prompt's examples and contexts are benign: no sensitive prompt is copied into its context
        if train["sensitivity"].iloc[row.origin] == "none" or row.kind == "context_flat":
            assert not any(s in context for s in sensitive)
        assert "Now the question to answer" not in row.text and SHOT_ANSWER not in row.text  # not the evaluation template
        if row.kind == "kshot_flat":
            task = train["source_task"].iloc[row.origin]
            same = (train["source_task"] == task) & (train["sensitivity"] == train["sensitivity"].iloc[row.origin])
            shots = [t for t in train.loc[same, "text"] if t in context]
            assert shots, "a k-shot copy's examples come from the prompt's own task"
    again = flat_wrappers(train, per_row=1.5, seed=4)
    assert again.equals(wrapped)
    assert not flat_wrappers(train, per_row=1.5, seed=5).equals(wrapped)
    assert flat_wrappers(train, per_row=0.0, seed=4).empty


@pytest.mark.parametrize("view", ["head", "last_user_tail", "last_user_para"])
def test_training_rows_are_the_rows_the_router_reads(tiny_bundle, view):
    """The student's training view is the served tier view, token for token, short and long,
    with and without paragraphs."""
    from tokenizers import Tokenizer

    from classifier.serving.runtime import Router
    from classifier.training.dataset import PromptDataset

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "key", "the", "solve", "x", "=", "3", ",", "please", "\n\n", "\n \n", "\n"]
    texts = ["go " + " ".join(rng.choice(words, size=n)) for n in (1, 5, 20, 29, 30, 31, 60, 200, 700)]
    texts += ["examples " * 40 + "\n\nthe question is short", "x " * 50 + "\n\n" + "long last paragraph " * 30]
    with Router.load(tiny_bundle, view={"tier": view}) as router:
        rows, groups, _ = router._rows([router.parse(t)[0] for t in texts])
        served = [rows[g[0][0]] for g in groups]
        max_length = router.input_limits.max_length
        tokenizer = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
        ds = PromptDataset(texts, tokenizer, max_length, view=view)
    for i, want in enumerate(served):
        assert ds.ids[i, : ds.lengths[i]].tolist() == want, texts[i][:40]
    head_only = PromptDataset(texts, tokenizer, max_length)
    long = [i for i, t in enumerate(texts) if len(served[i]) == max_length]
    assert long and all((head_only.ids[i, : head_only.lengths[i]].tolist() == served[i]) == (view == "head") for i in long)
    if view == "last_user_para":
        # a short question after a blank line is read from its first word, and only it at the end
        short = served[-2]
        assert len(short) < max_length
        assert short[-6:-1] == tokenizer.encode("the question is short", add_special_tokens=False).ids[-5:]


def test_paragraph_tail_reads_whole_paragraphs_that_fit():
    from classifier.serving.view import paragraph_tail

    def count(text: str) -> int:
        return len(text.split())

    text = "a b c d e\n\nf g h\n \ni j"
    assert paragraph_tail(text, count, 2) == 2  # "i j"
    assert paragraph_tail(text, count, 5) == 5  # "f g h" + "i j"
    assert paragraph_tail(text, count, 9) == 5  # the first paragraph starts no paragraph break
    assert paragraph_tail(text, count, 1) is None  # the last paragraph alone is longer
    assert paragraph_tail("no breaks at all", count, 10) is None
    assert paragraph_tail("x\n\n\n\n", count, 3) is None  # nothing after the last break


def test_the_distiller_gives_wrapped_copies_the_prompts_targets(tiny_model_dir, tmp_path):
    """Copies carry their prompt's labels and teacher targets; a sensitive prompt cut by the view
    loses its sensitivity label (the view may not hold it), a benign one keeps it."""
    from tokenizers import Tokenizer

    from classifier.data.schema import LabelSchema
    from classifier.training.config import DistillConfig
    from classifier.training.dataset import IGNORE_INDEX, head_labels
    from classifier.training.distillation import StudentDistiller

    train = _train()
    # one long sensitive prompt: its wrapped copies cannot show all of it in a 30-token window
    long_text = "my card " + " ".join(["alpha"] * 80) + " 4111 1111 1111 1111"
    train.loc[4, "text"] = long_text
    cfg = DistillConfig(teacher=str(tiny_model_dir), out=str(tmp_path / "s"), max_length=32, traffic_shapes=2.0, seed=3,
                        view="last_user_para")
    d = StudentDistiller(cfg)
    d.schema_ = LabelSchema.from_yaml(tiny_model_dir / "schema.yaml")
    d.tokenizer_ = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    rng = np.random.default_rng(0)
    d._teacher_soft = {h.name: rng.dirichlet(np.ones(h.num_classes), size=len(train)).astype(np.float32)
                       for h in d.schema_.heads}
    ds, _ = d._datasets(train, train.iloc[:4])
    n = len(train)
    assert len(ds) == 3 * n
    base = head_labels(d.schema_, train)
    origin = np.repeat(np.arange(n), 2)  # per_row 2.0: every prompt twice
    for name in ("tier", "task"):
        np.testing.assert_array_equal(ds.labels[name][n:], base[name][origin])
        np.testing.assert_array_equal(ds.soft[name][0][n:], d._teacher_soft[name][origin])
    sens = ds.labels["sensitivity"][n:]
    benign = base["sensitivity"][origin] == list(d.schema_.head("sensitivity").classes).index("none")
    np.testing.assert_array_equal(sens[benign], base["sensitivity"][origin][benign])
    cut = origin == 4
    assert (sens[cut] == IGNORE_INDEX).all() and not ds.soft["sensitivity"][1][n:][cut].any()
    kept = ~benign & (sens != IGNORE_INDEX)  # sensitive prompts the view holds whole keep their label
    assert kept.any() and (sens[kept] == base["sensitivity"][origin][kept]).all()


@pytest.mark.slow
def test_the_teacher_trains_on_wrapped_copies_with_their_prompts_soft_targets(tmp_path, tiny_model_dir):
    """The teacher's loop takes traffic shapes too: 96 prompts + 96 copies at batch 16 make 12 steps
    an epoch, and a copy carries its prompt's soft tier target."""
    from test_trainer import tiny_config

    from classifier.data.schema import LabelSchema
    from classifier.training.dataset import soft_targets
    from classifier.training.trainer import Trainer

    data = tmp_path / "build"
    data.mkdir()
    make_frame().to_parquet(data / "dataset.parquet")
    cfg = tiny_config(data, tmp_path / "t", tiny_model_dir, epochs=1, traffic_shapes=1.0, view="last_user_para")
    trainer = Trainer(cfg).fit()
    assert trainer.global_step_ == 12
    train = make_frame().query("split == 'train'").reset_index(drop=True)
    schema = LabelSchema.from_yaml(cfg.schema)
    targets, present = soft_targets(schema, train)["tier"]
    train_ds, _ = trainer._datasets(train, train.iloc[:0])
    copies = train_ds.soft["tier"]
    np.testing.assert_array_equal(copies[0][len(train):], targets)
    np.testing.assert_array_equal(copies[1][len(train):], present)
