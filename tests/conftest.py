"""Shared fixtures: tiny, seeded, offline models and tokenizers, and the shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_WORDS = (
    "the a an of to and in is it for on with what how why please write code function python "
    "solve math equation number sum answer question explain email password key token secret "
    "name address phone credit card my our your this that story poem essay list sort array "
    "api aws ghp sk john smith london street call me at be do not can you help"
).split()


def shared_data_dir() -> Path:
    return Path(os.environ.get("TIERWISE_SHARED_DATA", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data not found at {path}")
    return path


def build_tiny_tokenizer(path: Path) -> Path:
    """A WordPiece tokenizer over a few dozen words plus characters, written to ``path``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-_/=+@#$%&*()[]{}<>")
    vocab_list = specials + TINY_WORDS + chars + ["##" + c for c in chars]
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


def build_tiny_encoder(vocab_size: int, seed: int = 0):
    """A 2-layer, 32-wide random BERT: trains and exports in seconds."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, type_vocab_size=2,
    )
    return BertModel(config)


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_path) -> Path:
    """An untrained tiny MultiHeadEncoder saved as a model directory (default schema)."""
    from classifier.data.schema import LabelSchema
    from classifier.training.model import MultiHeadEncoder, load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_path, max_length=64)
    encoder = build_tiny_encoder(tok.get_vocab_size())
    model = MultiHeadEncoder(encoder, LabelSchema.default(), dropout=0.1)
    out = tmp_path_factory.mktemp("model") / "tiny"
    model.save(out, tokenizer=tok, info={"max_length": 64})
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model exported to a verified fp32 bundle (``<dir>.tar.gz`` packed next to it),
    with the example policy. Session-wide: copy it before changing any file."""
    from classifier.training.export import ExportConfig, export_model

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    export_model(ExportConfig(
        model_dir=tiny_model_dir, out_dir=out, policy=ROOT / "serving" / "policy.example.yaml",
        dataset=None, log_to_mlflow=False,
    ))
    return out


class LiveServer:
    """uvicorn in a background thread on a socket bound before start (no port race); ``config``
    goes to ``uvicorn.Config``. Shared by the HTTP and hardening tests."""

    def __init__(self, app, **config) -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
