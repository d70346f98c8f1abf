"""Seeded, stratified assignment of whole groups to splits, and the check that groups do not leak.

A *group* is the unit of splitting (a near-duplicate cluster, a prompt template, a presidio
template, a gitleaks rule): every row of a group lands on the same split. Groups are assigned per
*stratum* (e.g. source|tier|task|sensitivity, taken from the group's most common row) so that
each split keeps each stratum's proportions as far as whole groups allow: within a stratum, groups
are visited largest first (ties in seeded random order) and each goes to the split furthest below
its target share. ``fixed`` pins groups to a split beforehand (the ``ood`` hold-outs).

Left out: no attempt at exact proportions for strata with fewer groups than splits (their groups
go to the splits with the largest targets, train first); splitting by time or by user.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, PositiveFloat

from classifier.errors import DataError, TypedConfig

SPLITS: tuple[str, ...] = ("train", "validation", "calibration", "test")
TRAIN = "train"
OOD = "ood"
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.70, "validation": 0.05, "calibration": 0.10, "test": 0.15}


def _complete(fractions: dict[str, float]) -> dict[str, float]:
    if set(fractions) != set(SPLITS):
        raise ValueError(f"must name exactly {list(SPLITS)}, got {sorted(fractions)}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"must sum to 1, got {sum(fractions.values()):.4f}")
    return fractions


# split -> target share: covers ``SPLITS``, positive, sums to 1
Fractions = Annotated[dict[str, PositiveFloat], AfterValidator(_complete)]


class SplitFractions(TypedConfig):
    """Target share of each in-distribution split; must cover ``SPLITS`` and sum to 1."""

    model_config = ConfigDict(frozen=True)

    fractions: Fractions = Field(default_factory=lambda: dict(DEFAULT_FRACTIONS))

    def __init__(self, fractions: dict[str, float] | None = None) -> None:
        super().__init__(**({} if fractions is None else {"fractions": fractions}))


def _tiebreak(seed: int, key: Hashable) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_groups(
    groups: Sequence[Hashable],
    strata: Sequence[Hashable],
    fractions: Mapping[str, float],
    seed: int,
    *,
    weights: Sequence[float] | None = None,
    fixed: Mapping[Hashable, str] | None = None,
    each_split: bool = False,
) -> dict[Hashable, str]:
    """Split of every group.

    ``groups``/``strata``/``weights`` are per row (a group's stratum is its most common one;
    its size the sum of its rows' weights, 1 each by default). ``each_split``: give every split
    at least one group of each stratum first (when the stratum has enough groups), so that e.g.
    every split has prompt templates of every kind.
    """
    if len(groups) != len(strata) or (weights is not None and len(weights) != len(groups)):
        raise ValueError("groups, strata and weights differ in length")
    fixed = dict(fixed or {})
    size: dict[Hashable, float] = defaultdict(float)
    votes: dict[Hashable, Counter] = defaultdict(Counter)
    for i, (g, s) in enumerate(zip(groups, strata, strict=True)):
        w = 1.0 if weights is None else float(weights[i])
        size[g] += w
        votes[g][s] += w
    by_stratum: dict[Hashable, list[Hashable]] = defaultdict(list)
    for g in size:
        if g not in fixed:
            stratum = max(votes[g].items(), key=lambda kv: (kv[1], str(kv[0])))[0]
            by_stratum[stratum].append(g)
    names = list(fractions)
    out: dict[Hashable, str] = dict(fixed)
    for stratum in sorted(by_stratum, key=str):
        members = sorted(by_stratum[stratum], key=lambda g: (-size[g], _tiebreak(seed, (stratum, g))))
        assigned = dict.fromkeys(names, 0.0)
        if each_split and len(members) >= len(names):
            # the smallest groups seed the small splits; the rest is greedy
            seeds = sorted(members, key=lambda g: (size[g], _tiebreak(seed, (stratum, g))))[: len(names)]
            for g, name in zip(seeds, sorted(names, key=lambda s: fractions[s]), strict=True):
                out[g] = name
                assigned[name] += size[g]
            members = [g for g in members if g not in set(seeds)]
        for g in members:
            total = sum(assigned.values()) + size[g]
            name = max(names, key=lambda s: (fractions[s] * total - assigned[s], fractions[s]))
            out[g] = name
            assigned[name] += size[g]
    return out


def find_leaks(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], split_column: str = "split") -> dict[str, list[str]]:
    """Values of ``columns`` that occur on more than one split (nulls ignored): column -> values."""
    leaks: dict[str, list[str]] = {}
    for col in columns:
        seen: dict[Any, set[str]] = defaultdict(set)
        for r in rows:
            v = r.get(col)
            if v is not None and v == v:  # skip None and NaN
                seen[v].add(r[split_column])
        bad = sorted(str(v) for v, s in seen.items() if len(s) > 1)
        if bad:
            leaks[col] = bad
    return leaks


def check_disjoint(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], split_column: str = "split") -> None:
    """Raise ``DataError`` naming the first leaked values if any column value spans two splits."""
    leaks = find_leaks(rows, columns, split_column)
    if leaks:
        detail = "; ".join(f"{c}: {v[:5]}" for c, v in leaks.items())
        raise DataError(f"split leakage, values on more than one split: {detail}")
