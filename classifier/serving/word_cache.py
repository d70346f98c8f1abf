"""A per-word cache in front of a BERT WordPiece tokenizer, for the serving hot path.

The bundle's ``tokenizers`` pipeline (BertNormalizer, BertPreTokenizer, WordPiece) costs about
3 µs a token on the 2-core machines here: more than the student's whole ONNX run on a
120-token prompt. Real traffic repeats words, and for ASCII text every step before WordPiece is
simple: lowercase, split on whitespace, and make each ASCII punctuation character its own word.
So :class:`WordCache` does that split with one regular expression and looks each word's pieces up
in a dictionary, asking the tokenizer's own WordPiece model only for a word it has not seen.

Exactness is by construction, not by approximation. The pipeline splits at ASCII whitespace
(space, tab, newline, carriage return) before anything else can join two characters, so the
tokens of a text are the tokens of its whitespace-separated chunks, one after the other:

- a chunk of printable ASCII is split here and its words looked up;
- a chunk holding anything else (accents, CJK, Unicode punctuation or spaces, and the ASCII
  control characters the normalizer deletes, which join their neighbours) goes to the real
  tokenizer, whole, and its ids are cached too;
- text holding an added token (``[CLS]``, ``[MASK]``...), which the tokenizer matches before
  normalising, is refused (``None``: the caller runs the real tokenizer on all of it).

It refuses tokenizers it does not know to be of that shape (:meth:`WordCache.for_tokenizer`
returns ``None``). A differential test compares it with the tokenizer on generated and real text.
Left out: truncation, padding and special tokens (the runtime adds ``[CLS]``/``[SEP]`` per window).
"""

from __future__ import annotations

import re

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

# after lowercasing: a run of letters/digits, or one ASCII punctuation character (BertPreTokenizer
# splits every punctuation character off on its own); whitespace separates and is dropped
_WORD = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")
# a chunk between ASCII whitespace that holds a character other than printable ASCII: the
# tokenizer's business (non-ASCII, or a control character that clean_text deletes, joining words)
_ODD = re.compile(r"[^\x20-\x7e\t\n\r]")
_PLAIN = re.compile(r"[\x20-\x7e\t\n\r]*")
_CHUNK_END = re.compile(r"[^ \t\n\r]*")
_MAX_KEY = 100  # characters of a cached word or chunk (WordPiece's own limit per word)


def _runs(text: str) -> list[tuple[int, int]]:
    """Spans of the whitespace-separated chunks of ``text`` that hold an odd character (found
    character by character, then widened to ASCII whitespace: one regex with the widening built in
    backtracks over every word and cost more than the tokenizing it saves)."""
    out: list[tuple[int, int]] = []
    pos = 0
    while (m := _ODD.search(text, pos)) is not None:
        i = m.start()
        start = max(pos, max(text.rfind(c, pos, i) for c in " \t\n\r") + 1)
        end = _CHUNK_END.match(text, i).end()
        out.append((start, end))
        pos = end
    return out


class WordCache:
    """Token ids of text, cached per ASCII word and per non-ASCII chunk.

    ``ids(text)`` equals ``tokenizer.encode(text, add_special_tokens=False).ids`` wherever it
    answers (``ids_at`` also gives the token index of character positions between words); it
    answers ``None`` only for text that holds an added token. The cache holds at most
    ``max_words`` entries of at most 100 characters each (a few tens of MB at most); past that,
    new words are looked up every time (no eviction, so a flood of unique words cannot thrash
    the common ones).
    """

    def __init__(self, tokenizer: Tokenizer, max_words: int = 100_000) -> None:
        if tokenizer.truncation is not None or tokenizer.padding is not None:
            tokenizer = Tokenizer.from_str(tokenizer.to_str())  # a copy that never truncates or pads
            tokenizer.no_truncation()
            tokenizer.no_padding()
        self._tok = tokenizer
        self._model = tokenizer.model
        self._max_words = max_words
        self._cache: dict[str, tuple[int, ...]] = {}
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self._added = (re.compile("|".join(re.escape(a) for a in sorted(added, key=len, reverse=True)), re.IGNORECASE)
                       if added else None)

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer, max_words: int = 100_000) -> WordCache | None:
        """A cache for ``tokenizer`` if it is a lowercasing BERT WordPiece pipeline, else None."""
        norm = tokenizer.normalizer
        if not (isinstance(norm, normalizers.BertNormalizer) and norm.lowercase and norm.clean_text
                and isinstance(tokenizer.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
                and isinstance(tokenizer.model, models.WordPiece)):
            return None
        return cls(tokenizer, max_words)

    def __len__(self) -> int:
        return len(self._cache)

    def _remember(self, key: str, ids: tuple[int, ...]) -> tuple[int, ...]:
        # only word-sized keys: a long chunk (a paragraph of CJK, a base64 blob) seldom repeats,
        # and caching it would let a few requests fill memory
        if len(key) <= _MAX_KEY and len(self._cache) < self._max_words:
            self._cache[key] = ids
        return ids

    def _ascii(self, out: list[int], chunk: str) -> None:
        """Append the ids of printable-ASCII text (whitespace allowed) to ``out``."""
        cache = self._cache
        for word in _WORD.findall(chunk.lower()):
            hit = cache.get(word)
            if hit is None:
                hit = self._remember(word, tuple(t.id for t in self._model.tokenize(word)))
            out.extend(hit)

    def _run(self, out: list[int], run: str) -> None:
        """Append the ids of one chunk the tokenizer must read (see ``_runs``) to ``out``."""
        hit = self._cache.get(run)
        if hit is None:
            hit = self._remember(run, tuple(self._tok.encode(run, add_special_tokens=False).ids))
        out.extend(hit)

    def ids(self, text: str) -> list[int] | None:
        """The token ids of ``text`` without special tokens, or None where the tokenizer must answer."""
        got = self.ids_at(text, ())
        return None if got is None else got[0]

    def ids_at(self, text: str, cuts: tuple[int, ...]) -> tuple[list[int], list[int]] | None:
        """(token ids of ``text``, the index of the first token at or after each cut), or None.

        A cut must fall between two words (at either end, or beside whitespace or punctuation):
        there the tokens of the whole text are the tokens of the pieces, one after the other,
        which is what makes this exact. A cut inside a word answers None (use the tokenizer)."""
        if self._added is not None and self._added.search(text) is not None:
            return None
        n = len(text)
        if list(cuts) != sorted(cuts) or any(c < 0 or c > n for c in cuts):
            return None
        for c in cuts:
            if 0 < c < n and text[c - 1].isalnum() and text[c].isalnum():
                return None
        runs = [] if _PLAIN.fullmatch(text) is not None else _runs(text)
        out: list[int] = []
        at: list[int] = []
        k = pos = 0
        for s, e in (*runs, (n, n)):
            while k < len(cuts) and cuts[k] <= s:  # cuts in the ASCII stretch before this run
                self._ascii(out, text[pos:cuts[k]])
                pos = cuts[k]
                at.append(len(out))
                k += 1
            if k < len(cuts) and cuts[k] < e:
                return None  # a cut inside a chunk the tokenizer reads whole
            self._ascii(out, text[pos:s])
            if e > s:
                self._run(out, text[s:e])
            pos = e
        return out, at
