"""Input hardening (issue 7): one test per class of bad input, at the runtime and over real HTTP.

Each class gets a defined answer: a prompt that cannot be classified gets the policy's safe
decision flagged ``invalid_input`` (200, never a 500); a malformed request gets a 4xx JSON error
naming the field; slow clients are cut off by deadlines. The server here is a real uvicorn on
127.0.0.1 with the protocol and timeouts ``tierwise serve`` uses, set short.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import LiveServer

from benchmarks.loadtest import ServeProcess
from classifier.serving.app import MAX_HEAD_BYTES, create_app, guarded_h11_protocol
from classifier.serving.runtime import Router

MAX_BATCH = 4
MAX_BODY = 8192
BODY_TIMEOUT_S = 0.5
HEADER_TIMEOUT_S = 0.5
KEEP_ALIVE_S = 1



def hardened_server(app) -> LiveServer:
    """The protocol and limits of ``tierwise serve``, with short timeouts."""
    return LiveServer(app, http=guarded_h11_protocol(HEADER_TIMEOUT_S), h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                      timeout_keep_alive=KEEP_ALIVE_S)


@pytest.fixture(scope="module")
def router(tiny_bundle: Path) -> Iterator[Router]:
    with Router.load(tiny_bundle) as r:
        yield r


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[LiveServer]:
    app = create_app(tiny_bundle, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY, body_timeout_s=BODY_TIMEOUT_S)
    with hardened_server(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def post_raw(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/v1/route", content=body, headers={"content-type": "application/json"})


def assert_safe(decision, router: Router, flag: str = "invalid_input", reason: str | None = None) -> None:
    """``decision`` (a Decision or its dict) is the policy's flagged safe decision."""
    d = decision if isinstance(decision, dict) else decision.to_dict()
    safe = router.safe_decision("x").to_dict()
    assert flag in d["flags"] and "fallback" in d["flags"], d
    assert (d["tier"], d["model"], d["rule"], d["blocked"]) == (safe["tier"], safe["model"], safe["rule"], safe["blocked"])
    assert d["probabilities"] == {}
    if reason is not None:
        assert reason in d["reason"], d["reason"]


def assert_classified(decision) -> None:
    """``decision`` came from the model: no invalid_input/fallback, real distributions."""
    d = decision if isinstance(decision, dict) else decision.to_dict()
    assert "invalid_input" not in d["flags"] and "fallback" not in d["flags"], d
    assert set(d["probabilities"]) == {"tier", "task", "sensitivity"}
    for probs in d["probabilities"].values():
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)


def assert_error(resp: httpx.Response, status: int, kind: str = "InputError") -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind
    return body["error"]["message"]


def same_probabilities(a, b) -> None:
    for head, probs in a.probabilities.items():
        assert probs == pytest.approx(b.probabilities[head], abs=1e-5)


# -- prompts that are there but hold nothing ------------------------------------------------------
@pytest.mark.parametrize("text", ["", " ", "\n\t \r", "\u3000\u2003", "\u00a0\u2028"])
def test_empty_and_whitespace_prompts_get_the_safe_decision(router: Router, client: httpx.Client, text: str) -> None:
    assert_safe(router.route(text), router, reason="the prompt is empty")
    resp = client.post("/v1/route", json={"texts": [text, "a real prompt"]})
    assert resp.status_code == 200
    decisions = resp.json()["decisions"]
    assert_safe(decisions[0], router, reason="prompt 0: cannot classify: the prompt is empty")
    assert_classified(decisions[1])


@pytest.mark.parametrize("text", ["\x00", "\x00\x01\x1b\x7f", "\u200b\u200d\ufeff", "\u202e\u2066", "\x85\x9f \u00ad"])
def test_control_and_invisible_only_prompts_get_the_safe_decision(router: Router, client: httpx.Client,
                                                                   text: str) -> None:
    assert_safe(router.route(text), router, reason="the prompt is empty")
    resp = client.post("/v1/route", json={"text": text})
    assert resp.status_code == 200
    assert_safe(resp.json()["decision"], router)


def test_control_characters_are_removed_and_flagged(router: Router, client: httpx.Client) -> None:
    # NUL cannot split a credential out of sight: the model reads AKIAIOSF... whole
    dirty = router.route("aws key AKIA\x00IOSF\x00ODNN secret\x1b[31m token\x7f")
    clean = router.route("aws key AKIAIOSFODNN secret[31m token")
    assert "control_chars" in dirty.flags and "control_chars" not in clean.flags
    assert_classified(dirty)
    assert (dirty.tier, dirty.rule) == (clean.tier, clean.rule)
    same_probabilities(dirty, clean)
    # tab, newline and carriage return are ordinary text
    assert "control_chars" not in router.route("line one\n\tline two\r\n").flags
    # control characters cannot push the real content out of the window unseen
    limit = router.max_chars
    padded = router.route("\x00" * (limit + 10) + " write a python function")
    assert_safe(padded, router, reason=f"nothing visible in the first {limit} characters")
    body = client.post("/v1/route", json={"text": "write\u0000 code"}).json()
    assert "control_chars" in body["decision"]["flags"]
    assert_classified(body["decision"])


# -- text that is not text ------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["\ud800", "ok \udfff ok", "\udcff", "pair reversed \udc00\ud800"])
def test_lone_surrogates_get_the_safe_decision(router: Router, client: httpx.Client, text: str) -> None:
    assert_safe(router.route(text), router, reason="not valid Unicode text")
    decisions = router.route(["fine prompt", text])
    assert_classified(decisions[0])
    assert_safe(decisions[1], router, reason="prompt 1:")
    escaped = json.dumps({"texts": ["fine prompt", text]})  # ensure_ascii: \udXXX escapes on the wire
    resp = post_raw(client, escaped.encode("ascii"))
    assert resp.status_code == 200, resp.text
    body = resp.json()["decisions"]
    assert_classified(body[0])
    assert_safe(body[1], router, reason="not valid Unicode text")


def test_invalid_utf8_bytes_in_the_body(router: Router, client: httpx.Client) -> None:
    # invalid bytes inside a JSON string: that prompt gets the safe decision, its neighbours are classified
    resp = post_raw(client, b'{"texts": ["caf\xc3\xa9 ok", "bad \xff\xfe bytes", "overlong \xc0\xaf slash", "fine"]}')
    assert resp.status_code == 200, resp.text
    decisions = resp.json()["decisions"]
    assert_classified(decisions[0]) and assert_classified(decisions[3])
    for d in decisions[1:3]:
        assert_safe(d, router, reason="not valid Unicode text")
    resp = post_raw(client, b'{"text": "\xed\xa0\x80 encoded surrogate"}')
    assert_safe(resp.json()["decision"], router)
    # a body that is not JSON even so is a malformed request
    for raw in (b"\x80\x81\x82", b'\xff{"text": "a"}', b'{"text": "a"\xff}'):
        assert_error(post_raw(client, raw), 400)


def test_mixed_scripts_and_emoji_are_classified(router: Router, client: httpx.Client) -> None:
    texts = [
        "Привет, как дела? Напиши функцию на Python",
        "你好，世界。请解释一下量子计算",
        "مرحبا بالعالم، اكتب قصيدة",
        "🚀🔥👩‍💻 write code 🇫🇷",
        "e\u0301 ﬁ Ǆ Å",
        "mixed Ελληνικά русский 日本語 עברית हिन्दी",
        "\u202eexe.live\u202c right-to-left override",
        "𝕳𝖊𝖑𝖑𝖔 𝔪𝔞𝔱𝔥 bold",
    ]
    batch = router.route(texts)
    for text, d in zip(texts, batch, strict=True):
        assert_classified(d)
        single = router.route(text)
        assert (single.tier, single.rule, single.flags) == (d.tier, d.rule, d.flags)
        same_probabilities(single, d)
    resp = client.post("/v1/route", json={"texts": texts[:MAX_BATCH]})
    assert [d["tier"] for d in resp.json()["decisions"]] == [d.tier for d in batch[:MAX_BATCH]]


@pytest.mark.slow  # the model over very long prompts
def test_very_long_prompts_are_cut_and_flagged(router: Router, client: httpx.Client) -> None:
    limit = router.max_chars
    long_words = "word " * 400_000  # 2 MB: cut to the view's max_chars, then read in windows
    d = router.route(long_words)
    assert "truncated" in d.flags
    assert_classified(d)
    head = router.route(long_words[:limit])
    assert (d.tier, d.rule, d.flags) == (head.tier, head.rule, head.flags)
    same_probabilities(d, head)
    one_word = router.route("a" * 1_000_000)  # one enormous 'word': cut by characters
    assert "truncated" in one_word.flags
    assert "truncated" not in router.route("short prompt").flags
    body = client.post("/v1/route", json={"text": "long prompt " * 600}).json()  # under MAX_BODY
    assert "long_request" in body["decision"]["flags"] and "truncated" not in body["decision"]["flags"]


@pytest.mark.parametrize("value", [None, 42, 3.5, True, b"bytes", ["nested"], {"a": 1}, object(), np.array(["a"])])
def test_non_string_prompts_get_the_safe_decision(router: Router, value) -> None:
    if not isinstance(value, list):  # a list is a batch; any other single value gets one Decision
        want = "messages: is required" if isinstance(value, dict) else \
            f"expected a prompt string or a chat-completions body, got {type(value).__name__}"
        assert_safe(router.route(value), router, reason=want)
    decisions = router.route(("fine prompt", value))  # a tuple is a batch too
    assert_classified(decisions[0])
    assert_safe(decisions[1], router, reason="prompt 1:")


# -- malformed requests ---------------------------------------------------------------------------
JSON_TYPE_ERRORS = [
    ({"text": 5}, "text"),
    ({"text": ["a"]}, "text"),
    ({"text": True}, "text"),
    ({"text": {"a": 1}}, "text"),
    ({"text": None}, "text: must not be null"),
    ({"text": None, "texts": ["a"]}, "text: must not be null"),
    ({"texts": "a"}, "texts"),
    ({"texts": [1]}, "texts.0"),
    ({"texts": [["a"]]}, "texts.0"),
    ({"texts": None}, "texts: must not be null"),
    ({"texts": []}, "texts"),
    ({}, "exactly one"),
    ({"text": "a", "texts": ["b"]}, "exactly one"),
    ({"text": "a", "extra": 1}, "extra"),
    ({"request_id": "r"}, "exactly one"),
    ({"text": "a", "request_id": ""}, "request_id"),
    ({"text": "a", "request_id": "x" * 129}, "request_id"),
    ({"text": "a", "request_id": "x\r\nSet-Cookie: y=1"}, "request_id"),
    ({"text": "a", "request_id": "caf\u00e9"}, "request_id"),
    ({"text": "a", "request_id": "has space"}, "request_id"),
    ({"text": "a", "request_id": 7}, "request_id"),
    (["text"], "body"),
    ("text", "body"),
    (5, "body"),
    (None, "body"),
]


@pytest.mark.parametrize(("payload", "field"), JSON_TYPE_ERRORS, ids=[repr(p)[:40] for p, _ in JSON_TYPE_ERRORS])
def test_json_type_errors_get_400_naming_the_field(client: httpx.Client, payload, field: str) -> None:
    message = assert_error(post_raw(client, json.dumps(payload).encode()), 400)
    assert field in message


@pytest.mark.parametrize("raw", [
    b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",  # nested too deep for the JSON parser
    b'{"text": ' + b"1" * 5000 + b"}",  # an integer too long to parse
    b'{"text": 1e999}',
    b'{"text": NaN}',
    b'{"text": "a"} trailing',
    b"",
])
def test_unparseable_bodies_get_400(client: httpx.Client, raw: bytes) -> None:
    big = len(raw) > MAX_BODY
    with httpx.Client(base_url=client.base_url, timeout=10) as c:
        resp = c.post("/v1/route", content=raw, headers={"content-type": "application/json"})
    if big:
        assert_error(resp, 413, "PayloadTooLargeError")
    else:
        assert_error(resp, 400)


@pytest.mark.slow
def test_deep_nesting_within_the_body_limit_gets_400(tiny_bundle: Path) -> None:
    app = create_app(tiny_bundle, max_body_bytes=1 << 20)
    with hardened_server(app) as s, httpx.Client(base_url=s.url, timeout=30) as c:
        raw = b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        assert_error(c.post("/v1/route", content=raw, headers={"content-type": "application/json"}), 400)
        assert c.post("/v1/route", json={"text": "still serving"}).status_code == 200


def test_wrong_content_type_gets_400(client: httpx.Client) -> None:
    resp = client.post("/v1/route", content=b'{"text": "a"}', headers={"content-type": "text/plain"})
    assert_error(resp, 400)
    resp = client.post("/v1/route", data={"text": "a"})  # a form
    assert_error(resp, 400)


def test_request_id_header_is_used_only_when_safe(client: httpx.Client) -> None:
    resp = client.post("/v1/route", json={"text": "a"}, headers={"x-request-id": "trace-123"})
    assert resp.json()["request_id"] == "trace-123" and resp.headers["x-request-id"] == "trace-123"
    for bad in ("has space", "x" * 200, "tab\there"):
        resp = client.post("/v1/route", json={"text": "a"}, headers={"x-request-id": bad})
        assert resp.status_code == 200
        rid = resp.json()["request_id"]
        assert rid != bad and len(rid) == 32 and resp.headers["x-request-id"] == rid


def test_oversized_batches_and_bodies_get_413(client: httpx.Client) -> None:
    msg = assert_error(client.post("/v1/route", json={"texts": ["x"] * (MAX_BATCH + 1)}), 413, "PayloadTooLargeError")
    assert f"the limit is {MAX_BATCH}" in msg
    msg = assert_error(client.post("/v1/route", json={"text": "y" * MAX_BODY}), 413, "PayloadTooLargeError")
    assert str(MAX_BODY) in msg
    chunks = (b'{"text": "' + b"z" * 1000 for _ in range(12))  # no content-length: counted as it streams
    assert_error(client.post("/v1/route", content=chunks, headers={"content-type": "application/json"}), 413,
                 "PayloadTooLargeError")


# -- slow and greedy clients ----------------------------------------------------------------------
# These tests assert what the server does (answers 408, closes the connection), never how many
# seconds it took: a loaded CI machine stretches every timing. The socket's patience only stops a
# test from hanging when the server never closes; it is far above every server timeout here.
PATIENCE_S = 15


def _read_until_closed(sock: socket.socket, limit_s: float = PATIENCE_S) -> tuple[bytes, bool]:
    """Everything the server sends, and whether the server closed the connection (False: it was
    still open when the client gave up waiting after ``limit_s`` of silence)."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except ConnectionResetError:
        return data, True
    except TimeoutError:
        return data, False


@pytest.mark.slow
def test_slow_body_gets_408_and_the_connection_is_closed(server: LiveServer, client: httpx.Client) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"text": "sl')
        data, closed = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"RequestTimeoutError" in data and closed
    assert client.post("/v1/route", json={"text": "next client"}).status_code == 200


@pytest.mark.slow
def test_slow_request_head_is_cut_off(server: LiveServer, client: httpx.Client) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: t\r\n")
        closed = False
        # a byte every 100 ms, slow-loris style: the connection is never idle, so only a deadline on
        # the whole head can end it. Bounded by a count (a minute of bytes), not by a clock.
        sent = 0
        while sent < 600:
            sent += 1
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
    assert closed, f"still open after {sent} bytes"
    assert client.post("/v1/route", json={"text": "next client"}).status_code == 200


@pytest.mark.slow
def test_idle_keep_alive_connection_is_closed(server: LiveServer) -> None:
    body = b'{"text": "hello"}'
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data, closed = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200") and b'"decision"' in data
    assert closed  # the server, not the client, ended the idle connection


def test_oversized_request_head_is_refused(server: LiveServer, client: httpx.Client) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        head = b"POST /v1/route HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * (MAX_HEAD_BYTES * 2) + b"\r\n"
        try:
            sock.sendall(head)
        except OSError:
            pass  # the server may close before reading it all
        data, closed = _read_until_closed(sock)
    assert closed
    assert data == b"" or data.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), data[:100]
    assert client.post("/v1/route", json={"text": "next client"}).status_code == 200


@pytest.mark.slow
def test_tierwise_serve_applies_the_timeouts(tiny_bundle: Path, tmp_path: Path) -> None:
    """The CLI wires the same protection: slow heads are cut, slow bodies get 408, big heads 400."""
    with ServeProcess(tiny_bundle, "--header-timeout-s", "0.5", "--body-timeout-s", "0.5", "--keep-alive-s", "1",
                      log_dir=tmp_path) as srv:
        assert srv.wait_for("/readyz", 200), srv.logs()
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: t\r\nX-Slow: a")
            data, closed = _read_until_closed(sock)
        assert data == b"" and closed
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            sock.sendall(b"POST /v1/route HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n{")
            data, closed = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 408") and closed
        with socket.create_connection(("127.0.0.1", srv.port)) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 40_000)  # never ends
            except OSError:
                pass
            data, closed = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 400") and closed, data[:100]
        assert srv.status("/readyz") == 200
