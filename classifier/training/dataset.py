"""Training data as tensors: read the built data set, tokenise once, batch by length.

The frames come from ``classifier.data.reader`` (``read_dataset``, ``select_split``).
``PromptDataset`` tokenises every prompt once with the fast
tokenizer (truncated to ``max_length``, unpadded) and holds, per schema head, the class index of
each row (``-100`` where the label is null, so that row does not train that head) and the soft
target from ``<column>_soft`` where present. ``collate`` pads a batch only to its own longest row
(dynamic padding) and ``length_bucketed_batches`` groups rows of similar length, which on a CPU
roughly halves the work per epoch against random batches padded to ``max_length``.

What is left out: label derivation and data validation (``classifier.data``), the loss (the
trainer's). Batches are plain index arrays, so data order is a pure function of (seed, epoch),
which is what makes resumed training identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from classifier.data.schema import LabelSchema
from classifier.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


# -- labels -------------------------------------------------------------------------------------
def head_labels(schema: LabelSchema, frame) -> dict[str, np.ndarray]:
    """Per head, the class index of each row (int64), ``IGNORE_INDEX`` where the label is null."""
    from classifier.data.labels import label_indices

    out: dict[str, np.ndarray] = {}
    for head in schema.heads:
        if head.column not in frame.columns:
            log.warning("column %r (head %r) is not in the data: the head gets no labels", head.column, head.name)
        mask, y = label_indices(head, frame)
        labels = np.full(len(frame), IGNORE_INDEX, dtype=np.int64)
        labels[mask] = y
        out[head.name] = labels
    return out


def soft_targets(schema: LabelSchema, frame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head with a ``<column>_soft`` column: ``(targets [n, C] float32, present [n] bool)``.

    Each present target is a list of non-negative numbers in class order, normalised to sum 1.
    """
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for head in schema.heads:
        column = f"{head.column}_soft"
        if column not in frame.columns:
            continue
        targets = np.zeros((len(frame), head.num_classes), dtype=np.float32)
        present = np.zeros(len(frame), dtype=bool)
        for i, value in enumerate(frame[column].tolist()):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            arr = np.asarray(value, dtype=np.float64).ravel()
            if arr.size == 0 or np.isnan(arr).all():
                continue
            if arr.size != head.num_classes or not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
                row_id = frame["id"].iloc[i] if "id" in frame.columns else i
                raise DataError(
                    f"column {column!r}, row {row_id!r}: soft target {arr.tolist()} must be "
                    f"{head.num_classes} non-negative numbers (classes {list(head.classes)}) with a positive sum"
                )
            targets[i] = arr / arr.sum()
            present[i] = True
        out[head.name] = (targets, present)
    return out


# -- tokenisation and batches -------------------------------------------------------------------
def unpadded_copy(tokenizer, max_length: int | None):
    """A copy of ``tokenizer`` that does not pad (we pad per batch) and truncates to ``max_length``
    (``None``: does not truncate)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok


def serving_view_rows(texts: Sequence[str], tokenizer, max_length: int, view: str) -> list[list[int]]:
    """The token rows the serving runtime's tier view ``view`` (``head``, ``last_user_tail`` or
    ``last_user_para``, at the default ``ModelView`` head size) reads of each prompt sent alone:
    ``[CLS]`` text ``[SEP]``, the text whole when it fits ``max_length - 2`` tokens, else its first
    window (``head``) or its head and its end. ``classifier.serving.view`` cuts them the same way
    from the same ids (a test holds the two equal)."""
    from classifier.serving.view import ModelView, head_tail, paragraph_tail
    from classifier.serving.word_cache import WordCache

    window = int(max_length) - 2
    head = ModelView().fitted(window).head_tokens
    full = unpadded_copy(tokenizer, None)
    # paragraphs are counted alone only where that is exact (the runtime's condition)
    para = view == "last_user_para" and WordCache.for_tokenizer(full) is not None

    def count(text: str) -> int:
        return len(full.encode(text, add_special_tokens=False).ids)

    cls_id, sep_id = full.token_to_id("[CLS]"), full.token_to_id("[SEP]")
    first = [] if cls_id is None else [cls_id]
    last = [] if sep_id is None else [sep_id]
    rows = []
    for text, enc in zip(texts, full.encode_batch(list(texts), add_special_tokens=False), strict=True):
        ids = enc.ids
        if view == "head":
            rows.append(first + ids[:window] + last)
            continue
        tail = paragraph_tail(text, count, window - head) if para and len(ids) > window else None
        rows.append(first + [t for lo, hi in head_tail(0, len(ids), window, head, tail) for t in ids[lo:hi]] + last)
    return rows


def pad_id_of(tokenizer) -> int:
    padding = tokenizer.padding
    if padding:
        return int(padding["pad_id"])
    pad = tokenizer.token_to_id("[PAD]")
    return 0 if pad is None else int(pad)


class PromptDataset(Dataset):
    """Tokenised prompts plus per-head labels and soft targets; a ``torch.utils.data.Dataset``.

    ``ids`` is an ``[n, max_length]`` int32 array (rows padded with the pad id), ``lengths`` the
    real token count of each row. ``dataset[i]`` gives one row's tensors; ``collate(indices)``
    a dynamically padded batch.

    ``view``: ``"head"`` reads the first ``max_length`` tokens of each prompt (how the teacher was
    trained); ``"last_user_tail"`` or ``"last_user_para"`` reads what that tier view of the serving
    runtime reads of the prompt (``serving_view_rows``), so the model trains on what it is served.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer,
        max_length: int,
        labels: dict[str, np.ndarray] | None = None,
        soft: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
        view: str = "head",
    ) -> None:
        self.max_length = int(max_length)
        self.pad_id = pad_id_of(tokenizer)
        if view == "head":
            rows = [e.ids for e in unpadded_copy(tokenizer, self.max_length).encode_batch(list(texts))]
        else:
            rows = serving_view_rows(texts, tokenizer, self.max_length, view)
        self.lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.ids = np.full((len(rows), max(1, int(self.lengths.max(initial=1)))), self.pad_id, dtype=np.int32)
        for i, r in enumerate(rows):
            self.ids[i, : len(r)] = r
        self.labels = dict(labels or {})
        self.soft = dict(soft or {})
        for name, arr in self.labels.items():
            if len(arr) != len(self):
                raise ValueError(f"labels for head {name!r} have {len(arr)} rows, texts {len(self)}")

    @classmethod
    def from_frame(cls, frame, schema: LabelSchema, tokenizer, max_length: int,
                   view: str = "head") -> PromptDataset:
        return cls(
            frame["text"].tolist(), tokenizer, max_length,
            labels=head_labels(schema, frame), soft=soft_targets(schema, frame), view=view,
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.collate([index])

    def collate(self, indices: Sequence[int] | np.ndarray) -> dict[str, Any]:
        """``input_ids``/``attention_mask`` (int64, padded to the batch's longest row),
        ``labels`` {head: int64 [B]}, ``soft`` {head: float32 [B, C]}, ``soft_mask`` {head: bool [B]}."""
        idx = np.asarray(indices, dtype=np.int64)
        width = int(self.lengths[idx].max())
        ids = torch.from_numpy(self.ids[idx, :width].astype(np.int64))
        mask = torch.from_numpy((np.arange(width)[None, :] < self.lengths[idx][:, None]).astype(np.int64))
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": {h: torch.from_numpy(a[idx]) for h, a in self.labels.items()},
            "soft": {h: torch.from_numpy(t[idx]) for h, (t, _) in self.soft.items()},
            "soft_mask": {h: torch.from_numpy(m[idx]) for h, (_, m) in self.soft.items()},
        }


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, pool: int = 50
) -> list[np.ndarray]:
    """One epoch of shuffled, length-bucketed batches of row indices; a pure function of its arguments.

    Rows are shuffled, cut into pools of ``pool * batch_size``, sorted by length inside each pool
    and cut into batches; the batch order is shuffled again so lengths do not trend over the epoch.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(len(lengths))
    span = max(batch_size, pool * batch_size)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches: rows sorted by length (longest first) so padding is minimal."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    known = labels[labels != IGNORE_INDEX]
    return np.bincount(known, minlength=num_classes).astype(np.float64)
