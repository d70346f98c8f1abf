"""Shared fixtures: tiny, seeded, offline models and tokenizers, and the shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from classifier.training.tiny import build_tiny_encoder, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("TIERWISE_SHARED_DATA", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data not found at {path}")
    return path


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
