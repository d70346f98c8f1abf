"""The baselines every learned router must beat, and the ``tierwise baseline`` command.

Five baselines, each sklearn-shaped (``fit(frame)`` returns self, learned state ends in ``_``,
``predict_proba(texts) -> {head: [n, C] array}`` in schema class order):

1. ``MajorityBaseline``: the training class frequencies of each head, for every prompt.
2. ``KeywordBaseline``: hand-written regular expressions (code keywords and back-ticks -> code,
   numbers / "solve" / "calculate" -> math_reasoning, AWS / GitHub / OpenAI-style keys, private
   key blocks and ``password=`` -> credential, e-mails / phones / SSNs / card numbers -> pii; a
   frontier score for the tier head that grows with length, maths and code). The only thing it
   learns is each head's class prior and the tier score's cut-off (so that it sends the same share
   to the frontier as the training labels do). Rules are keyed by *class name*, so a custom schema
   gets them only for classes named like the default ones; other classes fall back to the prior.
3. ``TfidfLogRegBaseline``: TF-IDF of word 1-2 grams and character 3-5 grams (capped vocabularies,
   text cut at ``max_chars``) and one class-balanced logistic regression per head.
4. ``TaskPriorBaseline``: per ``source_task`` class frequencies fitted on train (a lookup table of
   metadata a router does not see; the bar a tier model must clear, see issue 15).
5. ``ClusterPriorBaseline``: k-means clusters of TF-IDF + SVD text vectors, a Beta posterior of the
   tier per cluster (``classifier.evaluation.clusters``); text only, so it also scores new tasks.

``evaluate_baselines`` fits all of them on the ``train`` split (each head on its labelled rows) and
evaluates them on every test split present (``test``, ``ood``): per-head metrics
(``classifier.evaluation.metrics``), recall at >= 95% precision for gate heads, and for the tier
head AUROC, APGR, CPT and the cost at 95% of all-frontier quality with real per-model prices
(``classifier.evaluation.costs``), both with the threshold picked on the evaluated rows
(optimistic) and with the threshold picked on the validation split (honest).

Left out: hyper-parameter search for the baselines, calibration, and any neural model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from classifier.data.labels import label_indices
from classifier.data.reader import read_dataset
from classifier.data.schema import DEFAULT_SCHEMA_PATH, Head, LabelSchema
from classifier.errors import ConfigError, DataError
from classifier.evaluation.costs import (
    RoutingOutcomes,
    apply_threshold,
    cost_at_quality,
    frontier_quality_target,
    reference_routers,
    summarize_router,
)
from classifier.evaluation.metrics import (
    evaluate_heads,
    head_score,
    recall_at_precision,
)
from classifier.evaluation.prices import DEFAULT_PRICES_PATH, Prices
from classifier.json_io import to_jsonable as _jsonable
from classifier.numeric import softmax

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterPriorBaseline",
    "KeywordBaseline",
    "MajorityBaseline",
    "TaskPriorBaseline",
    "TfidfLogRegBaseline",
    "add_baseline_arguments",
    "evaluate_baselines",
    "markdown_table",
    "run_baseline",
]

TEST_SPLITS = ("test", "ood")
TRAIN_SPLIT = "train"
THRESHOLD_SPLIT = "validation"


def _texts(frame_or_texts: pd.DataFrame | Sequence[str]) -> list[str]:
    if isinstance(frame_or_texts, pd.DataFrame):
        if "text" not in frame_or_texts.columns:
            raise DataError("the data has no 'text' column")
        values = frame_or_texts["text"]
    else:
        values = pd.Series(list(frame_or_texts), dtype=object)
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]


def _priors(head: Head, frame: pd.DataFrame) -> np.ndarray:
    """Class frequencies of ``head`` in ``frame`` (uniform when no row is labelled)."""
    _, y = label_indices(head, frame)
    if len(y) == 0:
        return np.full(head.num_classes, 1.0 / head.num_classes)
    return np.bincount(y, minlength=head.num_classes) / len(y)


# -- 1. majority -----------------------------------------------------------------------------------
class MajorityBaseline:
    """Predicts each head's training class frequencies: arg-max is the majority class."""

    name = "majority"

    def __init__(self, schema: LabelSchema) -> None:
        self.schema = schema

    def fit(self, frame: pd.DataFrame) -> MajorityBaseline:
        self.priors_ = {h.name: _priors(h, frame) for h in self.schema.heads}
        return self

    def predict_proba(self, texts: pd.DataFrame | Sequence[str]) -> dict[str, np.ndarray]:
        n = len(_texts(texts))
        return {name: np.tile(p, (n, 1)) for name, p in self.priors_.items()}


# -- 2. keyword rules ------------------------------------------------------------------------------
def _rx(pattern: str, flags: int = re.IGNORECASE) -> re.Pattern[str]:
    return re.compile(pattern, flags)


# (pattern, weight) per class name; a class's score is the sum of the weights of the patterns found
KEYWORD_RULES: dict[str, list[tuple[re.Pattern[str], float]]] = {
    "code": [
        (_rx(r"```|`[^`\n]+`"), 2.0),
        (_rx(r"\b(def|class|import|return|lambda|elif|printf|println|console\.log|#include|public static|void)\b"), 2.0),
        (_rx(r"\b(python|javascript|typescript|java|c\+\+|c#|rust|golang|sql|bash|html|css|regex|json)\b"), 1.5),
        (_rx(r"\b(code|function|program|script|compile|debug|bug|api|algorithm|array|string|integer|list of)\b"), 1.0),
        (_rx(r"[{};]\s*$|==|!=|->|=>|\w+\(\w*\)", re.MULTILINE), 1.0),
    ],
    "math_reasoning": [
        (_rx(r"\b(solve|calculate|compute|how many|how much|equation|sum of|total|percent|probability|"
             r"average|ratio|profit|remainder|integer|prove)\b"), 1.5),
        (_rx(r"\d+\s*[-+*/x×÷^=]\s*\d+"), 1.5),
        (_rx(r"\$\s?\d|\d+(\.\d+)?\s*(%|dollars|cents|hours|minutes|miles|km|kg)"), 1.0),
        (_rx(r"\d"), 0.5),
    ],
    "knowledge": [
        (_rx(r"^\s*\(?[A-D][).:]\s", re.MULTILINE), 2.5),
        (_rx(r"\b(which of the following|true or false|answer:)"), 2.0),
        (_rx(r"\b(what is|who (was|is)|when did|where is|define|explain|why do)\b"), 1.0),
    ],
    "chat_writing": [
        (_rx(r"\b(write|rewrite|draft|compose|story|poem|essay|e-?mail|letter|blog|summari[sz]e|"
             r"paraphrase|translate|reply|tone|message|tweet|slogan|role-?play|imagine|pretend)\b"), 1.5),
    ],
    "credential": [
        (_rx(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", 0), 4.0),
        (_rx(r"\bgh[pousr]_[A-Za-z0-9]{20,}", 0), 4.0),
        (_rx(r"\bgithub_pat_[A-Za-z0-9_]{20,}", 0), 4.0),
        (_rx(r"\bsk-(proj-|ant-)?[A-Za-z0-9_-]{16,}", 0), 4.0),
        (_rx(r"\b[sr]k_(live|test)_[A-Za-z0-9]{10,}", 0), 4.0),
        (_rx(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 0), 4.0),
        (_rx(r"\bAIza[0-9A-Za-z_-]{30,}", 0), 4.0),
        (_rx(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", 0), 3.0),
        (_rx(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), 4.0),
        # a secret-named field assigned a long value: password=..., API_TOKEN: "...", apiKey: '...'
        (_rx(r"(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|"
             r"credential|auth)[\w.-]*[\"']?\s*[:=]\s*[\"']?[^\s\"']{8,}"), 3.0),
        (_rx(r"\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}|authorization:\s*\S{16,}"), 3.0),
        # vendor-prefixed tokens (hf_..., shppa_..., glpat-...)
        (_rx(r"\b[a-z]{2,8}[_-][A-Za-z0-9]{16,}\b", 0), 2.0),
        # a long random-looking token: letters and digits mixed, 24+ characters
        (_rx(r"(?=[A-Za-z0-9+/_=-]*\d)(?=[A-Za-z0-9+/_=-]*[A-Za-z])\b[A-Za-z0-9+/_=-]{24,}", 0), 1.5),
        (_rx(r"\b(api key|secret key|access key|access token|private key|client secret)\b"), 1.0),
    ],
    "pii": [
        (_rx(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"), 3.0),
        (_rx(r"(\+\d{1,3}[\s.-]?)?\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"), 3.0),
        (_rx(r"\b\d{3}-\d{2}-\d{4}\b"), 3.0),
        (_rx(r"\b(?:\d{4}[ -]?){3}\d{4}\b|\b\d{4}[ -]?\d{6}[ -]?\d{5}\b"), 3.0),
        (_rx(r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b", 0), 2.0),  # IBAN-like
        (_rx(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), 2.0),  # IPv4 address
        (_rx(r"\b\d{2,4}[ -]\d{2,4}[ -]\d{2,4}(?:[ -]\d{2,4})?\b"), 1.5),  # phone, other formats
        (_rx(r"\b\d{1,5}\s+\w+(\s\w+)?\s+(street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd)\b"), 2.0),
        (_rx(r"\b(apt\.?|suite|unit|p\.?o\.? box|box|psc)\s*\d+"), 2.0),
        (_rx(r"\b(my name is|date of birth|born on|social security|passport|driver'?s licen[cs]e|"
             r"phone number|lives at|my address)\b"), 1.5),
    ],
}
_CODE_RULES = KEYWORD_RULES["code"]
_MATH_RULES = KEYWORD_RULES["math_reasoning"]
_HARD = _rx(r"\b(step[- ]by[- ]step|prove|derive|explain why|analy[sz]e|optimi[sz]e|implement|design)\b")


def _rule_score(rules: list[tuple[re.Pattern[str], float]], text: str) -> float:
    return float(sum(w for rx, w in rules if rx.search(text)))


def keyword_frontier_score(text: str) -> float:
    """Unbounded "needs the frontier" score: longer, mathematical, code or multi-step prompts."""
    words = len(text.split())
    return (
        math.log1p(words)
        + 0.5 * min(_rule_score(_MATH_RULES, text), 3.0)
        + 0.5 * min(_rule_score(_CODE_RULES, text), 3.0)
        + (1.0 if _HARD.search(text) else 0.0)
    )


class KeywordBaseline:
    """Regular-expression rules per class name, a length/maths/code score for binary tier heads.

    A class's logit is ``prior_weight * log(prior) + rule score``: the prior only breaks ties and
    names the default (classes without rules, e.g. ``none``, keep their prior alone), so a strong
    rule hit moves a prompt off the default even towards a rare class. A binary head with a
    ``positive_class`` named ``frontier`` uses ``keyword_frontier_score`` instead, cut at the
    training frontier share. Credential rules weigh more than PII rules, so a prompt with both
    comes out as credential (the schema's labelling rule).
    """

    name = "keyword"

    def __init__(self, schema: LabelSchema, *, sharpness: float = 2.0, prior_weight: float = 0.3) -> None:
        if sharpness <= 0:
            raise ConfigError(f"KeywordBaseline: sharpness must be > 0, got {sharpness}")
        if prior_weight < 0:
            raise ConfigError(f"KeywordBaseline: prior_weight must be >= 0, got {prior_weight}")
        self.schema = schema
        self.sharpness = sharpness
        self.prior_weight = prior_weight

    @staticmethod
    def _is_frontier_head(head: Head) -> bool:
        return head.num_classes == 2 and head.positive_class == "frontier"

    def fit(self, frame: pd.DataFrame) -> KeywordBaseline:
        self.priors_ = {h.name: _priors(h, frame) for h in self.schema.heads}
        self.cutoffs_: dict[str, float] = {}
        texts = _texts(frame)
        for head in self.schema.heads:
            if not self._is_frontier_head(head):
                continue
            mask, y = label_indices(head, frame)
            pos = head.index("frontier")
            if len(y) == 0:
                self.cutoffs_[head.name] = 0.0
                continue
            scores = np.array([keyword_frontier_score(t) for t, m in zip(texts, mask, strict=True) if m])
            share = float(np.mean(y == pos))
            # send the same share of training prompts to the frontier as the labels do
            self.cutoffs_[head.name] = float(np.quantile(scores, 1.0 - share)) if 0 < share < 1 else (
                float(scores.min()) - 1.0 if share >= 1 else float(scores.max()) + 1.0
            )
        return self

    def predict_proba(self, texts: pd.DataFrame | Sequence[str]) -> dict[str, np.ndarray]:
        items = _texts(texts)
        out: dict[str, np.ndarray] = {}
        for head in self.schema.heads:
            if self._is_frontier_head(head):
                s = np.array([keyword_frontier_score(t) for t in items], dtype=np.float64)
                p = 1.0 / (1.0 + np.exp(-self.sharpness * (s - self.cutoffs_[head.name])))
                probs = np.zeros((len(items), 2))
                pos = head.index("frontier")
                probs[:, pos], probs[:, 1 - pos] = p, 1.0 - p
                out[head.name] = probs
                continue
            logits = np.tile(self.prior_weight * np.log(self.priors_[head.name] + 1e-6), (len(items), 1))
            for j, cls in enumerate(head.classes):
                rules = KEYWORD_RULES.get(cls)
                if rules:
                    logits[:, j] += [_rule_score(rules, t) for t in items]
            out[head.name] = softmax(logits)
        return out


# -- 3. TF-IDF + logistic regression ---------------------------------------------------------------
class TfidfLogRegBaseline:
    """Word 1-2 gram + char 3-5 gram TF-IDF, one class-balanced logistic regression per head."""

    name = "tfidf_logreg"

    def __init__(
        self,
        schema: LabelSchema,
        *,
        max_word_features: int = 50_000,
        max_char_features: int = 100_000,
        max_chars: int = 2_000,
        C: float = 4.0,
        max_iter: int = 1_000,
        seed: int = 0,
    ) -> None:
        for key, value in (("max_word_features", max_word_features), ("max_char_features", max_char_features),
                           ("max_chars", max_chars), ("max_iter", max_iter)):
            if value < 1:
                raise ConfigError(f"TfidfLogRegBaseline: {key} must be >= 1, got {value}")
        if C <= 0:
            raise ConfigError(f"TfidfLogRegBaseline: C must be > 0, got {C}")
        self.schema = schema
        self.max_word_features = max_word_features
        self.max_char_features = max_char_features
        self.max_chars = max_chars
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def _cut(self, texts: list[str]) -> list[str]:
        # the router reads 128 tokens; a cut keeps char n-grams of long prompts affordable
        return [t[: self.max_chars] for t in texts]

    def fit(self, frame: pd.DataFrame) -> TfidfLogRegBaseline:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion

        texts = self._cut(_texts(frame))
        masks = {h.name: label_indices(h, frame) for h in self.schema.heads}
        any_label = np.zeros(len(texts), dtype=bool)
        for mask, _ in masks.values():
            any_label |= mask
        if not any_label.any():
            raise DataError("TfidfLogRegBaseline: no training row has a label for any head")
        self.vectorizer_ = FeatureUnion([
            ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), max_features=self.max_word_features,
                                     sublinear_tf=True, min_df=2, dtype=np.float32)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), max_features=self.max_char_features,
                                     sublinear_tf=True, min_df=2, dtype=np.float32)),
        ])
        fit_rows = np.flatnonzero(any_label)
        try:
            X_fit = self.vectorizer_.fit_transform([texts[i] for i in fit_rows])
        except ValueError:
            # min_df=2 on a tiny training set can leave an empty vocabulary
            for _, vec in self.vectorizer_.transformer_list:
                vec.set_params(min_df=1)
            X_fit = self.vectorizer_.fit_transform([texts[i] for i in fit_rows])
        self.models_: dict[str, Any] = {}
        self.priors_: dict[str, np.ndarray] = {}
        for head in self.schema.heads:
            mask, y = masks[head.name]
            self.priors_[head.name] = _priors(head, frame)
            if len(np.unique(y)) < 2:
                logger.warning("tfidf_logreg: head %r has fewer than two training classes; using priors", head.name)
                self.models_[head.name] = None
                continue
            model = LogisticRegression(C=self.C, class_weight="balanced", max_iter=self.max_iter,
                                       random_state=self.seed)
            # rows labelled for this head are a subset of fit_rows, in the same order
            self.models_[head.name] = model.fit(X_fit[mask[fit_rows]], y)
        return self

    def predict_proba(self, texts: pd.DataFrame | Sequence[str]) -> dict[str, np.ndarray]:
        items = self._cut(_texts(texts))
        X = self.vectorizer_.transform(items)
        out: dict[str, np.ndarray] = {}
        for head in self.schema.heads:
            model = self.models_[head.name]
            if model is None:
                out[head.name] = np.tile(self.priors_[head.name], (len(items), 1))
                continue
            probs = np.zeros((len(items), head.num_classes))
            # classes never seen in training keep probability 0
            probs[:, model.classes_] = model.predict_proba(X)
            out[head.name] = probs
        return out


# -- 4. task prior ---------------------------------------------------------------------------------
class TaskPriorBaseline:
    """Per ``source_task`` class frequencies of each head, fitted on train: a lookup table.

    The bar every tier model must clear: on the default data a tier head that only recognises the
    source task scores what this table scores. Frequencies are smoothed towards the head's global
    prior with ``strength`` pseudo-rows; an unseen task (every ``ood`` task) or input without a
    ``source_task`` column gets the global prior, so it scores chance there. It reads metadata a
    router does not see in production (the source task): it measures, it does not route.
    """

    name = "task_prior"

    def __init__(self, schema: LabelSchema, *, column: str = "source_task", strength: float = 2.0) -> None:
        if strength < 0:
            raise ConfigError(f"TaskPriorBaseline: strength must be >= 0, got {strength}")
        self.schema = schema
        self.column = column
        self.strength = strength

    def fit(self, frame: pd.DataFrame) -> TaskPriorBaseline:
        self.priors_ = {h.name: _priors(h, frame) for h in self.schema.heads}
        self.tables_: dict[str, dict[str, np.ndarray]] = {}
        if self.column not in frame.columns:  # no task to look up: every row gets the global prior
            logger.warning("task_prior: the data has no %r column; it scores the global prior (chance)", self.column)
            self.tables_ = {h.name: {} for h in self.schema.heads}
            return self
        for head in self.schema.heads:
            mask, y = label_indices(head, frame)
            keys = frame[self.column].astype(str).to_numpy()[mask]
            table: dict[str, np.ndarray] = {}
            prior = self.priors_[head.name]
            for key in np.unique(keys):
                counts = np.bincount(y[keys == key], minlength=head.num_classes).astype(np.float64)
                table[str(key)] = (counts + self.strength * prior) / (counts.sum() + self.strength)
            self.tables_[head.name] = table
        return self

    def predict_proba(self, texts: pd.DataFrame | Sequence[str]) -> dict[str, np.ndarray]:
        n = len(_texts(texts))
        keys = (texts[self.column].astype(str).tolist()
                if isinstance(texts, pd.DataFrame) and self.column in texts.columns else [None] * n)
        out = {}
        for head in self.schema.heads:
            table, prior = self.tables_[head.name], self.priors_[head.name]
            out[head.name] = np.stack([table.get(k, prior) if k is not None else prior for k in keys]) if n else \
                np.zeros((0, head.num_classes))
        return out


# -- 5. cluster prior (text only) ------------------------------------------------------------------
class ClusterPriorBaseline:
    """k-means clusters of TF-IDF + SVD text vectors, each with a Beta posterior of the tier.

    The deployable cousin of ``TaskPriorBaseline``: it needs the prompt text only, so it also
    scores unseen tasks (by the clusters their prompts fall in). Heads other than a binary tier head
    get their global priors. ``classifier.evaluation.clusters.ClusterPrior`` does the clustering.
    """

    name = "cluster_prior"

    def __init__(self, schema: LabelSchema, *, n_clusters: int = 32, svd_dim: int = 64, max_chars: int = 2_000,
                 seed: int = 0) -> None:
        if svd_dim < 2:
            raise ConfigError(f"ClusterPriorBaseline: svd_dim must be >= 2, got {svd_dim}")
        self.schema = schema
        self.n_clusters = n_clusters
        self.svd_dim = svd_dim
        self.max_chars = max_chars
        self.seed = seed

    def _features(self, texts: list[str]) -> np.ndarray:
        return self.svd_.transform(self.vectorizer_.transform([t[: self.max_chars] for t in texts]))

    def fit(self, frame: pd.DataFrame) -> ClusterPriorBaseline:
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        from classifier.evaluation.clusters import ClusterPrior, ClusterPriorConfig

        self.priors_ = {h.name: _priors(h, frame) for h in self.schema.heads}
        self.tier_ = _tier_head(self.schema)
        self.prior_ = None
        if self.tier_ is None:
            return self
        mask, y = label_indices(self.tier_, frame)
        texts = [t for t, m in zip(_texts(frame), mask, strict=True) if m]
        if len(texts) < 2:
            return self
        self.vectorizer_ = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=50_000, ngram_range=(1, 2))
        X = self.vectorizer_.fit_transform([t[: self.max_chars] for t in texts])
        dim = max(2, min(self.svd_dim, X.shape[1] - 1))
        self.svd_ = TruncatedSVD(n_components=dim, random_state=self.seed).fit(X)
        pos = self.tier_.index(self.tier_.positive_class or self.tier_.classes[1])
        tasks = frame["task"].to_numpy()[mask] if "task" in frame.columns else None
        self.prior_ = ClusterPrior(ClusterPriorConfig(n_clusters=self.n_clusters, seed=self.seed)).fit(
            self.svd_.transform(X), (y != pos).astype(float), texts=texts, tasks=tasks)
        return self

    def predict_proba(self, texts: pd.DataFrame | Sequence[str]) -> dict[str, np.ndarray]:
        items = _texts(texts)
        out = {h.name: np.tile(p, (len(items), 1)) for h, p in zip(self.schema.heads, self.priors_.values(),
                                                                   strict=True)}
        if self.prior_ is not None and items:
            pos = self.tier_.index(self.tier_.positive_class or self.tier_.classes[1])
            cheap = self.prior_.cheap_rate(self._features(items))
            probs = np.zeros((len(items), 2))
            probs[:, pos], probs[:, 1 - pos] = 1.0 - cheap, cheap
            out[self.tier_.name] = probs
        return out


BASELINES = (MajorityBaseline, KeywordBaseline, TfidfLogRegBaseline, TaskPriorBaseline, ClusterPriorBaseline)


# -- evaluation ------------------------------------------------------------------------------------
def _tier_head(schema: LabelSchema) -> Head | None:
    """The head whose positive-class probability routes to the frontier (``tier`` by default)."""
    if "tier" in schema and schema.head("tier").num_classes == 2:
        return schema.head("tier")
    for head in schema.heads:
        if head.num_classes == 2 and head.positive_class is not None:
            return head
    return None


def _gate_recall_at_precision(
    head: Head, frame: pd.DataFrame, probs: np.ndarray, min_precision: float
) -> dict[str, dict[str, float]]:
    """Recall at ``min_precision`` for each non-negative class (one-vs-rest) and for "flagged"."""
    mask, y = label_indices(head, frame)
    p = probs[mask]
    out: dict[str, dict[str, float]] = {}
    targets: list[tuple[str, np.ndarray, np.ndarray]] = []
    for j, cls in enumerate(head.classes):
        if cls != head.negative_class:
            targets.append((cls, (y == j).astype(int), p[:, j]))
    score = head_score(head, p)
    if score is not None and head.num_classes > 2:
        targets.append(("flagged", (y != head.index(head.negative_class)).astype(int), score))
    for name, target, s in targets:
        if target.sum() == 0:
            continue
        recall, threshold = recall_at_precision(target, s, min_precision)
        out[name] = {"recall": recall, "threshold": threshold, "positives": float(target.sum())}
    return out


def _tier_routing(
    tier: Head,
    probs: np.ndarray,
    outcomes: RoutingOutcomes,
    val: tuple[RoutingOutcomes, np.ndarray] | None,
    quality_ratio: float,
) -> dict[str, Any]:
    pos = tier.index(tier.positive_class or tier.classes[1])
    scores = probs[outcomes.rows, pos]
    result = summarize_router(outcomes, scores, quality_ratio=quality_ratio)
    if val is not None:
        v_out, v_scores = val
        pick = cost_at_quality(v_out, v_scores, frontier_quality_target(v_out, quality_ratio))
        if pick.get("reachable"):
            applied = apply_threshold(outcomes, scores, pick["threshold"])
            target = frontier_quality_target(outcomes, quality_ratio)
            applied["meets_target"] = bool(applied["quality"] >= target - 1e-9)
            applied["saving"] = 1.0 - applied["relative_cost"]
            result["validation_threshold"] = applied
        else:
            result["validation_threshold"] = None
    return result


def evaluate_baselines(
    frame: pd.DataFrame,
    schema: LabelSchema,
    prices: Prices,
    *,
    quality_ratio: float = 0.95,
    min_precision: float = 0.95,
    baselines: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Fit each baseline on the train split and evaluate it on every test split present.

    Returns ``{"meta": ..., "references": {split: reference routers}, "results": {split:
    {baseline: {"heads": evaluate_heads(...), "recall_at_precision": {gate head: ...},
    "routing": {...}}}}}``. ``baselines`` defaults to fresh instances of the ``BASELINES`` classes.
    """
    if "split" not in frame.columns:
        raise DataError("the data has no 'split' column; build it with 'tierwise data build'")
    train = frame[frame["split"] == TRAIN_SPLIT]
    if train.empty:
        raise DataError(f"the data has no '{TRAIN_SPLIT}' rows to fit baselines on")
    splits = [s for s in TEST_SPLITS if (frame["split"] == s).any()]
    if not splits:
        raise DataError(f"the data has none of the evaluation splits {list(TEST_SPLITS)}")
    models = list(baselines) if baselines is not None else [cls(schema) for cls in BASELINES]
    tier = _tier_head(schema)
    eval_frames = {s: frame[frame["split"] == s].reset_index(drop=True) for s in splits}
    val_frame = frame[frame["split"] == THRESHOLD_SPLIT].reset_index(drop=True)

    outcomes: dict[str, RoutingOutcomes] = {}
    references: dict[str, Any] = {}
    if tier is not None:
        for s, f in eval_frames.items():
            o = RoutingOutcomes.from_frame(f, prices, tier_column=tier.column,
                                           frontier_class=tier.positive_class or tier.classes[1])
            if len(o):
                outcomes[s] = o
                references[s] = reference_routers(o, quality_ratio=quality_ratio)
    val_outcomes = None
    if tier is not None and not val_frame.empty:
        vo = RoutingOutcomes.from_frame(val_frame, prices, tier_column=tier.column,
                                        frontier_class=tier.positive_class or tier.classes[1])
        val_outcomes = vo if len(vo) else None

    from tqdm.auto import tqdm

    results: dict[str, dict[str, Any]] = {s: {} for s in splits}
    timings: dict[str, dict[str, float]] = {}
    for model in tqdm(models, desc="baselines", disable=None):
        name = getattr(model, "name", type(model).__name__)
        t0 = time.perf_counter()
        model.fit(train)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        val_pair = None
        if val_outcomes is not None and tier is not None:
            vp = model.predict_proba(val_frame.iloc[val_outcomes.rows])[tier.name]
            pos = tier.index(tier.positive_class or tier.classes[1])
            # outcomes.rows index val_frame; the slice above is already aligned, so re-base rows
            val_pair = (RoutingOutcomes(val_outcomes.cheap_correct, val_outcomes.frontier_correct,
                                        val_outcomes.cost_cheap, val_outcomes.cost_frontier,
                                        val_outcomes.needs_frontier), vp[:, pos])
        for s, f in eval_frames.items():
            probs = model.predict_proba(f)
            entry: dict[str, Any] = {"heads": evaluate_heads(schema, f, probs), "recall_at_precision": {}}
            for head in schema.heads:
                if head.negative_class is not None:
                    entry["recall_at_precision"][head.name] = _gate_recall_at_precision(
                        head, f, probs[head.name], min_precision)
            if tier is not None and s in outcomes:
                entry["routing"] = _tier_routing(tier, probs[tier.name], outcomes[s], val_pair, quality_ratio)
            results[s][name] = entry
        timings[name] = {"fit_s": t_fit, "predict_s": time.perf_counter() - t0}
        logger.info("baseline %s: fit %.1fs, predict %.1fs", name, t_fit, timings[name]["predict_s"])

    meta = {
        "rows": {str(k): int(v) for k, v in frame["split"].value_counts().items()},
        "train_rows": int(len(train)),
        "evaluated_splits": splits,
        "tier_head": tier.name if tier is not None else None,
        "routing_rows": {s: len(o) for s, o in outcomes.items()},
        "quality_ratio": quality_ratio,
        "min_precision": min_precision,
        "threshold_split": THRESHOLD_SPLIT if val_outcomes is not None else None,
        "prices": prices.source,
        "currency": prices.currency,
        "timings": timings,
    }
    return {"meta": meta, "references": references, "results": results}


# -- reporting -------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value + 0.0:.1f}%" if abs(value) >= 5e-4 else "0.0%"


def markdown_table(report: Mapping[str, Any], schema: LabelSchema) -> str:
    """The report as Markdown: one table of head metrics, one of routing cost, per split."""
    tier = _tier_head(schema)
    ratio = report["meta"]["quality_ratio"]
    lines: list[str] = []
    for split, per_model in report["results"].items():
        lines += [f"### split `{split}`", ""]
        cols = ["baseline"]
        for head in schema.heads:
            cols += [f"{head.name} acc", f"{head.name} macro-F1"]
            if head is tier:
                cols.append(f"{head.name} AUROC")
            if head.negative_class is not None:
                cols += [f"recall {c}" for c in head.classes if c != head.negative_class]
                cols.append(f"recall@P>={report['meta']['min_precision']:.2f} flagged")
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for name, entry in per_model.items():
            row = [name]
            for head in schema.heads:
                m = entry["heads"].get(head.name, {})
                row += [_fmt(m.get("accuracy")), _fmt(m.get("macro_f1"))]
                if head is tier:
                    row.append(_fmt(m.get("auroc")))
                if head.negative_class is not None:
                    row += [_fmt(m.get(f"recall_{c}")) for c in head.classes if c != head.negative_class]
                    rap = entry["recall_at_precision"].get(head.name, {})
                    key = "flagged" if head.num_classes > 2 else next(iter(rap), "")
                    row.append(_fmt(rap.get(key, {}).get("recall")))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if tier is not None and split in report["references"]:
            refs = report["references"][split]
            n = report["meta"]["routing_rows"].get(split, 0)
            qc, qf = refs["all_cheap"]["quality"], refs["all_frontier"]["quality"]
            lines += [
                f"Routing on {n} prompts with tier outcomes. Quality (mean correctness): all-cheap "
                f"{_fmt(qc)}, all-frontier {_fmt(qf)}, oracle {_fmt(refs['oracle']['quality'])}; target = "
                f"{ratio:.0%} of all-frontier = {_fmt(qf * ratio)}. Cost in {report['meta']['currency']}, "
                "saving vs all-frontier; 'in-sample' picks the threshold on these rows (optimistic), "
                "'validation threshold' picks it on the validation split.",
                "",
            ]
            if abs(qf - qc) < 0.05:
                lines += [f"Note: the quality gap ({_fmt(qf - qc)}) is small, so PGR and APGR are "
                          "unstable (values far above 1 are possible).", ""]
            if qc >= qf * ratio:
                lines += ["Note: all-cheap already meets the quality target on this split.", ""]
            lines += [
                "| router | APGR | cheap share @PGR 80% | cost @target | saving @target (in-sample) "
                "| saving / quality (validation threshold) |",
                "|---|---|---|---|---|---|",
            ]
            for name, ref in refs.items():
                cq, r80 = ref["cost_at_quality"], (ref.get("cpt") or {}).get("pgr_80")
                lines.append(
                    f"| *{name}* | {_fmt(ref['apgr'])} | {_pct(r80['cheap_share']) if r80 else '-'} | "
                    f"{_fmt(cq.get('cost'), 4) if cq.get('reachable') else 'unreachable'} | "
                    f"{_pct(cq.get('saving')) if cq.get('reachable') else '-'} | - |"
                )
            for name, entry in per_model.items():
                r = entry.get("routing")
                if r is None:
                    continue
                cq, c80 = r["cost_at_quality"], r["cpt"].get("pgr_80")
                vt = r.get("validation_threshold")
                vt_txt = (f"{_pct(vt['saving'])} / {_fmt(vt['quality'])}{'' if vt['meets_target'] else ' (misses)'}"
                          if vt else "-")
                lines.append(
                    f"| {name} | {_fmt(r['apgr'])} | {_pct(c80['cheap_share']) if c80 else '-'} | "
                    f"{_fmt(cq.get('cost'), 4) if cq.get('reachable') else 'unreachable'} | "
                    f"{_pct(cq.get('saving')) if cq.get('reachable') else '-'} | {vt_txt} |"
                )
            lines.append("")
    return "\n".join(lines)



# -- CLI -------------------------------------------------------------------------------------------
def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="data/build",
                        help="data set: a parquet file or a folder holding dataset.parquet (default: data/build)")
    parser.add_argument("--schema", default=str(DEFAULT_SCHEMA_PATH), help="label schema YAML (default: the shipped one)")
    parser.add_argument("--prices", default=str(DEFAULT_PRICES_PATH), help="per-model prices YAML (default: the shipped table)")
    parser.add_argument("--out", default="evaluation/baselines.json",
                        help="JSON report; the Markdown table goes next to it as .md")
    parser.add_argument("--quality-ratio", type=float, default=0.95,
                        help="quality target as a share of all-frontier quality (default 0.95)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the cost/quality plot")


def run_baseline(args: argparse.Namespace) -> int:
    if not 0.0 < args.quality_ratio <= 1.0:
        raise ConfigError(f"--quality-ratio must be in (0, 1], got {args.quality_ratio}")
    schema = LabelSchema.from_yaml(args.schema)
    prices = Prices.from_yaml(args.prices)
    frame = read_dataset(args.data)
    t0 = time.perf_counter()
    models = [cls(schema) for cls in BASELINES]
    report = evaluate_baselines(frame, schema, prices, quality_ratio=args.quality_ratio, baselines=models)
    report["meta"]["data"] = str(args.data)
    report["meta"]["total_s"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    table = markdown_table(report, schema)
    md = out.with_suffix(".md")
    md.write_text(f"# Baselines\n\nData: `{args.data}`; prices: `{args.prices}`.\n\n{table}\n", encoding="utf-8")
    if not args.no_plot:
        _plot(frame, schema, prices, models, out.with_suffix(".png"))
    sys.stdout.write(table + "\n")
    sys.stdout.write(f"wrote {out} and {md} in {report['meta']['total_s']:.1f}s\n")
    return 0


def _plot(frame: pd.DataFrame, schema: LabelSchema, prices: Prices, models: Sequence[Any], path: Path) -> None:
    """Cost/quality curves of the fitted baselines on the ``test`` split (first split present)."""
    from classifier.evaluation.costs import plot_cost_quality

    tier = _tier_head(schema)
    if tier is None:
        return
    split = next((s for s in TEST_SPLITS if (frame["split"] == s).any()), None)
    f = frame[frame["split"] == split].reset_index(drop=True)
    outcomes = RoutingOutcomes.from_frame(f, prices, tier_column=tier.column,
                                          frontier_class=tier.positive_class or tier.classes[1])
    if len(outcomes) == 0:
        return
    pos = tier.index(tier.positive_class or tier.classes[1])
    sub = f.iloc[outcomes.rows]
    scores = {m.name: m.predict_proba(sub)[tier.name][:, pos] for m in models}
    plot_cost_quality(outcomes, scores, path, title=f"baselines: quality against cost ({split})")
