"""Traffic-shaped training prompts: training prompts flattened behind the context users paste.

Routers often receive the request inside one long user message: k-shot examples of the same kind
of question, or pasted context (code, logs, a tool list, an earlier answer), the question last. The
runtime's tier view reads such a message's first ``head_tokens`` tokens and its end
(``classifier.serving.view``), so a model trained only on bare prompts sees text in serving it never
saw in training. ``flat_wrappers`` makes wrapped copies of training prompts, with the labels of the
prompt alone:

- ``kshot_flat``: 1-6 other training prompts of the same ``source_task`` as examples, then the
  prompt; one of several templates;
- ``context_flat``: one or two training prompts of other tasks as pasted context, then the prompt.

Examples share the prompt's sensitivity class (benign prompts get benign examples; a pii prompt
gets pii prompts of its own template, as a k-shot prefix of personal records would); contexts are
benign training prompts only. So a benign prompt's copy is benign whatever the view cuts, and a
sensitive prompt's copy holds nothing benign-labelled that is not. The
templates here differ from the evaluation wrappers' (``classifier.evaluation.wrappers``), whose
sets are built from the test and validation splits and BFCL's multi-turn files: evaluation
wrappers are never training wrappers.

``with_traffic_shapes`` adds the copies to a training set: each copy takes its prompt's labels and
soft targets (the student's: the teacher's distribution on the prompt alone); a sensitive prompt's
copy keeps its sensitivity label only where the training view reads the prompt whole.

What this module leaves out: turns as separate messages (the tier view then reads the prompt
alone, so such copies would repeat the prompt's own row).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# (introduction, one example, separator between examples, lead-in to the question); {k} is the
# example's number. None of these is the evaluation wrappers' template.
KSHOT_TEMPLATES: tuple[tuple[str, str, str, str], ...] = (
    ("Some earlier questions:\n\n", "Q{k}: {text}", "\n\n", "\n\nQuestion:\n"),
    ("", "### Example {k}\n{text}\nAnswer: ...", "\n\n", "\n\n### Task\n"),
    ("Use these as a guide to the format.\n", "- {text}", "\n", "\n\nNow answer this one:\n"),
    ("<examples>\n", "<example>\n{text}\n</example>", "\n", "\n</examples>\n\n"),
    ("I have a list of similar problems.\n\n", "Problem {k}. {text}", "\n\n", "\n\nSolve this:\n"),
    ("", "Input: {text}\nOutput: (omitted)", "\n\n", "\n\nInput: "),
)
CONTEXT_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("Context:\n", "\n\nQuestion: "),
    ("", "\n\n---\n\n"),
    ("Here is some background I copied:\n\n", "\n\nWith that in mind: "),
    ("```\n", "\n```\n\n"),
    ("Previous message:\n", "\n\nNew request:\n"),
)
KINDS = ("kshot_flat", "context_flat")
MAX_CHARS = 12_000  # a wrapped copy's length cap: past a window the view reads its head and end only


def _benign(frame: pd.DataFrame, column: str, negative: str) -> np.ndarray:
    if column not in frame.columns:
        return np.ones(len(frame), dtype=bool)
    values = frame[column]
    return (values.isna() | (values == negative)).to_numpy()


def flat_wrappers(train: pd.DataFrame, *, per_row: float, seed: int, sensitivity_column: str = "sensitivity",
                  negative: str = "none") -> pd.DataFrame:
    """Wrapped copies of ``train``'s prompts: about ``per_row`` per prompt (its integer part every
    prompt, its fraction a seeded share of them).

    Returns a frame with ``text`` (the wrapped prompt), ``origin`` (the prompt's position in
    ``train``), ``kind`` and ``prompt_chars`` (the prompt's length: it is the text's last characters).
    """
    cols = ["text", "origin", "kind", "prompt_chars"]
    if per_row <= 0 or train.empty:
        return pd.DataFrame(columns=cols)
    rng = np.random.default_rng([int(seed), 2013])
    texts = train["text"].astype(str).to_numpy()
    benign = _benign(train, sensitivity_column, negative)
    tasks = train["source_task"].astype(str).to_numpy() if "source_task" in train.columns else np.array([""] * len(train))
    benign_idx = np.flatnonzero(benign)
    # examples: prompts of the same task and the same sensitivity class (a pii prompt's examples are
    # pii prompts of its template, as in real k-shot traffic; a benign prompt's are benign)
    classes = (train[sensitivity_column].astype(object).where(~benign, negative).astype(str).to_numpy()
               if sensitivity_column in train.columns else np.array([negative] * len(train)))
    by_task: dict[tuple[str, str], np.ndarray] = {}
    for key in set(zip(tasks.tolist(), classes.tolist(), strict=True)):
        by_task[key] = np.flatnonzero((tasks == key[0]) & (classes == key[1]))
    whole, frac = int(per_row), per_row - int(per_row)
    origins = np.concatenate([np.repeat(np.arange(len(train)), whole),
                              np.flatnonzero(rng.random(len(train)) < frac)]).astype(np.int64)
    out: dict[str, list] = {c: [] for c in cols}
    for i in origins:
        prompt = texts[i]
        pool = by_task.get((tasks[i], classes[i]), np.empty(0, dtype=np.int64))
        pool = pool[pool != i]
        if len(pool) and rng.random() < 0.6:
            k = int(rng.integers(1, 7))
            shots = [texts[j] for j in rng.choice(pool, size=min(k, len(pool)), replace=False)]
            intro, one, sep, lead = KSHOT_TEMPLATES[int(rng.integers(len(KSHOT_TEMPLATES)))]
            body = sep.join(one.format(k=n + 1, text=s) for n, s in enumerate(shots))
            prefix, kind = intro + body + lead, "kshot_flat"
        elif len(benign_idx):
            picked = [j for j in rng.choice(benign_idx, size=min(2, len(benign_idx)), replace=False) if j != i]
            ctx = "\n\n".join(texts[j] for j in picked[:int(rng.integers(1, 3))])
            if not ctx:
                continue
            intro, lead = CONTEXT_TEMPLATES[int(rng.integers(len(CONTEXT_TEMPLATES)))]
            prefix, kind = intro + ctx + lead, "context_flat"
        else:
            continue
        prefix = prefix[-max(0, MAX_CHARS - len(prompt)):] if len(prefix) + len(prompt) > MAX_CHARS else prefix
        out["text"].append(prefix + prompt)
        out["origin"].append(int(i))
        out["kind"].append(kind)
        out["prompt_chars"].append(len(prompt))
    return pd.DataFrame(out, columns=cols)


def with_traffic_shapes(train: pd.DataFrame, texts: list[str], labels: dict[str, np.ndarray],
                        soft: dict[str, tuple[np.ndarray, np.ndarray]], *, schema: Any, tokenizer: Any,
                        config: Any) -> tuple[list[str], dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """``texts``, ``labels`` and ``soft`` (per head: targets and presence) of ``train`` plus
    ``config.traffic_shapes`` wrapped copies per prompt (``flat_wrappers``), seeded by
    ``config.seed``. A copy takes its prompt's labels and soft targets; the sensitivity head keeps
    a copy's label only where it still holds for what ``config.view`` reads: a benign prompt behind
    benign context is benign whatever is cut, a sensitive one only when the view holds it whole."""
    import logging

    from classifier.training.dataset import IGNORE_INDEX, serving_view_rows, unpadded_copy

    sens = schema.head("sensitivity") if "sensitivity" in schema else None
    wrapped = flat_wrappers(train, per_row=config.traffic_shapes, seed=config.seed,
                            sensitivity_column=sens.column if sens else "sensitivity",
                            negative=(sens.negative_class if sens else None) or "none")
    if wrapped.empty:
        return texts, labels, soft
    origin = wrapped["origin"].to_numpy()
    keep = np.ones(len(wrapped), dtype=bool)
    if sens is not None:
        # the copy's row ends with the prompt's own ids when the view reads it whole (BERT's tokens
        # of a text after whitespace are the same read alone)
        prompts = [t[-c:] for t, c in zip(wrapped["text"], wrapped["prompt_chars"], strict=True)]
        rows = serving_view_rows(wrapped["text"].tolist(), tokenizer, config.max_length, config.view)
        alone = [e.ids for e in unpadded_copy(tokenizer, None).encode_batch(prompts, add_special_tokens=False)]
        neg = list(sens.classes).index(sens.negative_class) if sens.negative_class in sens.classes else -1
        benign = labels[sens.name][origin] == neg
        whole = np.array([0 < len(a) <= len(r) - 2 and r[len(r) - 1 - len(a):len(r) - 1] == a
                          for r, a in zip(rows, alone, strict=True)])
        keep = benign | whole
    logging.getLogger(__name__).info("traffic shapes: %d wrapped copies (%s); sensitivity labels kept on %d",
                                     len(wrapped), wrapped["kind"].value_counts().to_dict(), int(keep.sum()))
    is_sens = (lambda name: sens is not None and name == sens.name)  # noqa: E731
    new_labels = {}
    for name, y in labels.items():
        extra = y[origin].copy()
        if is_sens(name):
            extra[~keep] = IGNORE_INDEX
        new_labels[name] = np.concatenate([y, extra])
    new_soft = {}
    for name, (p, mask) in soft.items():
        extra_mask = mask[origin] & keep if is_sens(name) else mask[origin]
        new_soft[name] = (np.concatenate([p, p[origin]]), np.concatenate([mask, extra_mask]))
    return list(texts) + wrapped["text"].tolist(), new_labels, new_soft
