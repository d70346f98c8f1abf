"""Fail-safe behaviour (issue 7): inference faults and deadlines give the flagged safe decision,
the server keeps serving, and a bad bundle is never served.

Faults are real: an ONNX Runtime session built from a model whose inputs are misnamed (its
``run`` raises), sessions that return outputs of the wrong shape or non-finite logits, and slow
runs whose real ``RunOptions`` the deadline watchdog terminates. They are put into a real
``Router`` loaded from the tiny bundle.

Decided and tested here: ``tierwise serve`` with a bundle that exists but fails verification
(tampered, incomplete) refuses to start (exit 2, a message naming the problem); with a bundle
path that does not exist it starts unready (``/readyz`` 503) and becomes ready once a valid
bundle appears there. A bundle that appears but fails verification is never served.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from test_hardening import LiveServer, assert_classified, assert_safe

from benchmarks.loadtest import ServeProcess
from classifier.errors import ConfigError
from classifier.serving.app import create_app
from classifier.serving.runtime import Router

TEXTS = ["write a python function to sort a list", "hi there", "my phone is 555 0100"]


@pytest.fixture()
def router(tiny_bundle: Path) -> Iterator[Router]:
    with Router.load(tiny_bundle) as r:
        yield r


def misnamed_session(bundle: Path) -> ort.InferenceSession:
    """A real session of the bundle's model with its inputs renamed: ``run`` with the runtime's
    feeds raises (ONNX Runtime: required inputs are missing)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    renames = {"input_ids": "ids", "attention_mask": "mask"}
    for value in model.graph.input:
        value.name = renames.get(value.name, value.name)
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


class SlowSession:
    """Sleeps before running the real session with the run options it was given (so a
    watchdog that terminated them in the meantime stops the real run)."""

    def __init__(self, inner: ort.InferenceSession, delay_s: float, *, pass_options: bool = True) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.pass_options = pass_options
        self.terminated: list[bool] = []

    def run(self, outputs, feeds, run_options=None):
        time.sleep(self.delay_s)
        if run_options is not None:
            self.terminated.append(bool(run_options.terminate))
        return self.inner.run(outputs, feeds, run_options if self.pass_options else None)


class BadOutputSession:
    """Runs the real model, then damages what it returns."""

    def __init__(self, inner: ort.InferenceSession, damage: str) -> None:
        self.inner = inner
        self.damage = damage

    def run(self, outputs, feeds, run_options=None):
        outs = self.inner.run(outputs, feeds, run_options)
        if self.damage == "nan":
            return [np.full_like(o, np.nan) for o in outs]
        if self.damage == "inf":
            return [np.where(np.arange(o.shape[1]) == 0, np.inf, o).astype(o.dtype) for o in outs]
        if self.damage == "shape":
            return [o[:, :1] for o in outs]
        if self.damage == "rows":
            return [o[:0] for o in outs]
        if self.damage == "missing":
            return outs[:-1]
        if self.damage == "type":
            return [o.tolist() for o in outs]
        raise AssertionError(self.damage)


# -- inference faults -----------------------------------------------------------------------------
def test_session_that_raises_gives_the_safe_decision(router: Router, tiny_bundle: Path) -> None:
    good = router._session
    router._session = misnamed_session(tiny_bundle)
    decisions = router.route([*TEXTS, ""])
    for d in decisions[:3]:
        assert_safe(d, router, flag="fallback", reason="inference failed (ValueError)")
    assert_safe(decisions[3], router, flag="invalid_input")  # decided before inference: its own reason
    assert_safe(router.route(TEXTS[0]), router, flag="fallback")
    router._session = good  # the same router serves again once the fault is gone
    for d in router.route(TEXTS):
        assert_classified(d)


@pytest.mark.parametrize("damage", ["nan", "inf", "shape", "rows", "missing", "type"])
def test_damaged_outputs_give_the_safe_decision(router: Router, damage: str) -> None:
    router._session = BadOutputSession(router._session, damage)
    for d in router.route(TEXTS):
        assert_safe(d, router, flag="fallback")
    d = router.route("   ")  # invalid input stays invalid input, whatever the session does
    assert "invalid_input" in d.flags


@pytest.mark.slow
def test_deadline_terminates_a_slow_run(tiny_bundle: Path) -> None:
    with Router.load(tiny_bundle, deadline_ms=100) as r:
        fast = r._session
        slow = SlowSession(fast, delay_s=0.6)
        r._session = slow
        decisions = r.route(TEXTS)
        for d in decisions:
            assert_safe(d, r, flag="fallback", reason="deadline of 100 ms exceeded")
            assert "inference was stopped at the deadline" in d.reason
        # the watchdog fired and set the real RunOptions.terminate, so the run itself was stopped
        # (what the elapsed time would show, without depending on how loaded the machine is)
        assert slow.terminated == [True]
        r._session = fast  # a later call with a healthy session is answered normally
        for d in r.route(TEXTS):
            assert_classified(d)


@pytest.mark.slow
def test_late_answer_past_the_deadline_gives_the_safe_decision(tiny_bundle: Path) -> None:
    with Router.load(tiny_bundle, deadline_ms=50) as r:
        r._session = SlowSession(r._session, delay_s=0.3, pass_options=False)  # ignores terminate
        d = r.route("write a poem")
        assert_safe(d, r, flag="fallback", reason="deadline of 50 ms exceeded")
        assert "the answer came after the deadline" in d.reason


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), True, "100"])
def test_deadline_must_be_a_positive_number(tiny_bundle: Path, bad) -> None:
    with pytest.raises(ConfigError, match="deadline_ms"):
        Router.load(tiny_bundle, deadline_ms=bad)


@pytest.mark.slow  # live server
def test_server_keeps_serving_through_faults(router: Router, tiny_bundle: Path) -> None:
    good = router._session
    router._session = misnamed_session(tiny_bundle)
    app = create_app(router=router, max_batch=8)
    with LiveServer(app) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        answers: list[int] = []

        def hammer() -> None:
            for _ in range(5):
                answers.append(c.post("/v1/route", json={"texts": TEXTS}).status_code)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert answers == [200] * 20
        body = c.post("/v1/route", json={"text": "hello"}).json()
        assert_safe(body["decision"], router, flag="fallback", reason="inference failed")
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert 'tierwise_decision_flags_total{flag="fallback"}' in c.get("/metrics").text
        router._session = good
        assert_classified(c.post("/v1/route", json={"text": "hello"}).json()["decision"])


@pytest.mark.slow
def test_route_that_raises_is_caught_by_the_server(router: Router) -> None:
    def broken(texts):
        raise RuntimeError("a bug in routing")

    router.route = broken  # the app's last guard: a fault outside Router.route's own handling
    with LiveServer(create_app(router=router)) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        resp = c.post("/v1/route", json={"texts": ["a", "b"]})
        assert resp.status_code == 200
        for d in resp.json()["decisions"]:
            assert_safe(d, router, flag="fallback", reason="internal fault while routing")


# -- bundles that must not be served --------------------------------------------------------------
def tampered_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    data = bytearray((dest / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (dest / "model.onnx").write_bytes(bytes(data))
    return dest


def incomplete_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    (dest / "tokenizer.json").unlink()
    return dest


def garbage_manifest_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    (dest / "manifest.json").write_text("{not json")
    return dest


def appear(bundle: Path, dest: Path) -> None:
    """Make a bundle appear at ``dest`` at once (copy next to it, then rename)."""
    staging = dest.parent / f".{dest.name}.staging"
    shutil.copytree(bundle, staging)
    staging.rename(dest)


def wait_status(c: httpx.Client, path: str, status: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get(path).status_code == status:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize(("make", "message"), [
    (tampered_copy, "does not match its manifest hash"),
    (incomplete_copy, "tokenizer.json"),
    (garbage_manifest_copy, "manifest.json"),
])
def test_readyz_is_503_with_the_reason_for_a_bad_bundle(tiny_bundle: Path, tmp_path: Path, make, message: str) -> None:
    bad = make(tiny_bundle, tmp_path / "bad")
    with LiveServer(create_app(bad, bundle_retry_s=None)) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        resp = c.get("/readyz")
        assert resp.status_code == 503 and message in resp.json()["error"]["message"]
        assert c.post("/v1/route", json={"text": "hi"}).status_code == 503


@pytest.mark.slow
def test_missing_bundle_becomes_ready_when_it_appears(tiny_bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "later"
    with LiveServer(create_app(target, bundle_retry_s=0.1)) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        resp = c.get("/readyz")
        assert resp.status_code == 503 and "does not exist" in resp.json()["error"]["message"]
        assert c.post("/v1/route", json={"text": "hi"}).status_code == 503
        appear(tiny_bundle, target)
        assert wait_status(c, "/readyz", 200)
        assert_classified(c.post("/v1/route", json={"text": "hi"}).json()["decision"])


@pytest.mark.slow
def test_bundle_that_appears_tampered_is_never_served(tiny_bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "later"
    with LiveServer(create_app(target, bundle_retry_s=0.1)) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.get("/readyz").status_code == 503
        appear(tampered_copy(tiny_bundle, tmp_path / "t"), target)
        deadline = time.monotonic() + 5
        message = ""
        while time.monotonic() < deadline and "manifest hash" not in message:
            message = c.get("/readyz").json()["error"]["message"]
            time.sleep(0.05)
        assert "does not match its manifest hash" in message
        time.sleep(0.3)  # several retries later: still refused
        assert c.get("/readyz").status_code == 503
        assert c.post("/v1/route", json={"text": "hi"}).status_code == 503


# -- tierwise serve -------------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "message"), [
    (tampered_copy, "'model.onnx' does not match its manifest hash"),
    (incomplete_copy, "tokenizer.json"),
])
@pytest.mark.slow
def test_serve_refuses_to_start_with_a_bad_bundle(tiny_bundle: Path, tmp_path: Path, make, message: str) -> None:
    bad = make(tiny_bundle, tmp_path / "bad")
    with ServeProcess(bad, log_dir=tmp_path / "logs") as srv:
        assert srv.wait_exit(timeout=60) == 2, srv.logs()
        logs = srv.logs()
    assert "tierwise serve: error: refusing to serve" in logs and message in logs
    assert "Uvicorn running" not in logs  # the port was never opened


@pytest.mark.slow
def test_serve_with_a_missing_bundle_stays_up_unready_until_it_appears(tiny_bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with ServeProcess(target, "--bundle-retry-s", "0.2", log_dir=tmp_path / "logs") as srv:
        assert srv.wait_for("/healthz", 200), srv.logs()
        assert srv.status("/readyz") == 503
        appear(tiny_bundle, target)
        assert srv.wait_for("/readyz", 200, timeout=30), srv.logs()
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert_classified(c.post("/v1/route", json={"text": "hi"}).json()["decision"])
        logs = srv.logs()
    assert "does not exist" in logs and f"serving bundle {target}" in logs
