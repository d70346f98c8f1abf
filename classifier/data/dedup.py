"""Exact and near-duplicate detection, and the groups splits are drawn by.

Two prompts are *exact* duplicates when their ``dedup_key`` (case-folded, whitespace collapsed)
is equal. *Near* duplicates are found with MinHash over character shingles and LSH banding,
implemented with numpy only: every text's shingle hashes are computed in one vectorised pass over
the concatenated bytes, each of ``num_perm`` hash permutations is a multiply/xor-shift mix of those
hashes, and a text's signature is the per-text minimum (``np.minimum.reduceat``). Texts sharing a
band of their signature are candidate pairs; their Jaccard similarity is estimated from the share
of equal signature entries.

Two thresholds: pairs at or above ``collapse_threshold`` are the same prompt (reformatted, an
option changed) and are collapsed to one row, the one with the best (lowest) priority; pairs at or
above the lower ``group_threshold`` are related prompts (one passage with different questions, a
templated question) that are kept but must share a split, so they form one ``group``.

Left out: similarity is lexical (character shingles), not semantic; estimated Jaccard has a
standard error of about ``0.5/sqrt(num_perm)``; buckets larger than ``max_bucket`` are linked as a
star to their first member rather than all-pairs, which is enough for union-find clustering.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from classifier.data.normalize import dedup_key
from classifier.errors import TypedConfig

log = logging.getLogger(__name__)

_PRIME = np.uint32(0x01000193)  # FNV prime: the rolling shingle hash multiplier


class DedupConfig(TypedConfig):
    """Near-duplicate settings. ``num_perm`` must be a multiple of ``bands``."""

    model_config = ConfigDict(frozen=True)
    _path: ClassVar[str] = "dedup"

    shingle_size: int = Field(5, ge=1)
    num_perm: int = Field(64, ge=1)
    bands: int = Field(16, ge=1)
    collapse_threshold: float = Field(0.9, le=1.0)
    group_threshold: float = Field(0.7, gt=0.0, le=1.0)
    max_chars: int = 2000
    max_bucket: int = Field(64, ge=2)
    seed: int = 0

    @field_validator("bands", "group_threshold", "max_chars")
    @classmethod
    def _consistent(cls, value: Any, info: ValidationInfo) -> Any:
        """Checks against a field declared above (skipped when that one is itself invalid)."""
        d, name = info.data, info.field_name
        if name == "bands" and "num_perm" in d and d["num_perm"] % value:
            raise ValueError(f"must divide num_perm ({d['num_perm']}), got {value}")
        if name == "group_threshold" and value > d.get("collapse_threshold", 1.0):
            raise ValueError(f"must be <= collapse_threshold ({d['collapse_threshold']}), got {value}")
        if name == "max_chars" and value < d.get("shingle_size", 1):
            raise ValueError(f"must be >= shingle_size ({d['shingle_size']}), got {value}")
        return value


@dataclass
class DedupResult:
    """Per input row: ``keep`` (survives), ``kept_as`` (index of the row that represents it) and
    ``group`` (component id over related pairs; equal for rows that must share a split)."""

    keep: np.ndarray
    kept_as: np.ndarray
    group: np.ndarray
    exact_collapsed: int
    near_collapsed: int
    candidate_pairs: int


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def minhash_signatures(texts: Sequence[str], config: DedupConfig) -> np.ndarray:
    """``(len(texts), num_perm)`` uint32 MinHash signatures over character shingles of
    ``dedup_key(text)[:max_chars]`` (UTF-8 bytes)."""
    k = config.shingle_size
    pad = b"\0" * (k - 1)
    encoded = [dedup_key(t)[: config.max_chars].encode("utf-8") or b"\0" for t in texts]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    data = np.frombuffer(b"".join(e + pad for e in encoded), dtype=np.uint8).astype(np.uint32)
    n_windows = len(data) - k + 1
    h = np.zeros(n_windows, dtype=np.uint32)
    for j in range(k):
        h = h * _PRIME + data[j : j + n_windows]
    # each text contributes one shingle per byte (windows reaching into the padding included)
    starts = np.concatenate([[0], np.cumsum(lengths + k - 1)[:-1]])
    index = np.repeat(starts, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    h = h[index]
    seg = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rng = np.random.default_rng(config.seed)
    mults = rng.integers(1, 2**32, size=(config.num_perm, 2), dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    xors = rng.integers(0, 2**32, size=config.num_perm, dtype=np.uint64).astype(np.uint32)
    sig = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    for p in range(config.num_perm):
        v = (h ^ xors[p]) * mults[p, 0]
        v ^= v >> np.uint32(15)
        v *= mults[p, 1]
        v ^= v >> np.uint32(13)
        sig[:, p] = np.minimum.reduceat(v, seg)
    return sig


def candidate_pairs(sig: np.ndarray, config: DedupConfig) -> np.ndarray:
    """``(m, 2)`` index pairs (i < j) that share at least one LSH band."""
    n = len(sig)
    rows = config.num_perm // config.bands
    found: list[np.ndarray] = []
    weights = np.random.default_rng(config.seed + 1).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    for b in range(config.bands):
        block = sig[:, b * rows : (b + 1) * rows].astype(np.uint64)
        keys = (block * weights).sum(axis=1) ^ (block[:, 0] << np.uint64(32))
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
        run_starts = np.concatenate([[0], boundaries])
        run_ends = np.concatenate([boundaries, [n]])
        for s, e in zip(run_starts[run_ends - run_starts > 1], run_ends[run_ends - run_starts > 1], strict=True):
            members = np.sort(order[s:e])
            if len(members) <= config.max_bucket:
                a, c = np.triu_indices(len(members), k=1)
                found.append(np.stack([members[a], members[c]], axis=1))
            else:
                found.append(np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    return np.unique(pairs, axis=0)


def deduplicate(texts: Sequence[str], priorities: Sequence[int], config: DedupConfig) -> DedupResult:
    """Collapse exact and near duplicates and group related prompts.

    ``priorities``: lower wins when a cluster keeps one row (ties: the earlier row).
    """
    n = len(texts)
    if len(priorities) != n:
        raise ValueError("texts and priorities differ in length")
    rank = np.lexsort((np.arange(n), np.asarray(priorities)))  # best first
    position = np.empty(n, dtype=np.int64)
    position[rank] = np.arange(n)
    kept_as = np.arange(n)
    first_by_key: dict[str, int] = {}
    for i in rank:  # exact duplicates: the best-ranked row of each key represents it
        key = dedup_key(texts[i])
        kept_as[i] = first_by_key.setdefault(key, int(i))
    exact_keep = kept_as == np.arange(n)
    exact_collapsed = int(n - exact_keep.sum())
    reps = np.flatnonzero(exact_keep)
    if len(reps) == 0:
        return DedupResult(exact_keep, kept_as, np.arange(n), exact_collapsed, 0, 0)
    sig = minhash_signatures([texts[i] for i in reps], config)
    pairs = candidate_pairs(sig, config)
    similarity = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1) if len(pairs) else np.empty(0)
    collapse_uf, group_uf = _UnionFind(len(reps)), _UnionFind(len(reps))
    # union so that the root of a collapse cluster is its best-ranked member
    order_by_rank = np.argsort(position[reps])
    relabel = np.empty(len(reps), dtype=np.int64)
    relabel[order_by_rank] = np.arange(len(reps))
    for (a, b), s in zip(pairs, similarity, strict=True):
        if s >= config.group_threshold:
            group_uf.union(int(relabel[a]), int(relabel[b]))
            if s >= config.collapse_threshold:
                collapse_uf.union(int(relabel[a]), int(relabel[b]))
    collapse_root = order_by_rank[collapse_uf.roots()[relabel]]  # rep position -> root rep position
    group_root = order_by_rank[group_uf.roots()[relabel]]
    near_target = reps[collapse_root]
    rep_kept_as = dict(zip(reps.tolist(), near_target.tolist(), strict=True))
    rep_group = dict(zip(reps.tolist(), reps[group_root].tolist(), strict=True))
    final_kept_as = np.array([rep_kept_as[int(kept_as[i])] for i in range(n)], dtype=np.int64)
    group = np.array([rep_group[int(kept_as[i])] for i in range(n)], dtype=np.int64)
    keep = final_kept_as == np.arange(n)
    near_collapsed = int(exact_keep.sum() - keep.sum())
    log.info(
        "dedup: %d rows, %d exact and %d near duplicates collapsed, %d candidate pairs",
        n, exact_collapsed, near_collapsed, len(pairs),
    )
    return DedupResult(keep, final_kept_as, group, exact_collapsed, near_collapsed, int(len(pairs)))
