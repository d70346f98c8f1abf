"""Task-prior and cluster-prior baselines: per-task lookup fitted on train, global prior for unseen
tasks; the cluster prior scores new tasks from their text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from classifier.data.schema import LabelSchema
from classifier.evaluation.baselines import BASELINES, ClusterPriorBaseline, TaskPriorBaseline


def _frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for task, rate, word in (("easy_task", 0.1, "hello"), ("hard_task", 0.8, "integral")):
        for i in range(150):
            rows.append({"text": f"{word} {word} question {i} " + " ".join(rng.choice(["a", "b", "c"], 4)),
                         "source_task": task, "tier": "frontier" if rng.random() < rate else "cheap",
                         "task": "knowledge", "sensitivity": "none", "split": "train"})
    return pd.DataFrame(rows)


def test_task_prior_is_a_lookup_table_with_a_global_fallback():
    schema = LabelSchema.default()
    frame = _frame()
    model = TaskPriorBaseline(schema, strength=0.0).fit(frame)
    pos = schema.head("tier").index("frontier")
    probe = pd.DataFrame({"text": ["x", "y", "z"], "source_task": ["easy_task", "hard_task", "never_seen"]})
    p = model.predict_proba(probe)["tier"][:, pos]
    easy = (frame[frame.source_task == "easy_task"].tier == "frontier").mean()
    hard = (frame[frame.source_task == "hard_task"].tier == "frontier").mean()
    assert p[0] == pytest.approx(easy) and p[1] == pytest.approx(hard)
    assert p[2] == pytest.approx((frame.tier == "frontier").mean())  # unseen task: global prior
    assert model.predict_proba(["no metadata"])["tier"][0, pos] == pytest.approx(p[2])
    assert TaskPriorBaseline in BASELINES and ClusterPriorBaseline in BASELINES


def test_cluster_prior_baseline_separates_kinds_of_text():
    schema = LabelSchema.default()
    frame = _frame()
    model = ClusterPriorBaseline(schema, n_clusters=2, svd_dim=8).fit(frame)
    pos = schema.head("tier").index("frontier")
    p = model.predict_proba(["integral integral question", "hello hello question"])["tier"][:, pos]
    assert p[0] > p[1] + 0.4
