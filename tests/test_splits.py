"""Group-level, stratified, seeded split assignment and the leakage check."""

from __future__ import annotations

from collections import Counter

import pytest

from classifier.data.splits import (
    DEFAULT_FRACTIONS,
    OOD,
    SplitFractions,
    assign_groups,
    check_disjoint,
    find_leaks,
)
from classifier.errors import ConfigError, DataError


def _rows(n_groups: int = 400):
    """Rows in groups of 1-4, two strata of different sizes."""
    groups, strata = [], []
    for g in range(n_groups):
        for _ in range(1 + g % 4):
            groups.append(f"g{g}")
            strata.append("a" if g % 5 else "b")
    return groups, strata


def test_groups_never_span_splits_and_shares_follow_targets() -> None:
    groups, strata = _rows()
    mapping = assign_groups(groups, strata, DEFAULT_FRACTIONS, seed=3)
    assert set(mapping) == set(groups)
    rows = [{"group": g, "split": mapping[g]} for g in groups]
    assert find_leaks(rows, ["group"]) == {}
    sizes = Counter(r["split"] for r in rows)
    for split, share in DEFAULT_FRACTIONS.items():
        assert abs(sizes[split] / len(rows) - share) < 0.02, (split, sizes)
    # stratified: the small stratum is spread over the splits in the same proportions
    small = Counter(mapping[g] for g, s in zip(groups, strata, strict=True) if s == "b")
    total_small = sum(small.values())
    for split, share in DEFAULT_FRACTIONS.items():
        assert abs(small[split] / total_small - share) < 0.05, (split, small)


def test_assignment_is_seeded() -> None:
    groups, strata = _rows()
    a = assign_groups(groups, strata, DEFAULT_FRACTIONS, seed=1)
    b = assign_groups(list(reversed(groups)), list(reversed(strata)), DEFAULT_FRACTIONS, seed=1)
    c = assign_groups(groups, strata, DEFAULT_FRACTIONS, seed=2)
    assert a == b  # independent of row order
    assert a != c


def test_fixed_groups_are_pinned() -> None:
    groups, strata = _rows(50)
    mapping = assign_groups(groups, strata, DEFAULT_FRACTIONS, seed=0, fixed={"g3": OOD, "g7": OOD})
    assert mapping["g3"] == mapping["g7"] == OOD
    assert sum(1 for v in mapping.values() if v == OOD) == 2


def test_each_split_gets_a_unit_of_every_stratum() -> None:
    units = [f"t{i}" for i in range(12)] + [f"m{i}" for i in range(5)]
    strata = ["template"] * 12 + ["mixed"] * 5
    mapping = assign_groups(units, strata, DEFAULT_FRACTIONS, seed=4, each_split=True)
    for stratum in ("template", "mixed"):
        got = {mapping[u] for u, s in zip(units, strata, strict=True) if s == stratum}
        assert got == set(DEFAULT_FRACTIONS), (stratum, got)


def test_weights_count_rows_not_groups() -> None:
    mapping = assign_groups(["big", "s1", "s2", "s3"], ["x"] * 4, DEFAULT_FRACTIONS, seed=0, weights=[100, 1, 1, 1])
    assert mapping["big"] == "train"


def test_find_leaks_and_check_disjoint() -> None:
    rows = [
        {"text": "a", "group": "g1", "template_id": None, "split": "train"},
        {"text": "b", "group": "g1", "template_id": "t1", "split": "test"},
        {"text": "c", "group": "g2", "template_id": None, "split": "test"},
    ]
    leaks = find_leaks(rows, ["text", "group", "template_id"])
    assert leaks == {"group": ["g1"]}
    with pytest.raises(DataError, match="g1"):
        check_disjoint(rows, ["group"])
    check_disjoint(rows, ["text", "template_id"])  # nulls are not a leak


@pytest.mark.parametrize(
    "fractions",
    [
        {"train": 0.7, "validation": 0.1, "calibration": 0.1},
        {"train": 0.7, "validation": 0.1, "calibration": 0.1, "test": 0.2},
        {"train": 0.8, "validation": 0.0, "calibration": 0.1, "test": 0.1},
    ],
)
def test_bad_fractions_are_config_errors(fractions) -> None:
    with pytest.raises(ConfigError):
        SplitFractions(fractions)
