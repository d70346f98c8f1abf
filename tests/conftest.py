"""Shared fixtures: tiny, seeded, offline models and tokenizers, and the shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from classifier.training.tiny import build_tiny_encoder, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("TIERWISE_SHARED_DATA", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session", autouse=True)
def _prefilter_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The detectors' compiled Hyperscan rules go to pytest's cache folder (a temporary one under
    ``-p no:cacheprovider``), not ~/.cache; child processes inherit the variable, so servers and
    CLI runs in the tests reuse them too."""
    if "TIERWISE_CACHE_DIR" not in os.environ:
        cache = getattr(request.config, "cache", None)
        where = cache.mkdir("tierwise") if cache is not None else tmp_path_factory.mktemp("tierwise-cache")
        os.environ["TIERWISE_CACHE_DIR"] = str(where)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data not found at {path}")
    return path


# -- the tiny model and bundle ---------------------------------------------------------------------
# Building them costs ~15 s of CPU (importing transformers, the dynamo ONNX export), more than the
# rest of the fast tests together. With TIERWISE_TEST_CACHE=1 (``make test-fast``) they are built
# once, in a child process, into pytest's cache folder, and reused while nothing they were built
# from changed: the child records every ``classifier`` module it imported, the package data,
# this file and the versions of the libraries that write the model; a run whose hashes differ
# rebuilds. Each session copies the cached files into its own temporary folder (tests never see
# the cache itself). Without the variable (``make test``, CI) every session builds them afresh.
CACHE_ENV = "TIERWISE_TEST_CACHE"
CACHE_LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxscript", "onnxruntime", "numpy")
TINY_TOKENIZER = Path("tok") / "tokenizer.json"
TINY_MODEL = Path("model") / "tiny"
TINY_BUNDLE = Path("bundle") / "tiny"


def build_tiny_model(tokenizer_path: Path, out: Path) -> Path:
    """An untrained tiny MultiHeadEncoder (default schema) saved as a model directory at ``out``."""
    from classifier.data.schema import LabelSchema
    from classifier.training.model import MultiHeadEncoder, load_tokenizer

    tok = load_tokenizer(tokenizer_path, max_length=64)
    encoder = build_tiny_encoder(tok.get_vocab_size())
    model = MultiHeadEncoder(encoder, LabelSchema.default(), dropout=0.1)
    model.save(out, tokenizer=tok, info={"max_length": 64})
    return out


def build_tiny_bundle(model_dir: Path, out: Path) -> Path:
    """``model_dir`` exported to a verified fp32 bundle at ``out`` (and ``out.tar.gz``), example policy."""
    from classifier.training.export import ExportConfig, export_model

    export_model(ExportConfig(
        model_dir=model_dir, out_dir=out, policy=ROOT / "serving" / "policy.example.yaml",
        dataset=None, log_to_mlflow=False,
    ))
    return out


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_inputs(module_files: list[str]) -> dict:
    """What the tiny artefacts depend on: the hashes of ``module_files`` (relative to ROOT), of the
    package data and of this file, and the library and Python versions."""
    import sys
    from importlib.metadata import PackageNotFoundError, version

    data = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "classifier").rglob("*"))
            if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts]
    files = {}
    for rel in sorted({*module_files, *data, "tests/conftest.py"}):
        path = ROOT / rel
        files[rel] = _sha256(path) if path.is_file() else None
    versions = {}
    for name in CACHE_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {"files": files, "versions": versions, "python": sys.version}


def _build_tiny_for_cache(out: Path) -> dict:
    """Build the tokenizer, model and bundle under ``out`` (run in a fresh interpreter) and return
    their inputs (every ``classifier`` module this process imported) and their files' hashes."""
    import sys

    build_tiny_bundle(build_tiny_model(build_tiny_tokenizer(out / TINY_TOKENIZER), out / TINY_MODEL), out / TINY_BUNDLE)
    modules = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if (name == "classifier" or name.startswith("classifier.")) and file:
            path = Path(file).resolve()
            if path.is_relative_to(ROOT):
                modules.append(path.relative_to(ROOT).as_posix())
    outputs = {p.relative_to(out).as_posix(): _sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
    return {"modules": sorted(modules), "inputs": _tiny_inputs(modules), "outputs": outputs}


def _cached_tiny(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A session copy of the cached tiny artefacts (rebuilt first when stale), or None when the
    cache is off (TIERWISE_TEST_CACHE unset, or pytest's cache provider disabled)."""
    import fcntl
    import shutil

    if os.environ.get(CACHE_ENV) != "1" or getattr(config, "cache", None) is None:
        return None
    cache = Path(config.cache.mkdir("tierwise-tiny"))
    with open(cache / "lock", "w") as lock:  # two sessions at once: one builds, the other waits
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = _fresh_tiny_cache(cache)
        copy = tmp_path_factory.mktemp("tiny-cached")
        shutil.copytree(built, copy, dirs_exist_ok=True)
    return copy


def _fresh_tiny_cache(cache: Path) -> Path:
    """The folder of cached tiny artefacts under ``cache``, rebuilt first when stale."""
    import json
    import shutil
    import subprocess
    import sys

    record_path, built = cache / "record.json", cache / "artifacts"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    fresh = (record is not None and built.is_dir() and record["inputs"] == _tiny_inputs(record["modules"])
             and record["outputs"] == {p.relative_to(built).as_posix(): _sha256(p)
                                       for p in sorted(built.rglob("*")) if p.is_file()})
    if not fresh:
        shutil.rmtree(built, ignore_errors=True)
        record_path.unlink(missing_ok=True)
        work = cache / "building"
        shutil.rmtree(work, ignore_errors=True)
        script = ("import json, sys; from pathlib import Path; sys.path.insert(0, 'tests'); "
                  "import conftest; print(json.dumps(conftest._build_tiny_for_cache(Path(sys.argv[1]))))")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-c", script, str(work)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"building the tiny artefacts failed:\n{proc.stderr[-4000:]}")
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        work.rename(built)
        record_path.write_text(json.dumps(record, indent=1))
    return built


@pytest.fixture(scope="session")
def tiny_cached(request: pytest.FixtureRequest, tmp_path_factory) -> Path | None:
    """The cached tiny artefacts copied for this session (see above), or None: build them here."""
    return _cached_tiny(request.config, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory, tiny_cached) -> Path:
    if tiny_cached is not None:
        return tiny_cached / TINY_TOKENIZER
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_path, tiny_cached) -> Path:
    """An untrained tiny MultiHeadEncoder saved as a model directory (default schema)."""
    if tiny_cached is not None:
        return tiny_cached / TINY_MODEL
    return build_tiny_model(tiny_tokenizer_path, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_model_dir, tiny_cached) -> Path:
    """The tiny model exported to a verified fp32 bundle (``<dir>.tar.gz`` packed next to it),
    with the example policy. Session-wide: copy it before changing any file."""
    if tiny_cached is not None:
        return tiny_cached / TINY_BUNDLE
    return build_tiny_bundle(tiny_model_dir, tmp_path_factory.mktemp("bundle") / "tiny")


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
