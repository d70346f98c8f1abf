"""Whole requests: OpenAI chat bodies parsed, the model view and its windows, the HTTP chat
endpoint, ``route --input`` with messages, and the policy's input rules."""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import LiveServer

from classifier.data.schema import LabelSchema
from classifier.errors import ConfigError, InputError, PolicyError
from classifier.route_cmd import route_file
from classifier.serving.app import create_app
from classifier.serving.policy import Policy, PolicyEngine
from classifier.serving.request import FLAG_NON_TEXT_SKIPPED, RequestError, parse_request
from classifier.serving.runtime import Router
from classifier.serving.view import ModelView, sensitivity_windows

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_POLICY = yaml.safe_load((ROOT / "serving" / "policy.example.yaml").read_text())
FILLER = "please keep the tone of the report friendly and short . "
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


def chat(*turns: tuple[str, object], **extra: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": r, "content": c} for r, c in turns], **extra}


@pytest.fixture(scope="module")
def router(tiny_bundle: Path) -> Iterator[Router]:
    with Router.load(tiny_bundle) as r:
        yield r


# -- parsing --------------------------------------------------------------------------------------
def test_parse_a_chat_body_with_tools_and_tool_calls() -> None:
    body = {
        "model": "gpt-4o", "temperature": 0.3, "stream": False, "tool_choice": "auto", "user": "u-1",
        "tools": TOOLS,
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in metric units."}]},
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "18C, sunny"},
        ],
    }
    req = parse_request(body)
    assert req.roles == ("system", "developer", "user", "assistant", "tool")
    assert req.request_text == "What is the weather in Paris?"  # the last user turn
    text = req.full_text
    assert text.startswith('{"type":"function"') and "get_weather" in text[:req.tools_span[1]]
    for piece in ("You are a weather bot.", "Answer in metric units.", "get_weather({\"city\": \"Paris\"})",
                  "18C, sunny"):
        assert piece in text
    for m, (a, b) in zip(req.messages, req.spans, strict=True):
        assert text[a:b] == m.text
    assert "gpt-4o" not in text and "u-1" not in text  # fields that do not reach the model are ignored
    assert req.flags == () and not req.is_plain
    assert parse_request("hello").is_plain and parse_request("hello").request_text == "hello"


def test_content_parts_text_read_images_and_audio_skipped() -> None:
    req = parse_request(chat(("user", [
        {"type": "text", "text": "describe this"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "text", "text": "in one line"},
    ])))
    assert req.request_text == "describe this\nin one line"
    assert req.flags == (FLAG_NON_TEXT_SKIPPED,)
    assert "example.com" not in req.full_text


BAD_REQUESTS = {
    "not_a_body": (42, "request"),
    "no_messages": ({"model": "m"}, "messages"),
    "messages_not_a_list": ({"messages": "hi"}, "messages"),
    "empty_messages": ({"messages": []}, "messages"),
    "message_not_object": ({"messages": ["hi"]}, "messages[0]"),
    "unknown_role": (chat(("user", "hi"), ("bot", "x")), "messages[1].role"),
    "missing_role": ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    "missing_content": ({"messages": [{"role": "user"}]}, "messages[0].content"),
    "content_number": (chat(("user", 7)), "messages[0].content"),
    "bare_string_part": (chat(("user", ["hi"])), "messages[0].content[0]"),
    "part_without_type": (chat(("user", [{"text": "hi"}])), "messages[0].content[0].type"),
    "non_string_text_part": (chat(("user", [{"type": "text", "text": 5}])), "messages[0].content[0].text"),
    "unknown_part_type": (chat(("user", [{"type": "video", "url": "x"}])), "messages[0].content[0].type"),
    "tools_not_a_list": (chat(("user", "hi"), tools={"a": 1}), "tools"),
    "tool_not_object": (chat(("user", "hi"), tools=["f"]), "tools[0]"),
    "tool_call_arguments_not_string": (
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}]},
        "messages[0].tool_calls[0].function.arguments"),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_requests_name_the_field(kind: str, router: Router) -> None:
    body, path = BAD_REQUESTS[kind]
    with pytest.raises(RequestError) as info:
        parse_request(body)
    assert info.value.path == path and str(info.value).startswith(f"{path}:")
    d = router.route(body)  # the library: the safe decision, never a crash
    assert "invalid_input" in d.flags and "fallback" in d.flags and path in d.reason
    with pytest.raises(InputError, match=r"texts\[0\]"):
        router.predict_proba([body])


def test_a_chat_body_without_visible_text_is_invalid(router: Router) -> None:
    d = router.route(chat(("system", ""), ("user", "   \u200b ")))
    assert "invalid_input" in d.flags


# -- the model view --------------------------------------------------------------------------------
def test_windows_cover_every_token() -> None:
    view = ModelView()
    for n in (1, 62, 63, 200, 1000):
        windows, unread = sensitivity_windows(n, 62, view.fitted(62))
        covered = set()
        for ((lo, hi),) in windows:
            assert 0 <= lo < hi <= n and hi - lo <= 62
            covered |= set(range(lo, hi))
        assert covered == set(range(n)) and not unread
    capped, unread = sensitivity_windows(10_000, 62, ModelView(max_windows=3).fitted(62))
    assert len(capped) == 3 and unread and capped[-1] == ((10_000 - 62, 10_000),)
    with pytest.raises(ConfigError, match="view.tier"):
        ModelView(tier="middle")
    with pytest.raises(ConfigError, match="unknown key"):
        ModelView.from_dict({"tier": "head", "stride": 3})


def test_tokenised_once_rows_equal_tokenising_the_request(router: Router) -> None:
    body = chat(("system", FILLER * 10), ("user", "write a python function that sorts a list"))
    req = router.parse(body)[0]
    rows, groups, flags = router._rows([req])
    tier_row = rows[groups[0][0][0]]
    direct = router._tokenizer.encode("write a python function that sorts a list").ids
    assert tier_row == direct  # [CLS] ... [SEP], cut from the full text's ids
    assert flags == [["long_request"]] and len(groups[0][1]) > 1


def test_a_secret_in_the_last_window_changes_sensitivity(router: Router, tiny_bundle: Path) -> None:
    base = FILLER * 40
    plain = chat(("system", base), ("user", "summarise the notes"), ("user", FILLER * 3 + "and thanks"))
    planted = copy.deepcopy(plain)
    planted["messages"][-1]["content"] = FILLER * 3 + "password = hunter2 token AKIAIOSFODNN7EXAMPLE"
    p0, p1 = router.predict_proba(plain)["sensitivity"], router.predict_proba(planted)["sensitivity"]
    assert not np.allclose(p0, p1)  # the last window is read
    with Router.load(tiny_bundle, view={"sensitivity": "head", "tier": "head"}) as head_only:
        h0, h1 = head_only.predict_proba(plain)["sensitivity"], head_only.predict_proba(planted)["sensitivity"]
        np.testing.assert_allclose(h0, h1)  # head-only never sees it...
        assert "truncated" in head_only.route(planted).flags  # ...and says so
    d = router.route(planted)
    assert "long_request" in d.flags and "truncated" not in d.flags
    # max pooling: each sensitive class is at least its probability in any one window
    rows, groups, _ = router._rows([router.parse(planted)[0]])
    per_window = router.proba_from_logits(router._run_rows(rows, None))["sensitivity"][groups[0][1]]
    np.testing.assert_allclose(p1[0, 1:], per_window[:, 1:].max(axis=0), rtol=1e-6)


def test_the_tier_view_ignores_the_system_prompt_tail(router: Router) -> None:
    a = chat(("system", FILLER * 30 + "end A"), ("user", "solve 2x + 3 = 7 for x"))
    b = chat(("system", FILLER * 30 + "something else entirely at the end"), ("user", "solve 2x + 3 = 7 for x"))
    pa, pb = router.predict_proba([a, b]), router.predict_proba(a)
    both = router.predict_proba([a, b])
    for head in ("tier", "task"):
        np.testing.assert_allclose(both[head][0], both[head][1])
        np.testing.assert_allclose(pa[head][0], pb[head][0], rtol=1e-6)
    # sensitivity reads everything: the tail is in its windows
    (rows_a, groups_a, _), (rows_b, groups_b, _) = (router._rows([router.parse(x)[0]]) for x in (a, b))
    assert rows_a[groups_a[0][1][-1]] != rows_b[groups_b[0][1][-1]]


def test_a_plain_short_prompt_is_read_as_before(router: Router) -> None:
    text = "write a haiku about the sea"
    same = router.predict_proba(chat(("user", text)))
    direct = router.predict_proba(text)
    for head in direct:
        np.testing.assert_allclose(same[head], direct[head], rtol=1e-6)
    np.testing.assert_allclose(router.proba_from_logits(router.logits(text))["tier"], direct["tier"])
    long_body = chat(("system", FILLER * 30), ("user", text))
    np.testing.assert_allclose(router.proba_from_logits(router.logits(long_body))["sensitivity"],
                               router.predict_proba(long_body)["sensitivity"], rtol=1e-5)


# -- the policy's input rules ----------------------------------------------------------------------
def test_unread_text_never_goes_external_silently(tiny_bundle: Path) -> None:
    body = chat(("system", FILLER * 200), ("user", "hello there"))
    with Router.load(tiny_bundle, view={"max_windows": 2}) as r:
        d = r.route(body)
    assert "truncated" in d.flags and d.tier == "self_hosted"
    assert r.policy.tier(d.tier).trust == "self_hosted"
    policy = copy.deepcopy(EXAMPLE_POLICY)
    policy["input"] = {"unread": {"action": "block"}}
    policy["sensitivity"] = {}
    policy["uncertainty"] = {}
    with Router.load(tiny_bundle, view={"max_windows": 2}, policy=policy) as r:
        d = r.route(body)
        assert d.blocked and d.rule == "input:unread:block" and "text that will be sent was not read" in d.reason
        assert not r.route("hello there").blocked


def test_input_rules_are_validated_and_applied() -> None:
    schema = LabelSchema.default()
    for bad, where in (({"unread": {"action": "ignore"}}, "input.unread.action"),
                       ({"unread": {"action": "restrict"}}, "input.unread"),
                       ({"unread": {"action": "block", "allowed_trust": ["self_hosted"]}}, "input.unread"),
                       ({"unread": {"action": "restrict", "allowed_trust": ["moon"]}}, "input.unread.allowed_trust[0]"),
                       ({"unread": {"action": "restrict", "allowed_tiers": ["nope"]}}, "input.unread.allowed_tiers[0]"),
                       ({"overflow": {"action": "block"}}, "input"),
                       ("block", "input")):
        data = copy.deepcopy(EXAMPLE_POLICY)
        data["input"] = bad
        with pytest.raises(PolicyError, match="^" + re.escape(where) + ":"):
            Policy.from_dict(data)
    data = copy.deepcopy(EXAMPLE_POLICY)
    data["input"] = {"long_request": {"action": "escalate"}}
    data["sensitivity"], data["uncertainty"], data["task_overrides"] = {}, {}, {}
    data["thresholds"]["tier"] = 0.9
    engine = PolicyEngine(Policy.from_dict(data), schema)
    probs = {"tier": np.array([0.8, 0.2]), "task": np.array([0.7, 0.1, 0.1, 0.1]),
             "sensitivity": np.array([1.0, 0.0, 0.0])}
    assert engine.decide(probs).tier == "cheap"
    d = engine.decide(probs, flags=["long_request"])
    assert d.tier == "frontier" and d.rule == "input:long_request:escalate"
    batch = {h: np.stack([a, a]) for h, a in probs.items()}
    rows = engine.decide_batch(batch, flags=[["long_request"], []])
    assert [x.tier for x in rows] == ["frontier", "cheap"] and rows[0].to_dict() == d.to_dict()


# -- the HTTP chat endpoint and route --input --------------------------------------------------------
@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[httpx.Client]:
    with LiveServer(create_app(tiny_bundle, max_body_bytes=1 << 16)) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def openai_body(**kwargs: object) -> bytes:
    """The bytes the ``openai`` client sends for ``chat.completions.create(**kwargs)`` (captured
    before they would leave the process)."""
    httpx2 = pytest.importorskip("httpx2")
    openai = pytest.importorskip("openai")
    sent: list[bytes] = []

    def capture(request):  # noqa: ANN001 - httpx2.Request
        sent.append(request.content)
        return httpx2.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                          "choices": []})

    client = openai.OpenAI(api_key="sk-test", base_url="http://gateway.invalid/v1", max_retries=0,
                           http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(capture)))
    client.chat.completions.create(**kwargs)
    return sent[0]


@pytest.mark.slow
def test_http_accepts_an_unmodified_openai_chat_body(client: httpx.Client, router: Router) -> None:
    raw = openai_body(model="gpt-4o-mini", temperature=0.2, tools=TOOLS, messages=[
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/p.png"}}]},
    ])
    resp = client.post("/v1/route/chat", content=raw, headers={"content-type": "application/json",
                                                                "x-request-id": "chat-1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["request_id"] == "chat-1"
    want = router.route(json.loads(raw))
    assert body["decision"]["tier"] == want.tier and "non_text_skipped" in body["decision"]["flags"]
    assert body["decision"]["probabilities"]["tier"] == pytest.approx(want.probabilities["tier"], abs=1e-6)


@pytest.mark.parametrize("kind", ["unknown_role", "non_string_text_part", "empty_messages", "bare_string_part",
                                  "tools_not_a_list"])
def test_http_bad_chat_bodies_are_400_naming_the_field(client: httpx.Client, kind: str) -> None:
    body, path = BAD_REQUESTS[kind]
    resp = client.post("/v1/route/chat", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"].startswith(f"{path}:")


def test_http_chat_body_that_is_not_an_object(client: httpx.Client) -> None:
    for raw in (b"[1, 2]", b'"hi"', b"{not json", b"1" * 5000):
        resp = client.post("/v1/route/chat", content=raw, headers={"content-type": "application/json"})
        assert resp.status_code == 400, (raw[:20], resp.text)


def test_route_input_with_messages(router: Router, tmp_path: Path) -> None:
    lines = [
        {"id": "a", "text": "write a haiku about the sea"},
        {"id": "b", "messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "write a haiku about the sea"}], "tools": TOOLS},
        {"id": "c", "messages": [{"role": "robot", "content": "x"}]},
        {"id": "d", "nothing": 1},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = io.StringIO()
    stats = route_file(router, path, out, progress=False)
    rows = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"] and stats["invalid"] == 2
    assert "invalid_input" not in rows[1]["flags"] and rows[1]["probabilities"]
    assert "messages[0].role" in rows[2]["error"] and "line 3" in rows[2]["error"]
    assert "'messages'" in rows[3]["error"]


# -- any JSON at all: parsing never crashes, route answers -------------------------------------------
@pytest.mark.slow  # hypothesis property
def test_any_json_body_is_parsed_or_refused_never_crashes(router: Router) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20))
    json_value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                              max_leaves=10)
    part = st.one_of(json_value, st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "refusal", "x"]),
                                                        "text": json_value}))
    message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
                                                       json_value),
                                     "content": st.one_of(st.text(max_size=40), st.lists(part, max_size=3), json_value)})
    body = st.fixed_dictionaries({"messages": st.one_of(st.lists(message, max_size=4), json_value)},
                                 optional={"tools": st.one_of(st.lists(json_value, max_size=2), json_value)})

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body)
    def prop(b: dict) -> None:
        try:
            parse_request(b)
        except RequestError as exc:
            assert exc.path.split(".")[0].split("[")[0] in ("messages", "tools", "request")
        d = router.route(b)
        assert d.tier in router.policy.tier_names or d.blocked
        json.dumps(d.to_dict())

    prop()
