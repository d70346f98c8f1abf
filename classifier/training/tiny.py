"""Tiny, seeded, random models: a WordPiece tokenizer over a few dozen words and a 2-layer,
32-wide BERT. They train and export in seconds, offline, so the test suite and ``make load``
(when no real bundle exists) exercise the real pipeline without the pretrained encoder.

Left out: anything that predicts well. These models are random; use them for plumbing only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_WORDS: tuple[str, ...] = tuple(
    "the a an of to and in is it for on with what how why please write code function python "
    "solve math equation number sum answer question explain email password key token secret "
    "name address phone credit card my our your this that story poem essay list sort array "
    "api aws ghp sk john smith london street call me at be do not can you help".split()
)


def build_tiny_tokenizer(path: str | Path) -> Path:
    """A BERT-style WordPiece tokenizer over ``TINY_WORDS`` plus single characters, saved to ``path``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    path = Path(path)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-_/=+@#$%&*()[]{}<>")
    vocab_list = specials + list(TINY_WORDS) + chars + ["##" + c for c in chars]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def build_tiny_encoder(vocab_size: int, seed: int = 0) -> Any:
    """A 2-layer, 32-wide random ``transformers.BertModel`` (seeded)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
    )
    return BertModel(config)
