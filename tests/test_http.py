"""The HTTP service end to end: a real uvicorn server on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import LiveServer

from classifier.serving.app import create_app
from classifier.serving.runtime import Router

MAX_BATCH = 4
MAX_BODY = 4096


Server = LiveServer


@pytest.fixture(scope="module")
def audit_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, audit_path: Path) -> Iterator[Server]:
    app = create_app(tiny_bundle, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY, audit_log=audit_path)
    with Server(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def router(tiny_bundle: Path) -> Iterator[Router]:
    with Router.load(tiny_bundle) as r:
        yield r


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_error(resp: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["message"]
    if kind:
        assert body["error"]["type"] == kind
    return body["error"]


def test_health_and_readiness(client: httpx.Client, tiny_bundle: Path) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    info = ready.json()["bundle"]
    assert info["kind"] == "teacher" and info["heads"] == ["tier", "task", "sensitivity"]
    assert metric(client, "tierwise_ready") == 1.0


def test_route_single_and_batch_match_the_runtime(client: httpx.Client, router: Router) -> None:
    resp = client.post("/v1/route", json={"text": "write a python function", "request_id": "req-1"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["request_id"] == "req-1" and resp.headers["x-request-id"] == "req-1"
    want = router.route("write a python function").to_dict()
    assert body["decision"]["tier"] == want["tier"] and body["decision"]["rule"] == want["rule"]
    assert body["decision"]["probabilities"]["tier"] == pytest.approx(want["probabilities"]["tier"], abs=1e-6)

    texts = ["hi", "solve 3x + 1 = 10", "my phone is 555 0100"]
    resp = client.post("/v1/route", json={"texts": texts})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["request_id"]) >= 16  # generated when not given
    assert [d["tier"] for d in body["decisions"]] == [d.tier for d in router.route(texts)]


@pytest.mark.slow
def test_metrics_count_requests_and_decisions(client: httpx.Client) -> None:
    before_ok = metric(client, "tierwise_requests_total", endpoint="/v1/route", status="200")
    before_bad = metric(client, "tierwise_requests_total", endpoint="/v1/route", status="400")
    before_tiers = sum(metric(client, "tierwise_decisions_total", tier=t) for t in ("cheap", "frontier", "self_hosted", "blocked"))
    before_sens = sum(metric(client, "tierwise_head_predictions_total", head="sensitivity", **{"class": c})
                      for c in ("none", "pii", "credential"))
    assert client.post("/v1/route", json={"texts": ["a b", "c d"]}).status_code == 200
    assert client.post("/v1/route", json={"text": 3}).status_code == 400
    assert metric(client, "tierwise_requests_total", endpoint="/v1/route", status="200") == before_ok + 1
    assert metric(client, "tierwise_requests_total", endpoint="/v1/route", status="400") == before_bad + 1
    after_tiers = sum(metric(client, "tierwise_decisions_total", tier=t) for t in ("cheap", "frontier", "self_hosted", "blocked"))
    assert after_tiers == before_tiers + 2
    after_sens = sum(metric(client, "tierwise_head_predictions_total", head="sensitivity", **{"class": c})
                     for c in ("none", "pii", "credential"))
    assert after_sens == before_sens + 2
    assert metric(client, "tierwise_request_latency_seconds_count", endpoint="/v1/route") >= before_ok + 2


def test_oversized_batch_and_body_get_413(client: httpx.Client) -> None:
    err = assert_error(client.post("/v1/route", json={"texts": ["x"] * (MAX_BATCH + 1)}), 413, "PayloadTooLargeError")
    assert str(MAX_BATCH) in err["message"]
    err = assert_error(client.post("/v1/route", json={"text": "y" * (MAX_BODY + 10)}), 413, "PayloadTooLargeError")
    assert str(MAX_BODY) in err["message"]
    # a chunked body without content-length is counted as it streams in
    chunks = (b'{"text": "' + b"z" * 1000 for _ in range(6))
    resp = client.post("/v1/route", content=chunks, headers={"content-type": "application/json"})
    assert_error(resp, 413, "PayloadTooLargeError")


@pytest.mark.parametrize(
    "payload",
    [
        {"text": 5},
        {"texts": "not a list"},
        {"texts": ["ok", None]},
        {},
        {"text": "a", "texts": ["b"]},
        {"text": "a", "unexpected": 1},
        {"texts": []},
        ["text"],
    ],
)
def test_wrong_types_get_4xx_json(client: httpx.Client, payload) -> None:
    assert_error(client.post("/v1/route", json=payload), 400, "InputError")


def test_malformed_json_and_unknown_paths(client: httpx.Client) -> None:
    resp = client.post("/v1/route", content=b'{"text": ', headers={"content-type": "application/json"})
    assert_error(resp, 400)
    resp = client.post("/v1/route", content=b'\xff\xfe{"text": "a"}', headers={"content-type": "application/json"})
    assert_error(resp, 400)
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/v1/route"), 405)


def test_unclassifiable_text_gets_a_flagged_safe_decision(client: httpx.Client, router: Router) -> None:
    safe = router.safe_decision("x")
    for raw in (b'{"text": ""}', b'{"text": "   "}', b'{"text": "bad \\ud800 surrogate"}'):
        resp = client.post("/v1/route", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 200, resp.text
        decision = resp.json()["decision"]
        assert "invalid_input" in decision["flags"] and decision["tier"] == safe.tier
    body = client.post("/v1/route", json={"texts": ["fine", ""]}).json()
    assert "invalid_input" not in body["decisions"][0]["flags"]
    assert "invalid_input" in body["decisions"][1]["flags"]


def test_openapi_schema(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/route" in spec["paths"] and "/readyz" in spec["paths"]
    post = spec["paths"]["/v1/route"]["post"]
    assert {"200", "400", "413"} <= set(post["responses"])
    props = spec["components"]["schemas"]["RouteRequest"]["properties"]
    assert {"text", "texts", "request_id"} <= set(props)


def test_decisions_are_audited(client: httpx.Client, audit_path: Path) -> None:
    from classifier.serving.audit import verify

    client.post("/v1/route", json={"text": "audit me", "request_id": "audit-1"})
    client.post("/v1/route", json={"texts": ["x", "y"], "request_id": "audit-2"})
    result = verify(audit_path)
    assert result.ok
    ids = [json.loads(line)["request_id"] for line in audit_path.read_text().splitlines()]
    assert "audit-1" in ids and {"audit-2:0", "audit-2:1"} <= set(ids)


@pytest.mark.slow
def test_unloadable_bundle_is_not_ready_but_healthy(tmp_path: Path) -> None:
    app = create_app(tmp_path / "missing-bundle")
    with Server(app) as s, httpx.Client(base_url=s.url, timeout=10) as c:
        assert c.get("/healthz").status_code == 200
        err = assert_error(c.get("/readyz"), 503, "ServiceUnavailableError")
        assert "missing-bundle" in err["message"]
        assert_error(c.post("/v1/route", json={"text": "hi"}), 503)
        assert metric(c, "tierwise_ready") == 0.0
