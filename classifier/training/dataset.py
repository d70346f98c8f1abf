"""Training data as tensors: read the built data set, tokenise once, batch by length.

``read_dataset`` loads ``dataset.parquet`` (columns per docs/design.md) and ``select_split`` takes a
split, optionally a seeded subsample. ``PromptDataset`` tokenises every prompt once with the fast
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from classifier.data.schema import LabelSchema
from classifier.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
REQUIRED_COLUMNS = ("text", "split")


# -- frames -------------------------------------------------------------------------------------
def read_dataset(path: str | Path):
    """The data set as a DataFrame: ``path`` is a build directory or a parquet file."""
    import pandas as pd

    path = Path(path)
    file = path / "dataset.parquet" if path.suffix != ".parquet" else path
    if not file.is_file():
        raise DataError(f"no data set at {file}; build one with 'tierwise data build' or pass --data")
    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read parquet: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{file}: missing required columns {missing} (see docs/design.md)")
    bad = frame["text"].isna() | ~frame["text"].map(lambda t: isinstance(t, str))
    if bad.any():
        row = frame.loc[bad].index[0]
        row_id = frame.loc[row, "id"] if "id" in frame.columns else row
        raise DataError(f"{file}: {int(bad.sum())} rows have no text (first: row {row_id!r}); drop or fix them")
    return frame


def select_split(frame, split: str, max_rows: int | None = None, seed: int = 0):
    """Rows of ``split`` (index reset), a seeded subsample of ``max_rows`` when given."""
    part = frame[frame["split"] == split]
    if max_rows is not None and len(part) > max_rows:
        # sample positions, then keep the original order: same rows and order for a given seed
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(part), size=max_rows, replace=False))
        part = part.iloc[keep]
    return part.reset_index(drop=True)


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
def _unpadded(tokenizer, max_length: int):
    """A copy of ``tokenizer`` that truncates to ``max_length`` and does not pad (we pad per batch)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.enable_truncation(max_length=max_length)
    tok.no_padding()
    return tok


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
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer,
        max_length: int,
        labels: dict[str, np.ndarray] | None = None,
        soft: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.max_length = int(max_length)
        self.pad_id = pad_id_of(tokenizer)
        encodings = _unpadded(tokenizer, self.max_length).encode_batch(list(texts))
        self.lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        self.ids = np.full((len(encodings), max(1, int(self.lengths.max(initial=1)))), self.pad_id, dtype=np.int32)
        for i, e in enumerate(encodings):
            self.ids[i, : len(e.ids)] = e.ids
        self.labels = dict(labels or {})
        self.soft = dict(soft or {})
        for name, arr in self.labels.items():
            if len(arr) != len(self):
                raise ValueError(f"labels for head {name!r} have {len(arr)} rows, texts {len(self)}")

    @classmethod
    def from_frame(cls, frame, schema: LabelSchema, tokenizer, max_length: int) -> PromptDataset:
        return cls(
            frame["text"].tolist(), tokenizer, max_length,
            labels=head_labels(schema, frame), soft=soft_targets(schema, frame),
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


class BucketBatchSampler(Sampler):
    """``length_bucketed_batches`` as a batch sampler for a ``torch.utils.data.DataLoader``
    (``collate_fn=dataset.collate``); call ``set_epoch`` before each epoch."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = np.asarray(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for batch in length_bucketed_batches(self.lengths, self.batch_size, seed=self.seed, epoch=self.epoch):
            yield batch.tolist()

    def __len__(self) -> int:
        return count_batches(len(self.lengths), self.batch_size)


def count_batches(n_rows: int, batch_size: int, pool: int = 50) -> int:
    """How many batches ``length_bucketed_batches`` makes of ``n_rows`` rows."""
    span = max(batch_size, pool * batch_size)
    full, rest = divmod(n_rows, span)
    return full * math.ceil(span / batch_size) + math.ceil(rest / batch_size)


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches: rows sorted by length (longest first) so padding is minimal."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    known = labels[labels != IGNORE_INDEX]
    return np.bincount(known, minlength=num_classes).astype(np.float64)
