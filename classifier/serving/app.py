"""The HTTP routing service (``tierwise serve``): FastAPI on uvicorn around one ``Router``.

Endpoints:

- ``POST /v1/route``: body ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` (optional
  ``request_id``) -> ``{"request_id", "decision"}`` or ``{"request_id", "decisions"}``;
- ``POST /v1/route/chat``: body an unmodified OpenAI chat-completions request (``messages``,
  optional ``tools``; every other field is ignored) -> ``{"request_id", "decision"}``; a malformed
  body (unknown role, a content part that is not an object or whose ``text`` is not a string,
  empty ``messages``, wrong types) is a 400 whose message names the field path
  (``messages[1].content[0].text: ...``); image/audio parts are skipped and flagged
  ``non_text_skipped``. The request id comes from the ``x-request-id`` header (or is generated);
- ``GET /healthz``: the process is up; ``GET /readyz``: a verified bundle is loaded (503 if not);
- ``GET /metrics``: Prometheus text format (see ``metrics.py``);
- ``GET /openapi.json``: the API schema.

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx status (``TierwiseError.http_status``;
400 for a malformed body, 408 for a body not received in time, 413 for a body or batch over its
limit, 503 while no bundle is loaded). A well-formed request whose prompt cannot be classified
(empty, undecodable, or an inference fault) is answered 200 with the policy's safe decision,
flagged, never a 500. What each kind of bad request gets:

- not JSON, not UTF-8 at all, nested too deep, numbers too long to parse: 400;
- JSON type errors (``text`` a number, list or null; ``texts`` not a list of strings; both or
  neither of ``text``/``texts``; unknown fields; a ``request_id`` that is not 1-128 visible
  ASCII characters): 400 naming the field;
- a body over ``max_body_bytes`` or more prompts than ``max_batch``: 413;
- a body that does not arrive within ``body_timeout_s`` (a slow client): 408 and the connection
  is closed, so a slow-loris client holds nothing for longer than that; ``tierwise serve`` also
  closes a connection whose request line and headers take longer than ``--header-timeout-s``,
  idle keep-alive connections after ``--keep-alive-s``, and parses HTTP with h11, which answers
  400 to a request head still incomplete after 16 KiB (httptools, uvicorn's default when
  installed, buffers headers without bound: one connection streaming 48 MB of headers grew the
  process by 48 MB);
- a JSON body whose strings hold invalid UTF-8 bytes: the bad bytes become lone surrogates
  (``surrogateescape``), so each such prompt gets the safe decision flagged ``invalid_input``
  while the rest of a batch is classified;
- empty, whitespace-only, control-only or lone-surrogate prompts: 200, safe decision,
  ``invalid_input``; prompts with control characters or over the length limits: 200, classified,
  flagged ``control_chars`` / ``truncated`` (see ``runtime.py`` for the truncation policy);
- an inference fault or a decision past ``deadline_ms``: 200, safe decision, ``fallback``.

A bundle that is missing at startup leaves the server up but unready (``/readyz`` 503 naming the
reason) while it checks every ``bundle_retry_s`` seconds whether the bundle has appeared; a
bundle that is there but fails verification is never served (``tierwise serve`` refuses to start
with it, exit 2; one that appears later and fails keeps ``/readyz`` at 503 with the reason).

What this module leaves out: TLS, authentication and rate limiting (put the service behind a
proxy that does them) and multi-process workers (run several processes behind a balancer).
Imports fastapi, uvicorn, prometheus_client and the torch-free runtime only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifier import __version__
from classifier.errors import (
    AuditError,
    BundleError,
    ConfigError,
    InputError,
    PayloadTooLargeError,
    TierwiseError,
)
from classifier.serving.metrics import PROMETHEUS_CONTENT_TYPE, ServingMetrics

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTE_PATH = "/v1/route"
CHAT_PATH = "/v1/route/chat"
ENDPOINTS = (ROUTE_PATH, CHAT_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_BUNDLE_RETRY_S = 5.0
DEFAULT_DEADLINE_MS = 2000.0
DEFAULT_KEEP_ALIVE_S = 5
DEFAULT_HEADER_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16 * 1024  # request line + headers (h11's incomplete-event limit)
DEFAULT_LIMIT_CONCURRENCY = 1024
MAX_REQUEST_ID = 128
# visible ASCII only: a request id is echoed in a response header and written to logs, so no
# CR/LF (header splitting, forged log lines), no spaces, nothing that needs encoding
REQUEST_ID_PATTERN = r"^[!-~]+$"
_REQUEST_ID = re.compile(r"[!-~]+")


class ServiceUnavailableError(TierwiseError):
    """No verified bundle is loaded (yet), or the audit log cannot be written."""

    http_status = 503


class RequestTimeoutError(InputError):
    """The request body did not arrive within the server's body timeout."""

    http_status = 408


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _json_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status)


# -- request and response documents (OpenAPI) ----------------------------------------------------
def _route_request_schema(schema: dict[str, Any]) -> None:
    """The request schema as the server enforces it: fields are never null (leave them out), and
    exactly one of ``text`` / ``texts`` is required."""
    for prop in schema.get("properties", {}).values():
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        if branches:
            prop.update(branches[0])
        prop.pop("default", None)
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [{"text": "Write a haiku about the sea"},
                          {"texts": ["hi", "prove that sqrt(2) is irrational"], "request_id": "req-42"}]


class RouteRequest(BaseModel):
    """Exactly one of ``text`` (one prompt) or ``texts`` (a batch); no field may be null."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_route_request_schema)

    text: str | None = Field(None, description="one prompt")
    texts: list[str] | None = Field(None, min_length=1,
                                    description="a batch of prompts (at most the server's max batch)")
    request_id: str | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID, pattern=REQUEST_ID_PATTERN,
                                   description="1-128 visible ASCII characters; echoed back (body and "
                                               "x-request-id header) and written to the audit log; "
                                               "generated if absent")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = [k for k in ("text", "texts", "request_id") if k in data and data[k] is None]
            if nulls:
                raise ValueError(f"{', '.join(nulls)}: must not be null (leave the field out instead)")
        return data

    @model_validator(mode="after")
    def _one_of(self) -> RouteRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self


class DecisionDoc(BaseModel):
    model_config = ConfigDict(extra="allow")

    tier: str | None = Field(description="routed tier; null when blocked")
    model: str | None = Field(description="model of the routed tier; null when blocked")
    blocked: bool
    rule: str = Field(description="the rule that decided")
    reason: str
    probabilities: dict[str, dict[str, float]] = Field(description="head -> class -> calibrated probability")
    thresholds: dict[str, Any]
    policy_version: str
    flags: list[str] = Field(description="e.g. uncertain, truncated, invalid_input, fallback, blocked")
    detections: list[dict[str, Any]] = Field(
        default_factory=list, description="detector hits: {rule: 'detector:<id>', class, start, end}; never the text")


class RouteResponse(BaseModel):
    request_id: str
    decision: DecisionDoc | None = Field(None, description="for a 'text' request")
    decisions: list[DecisionDoc] | None = Field(None, description="for a 'texts' request, in order")


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 408, 413, 503)}


# -- ASGI middleware ------------------------------------------------------------------------------
if sys.version_info >= (3, 11):
    async def _receive_by(receive: Receive, deadline: float) -> Message:
        async with asyncio.timeout_at(deadline):  # no extra task, unlike wait_for on 3.10
            return await receive()
else:  # pragma: no cover - Python 3.10
    async def _receive_by(receive: Receive, deadline: float) -> Message:
        return await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())


def guarded_h11_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, plus a deadline for each request's head (request line + headers).

    uvicorn times out idle keep-alive connections, but not a client that opens a connection (or
    starts its next request) and then sends its headers a byte at a time. This closes such a
    connection ``header_timeout_s`` after it opened or after its last response, unless a request
    is in progress by then (its body has its own deadline, see ``BodyLimitMiddleware``).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being handled: not ours to cut
            if not self.transport.is_closing():
                logger.info("closing a connection whose request head took over %g s", header_timeout_s)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


def escape_invalid_utf8(body: bytes) -> bytes:
    """A JSON body whose strings hold invalid UTF-8 bytes, rewritten so that those bytes become
    lone surrogates (``surrogateescape``, written as ``\\udcXX`` escapes): the prompts that hold
    them then get the runtime's safe decision instead of the whole request a 400. A body that is
    valid UTF-8, or is not JSON even so, is returned unchanged (and answered as usual)."""
    if body.isascii():
        return body
    try:
        body.decode("utf-8")
        return body
    except UnicodeDecodeError:
        pass
    try:
        return json.dumps(json.loads(body.decode("utf-8", "surrogateescape"))).encode("ascii")
    except (ValueError, RecursionError):
        return body


class BodyLimitMiddleware:
    """Buffer request bodies up to ``max_bytes`` within ``timeout_s`` seconds; answer 413 JSON
    beyond the size and 408 JSON (closing the connection) past the time: the app never sees them.
    JSON bodies with invalid UTF-8 inside strings are rewritten (:func:`escape_invalid_utf8`).

    The route handler needs the whole body anyway, so buffering here costs nothing extra.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_large = _json_error(413, PayloadTooLargeError.__name__,
                                f"request body is over the limit of {self.max_bytes} bytes; send fewer or "
                                "shorter prompts per request")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await too_large(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while more:
            try:
                message = await _receive_by(receive, deadline)
            except asyncio.TimeoutError:
                logger.info("request body not received within %g s: 408, closing the connection", self.timeout_s)
                timeout = JSONResponse(
                    error_body(RequestTimeoutError.__name__,
                               f"the request body did not arrive within {self.timeout_s:g} s"),
                    status_code=408, headers={"connection": "close"})
                await timeout(scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = escape_invalid_utf8(b"".join(chunks))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Count every HTTP request by endpoint and status and time it (errors included)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            self.metrics.observe_request(scope.get("path", ""), status, time.perf_counter() - start)


# -- the application ------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.router: Any = None
        self.error: str | None = "the bundle is still loading"
        self.owns_router = False
        self.audit: Any = None
        self.closing = False


def create_app(
    bundle: str | Path | None = None,
    *,
    router: Any = None,
    threads: int = 1,
    policy: str | Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int | None = None,
    audit_log: str | Path | None = None,
    metrics: ServingMetrics | None = None,
    deadline_ms: float | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    bundle_retry_s: float | None = DEFAULT_BUNDLE_RETRY_S,
    trusted_keys: list[Any] | None = None,
    expect_sha256: str | None = None,
    audit_key: bytes | None = None,
    prompt_key: bytes | None = None,
    audit_checkpoints: str | Path | None = None,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
) -> FastAPI:
    """Build the app. Give a ``bundle`` path (loaded and verified at startup; ``/readyz`` is 503
    until that succeeds, and stays 503 with the reason while it fails: the load is tried again
    every ``bundle_retry_s`` seconds, None for never) or an already loaded ``router``.
    ``max_batch`` defaults to the bundle's ``input_limits.max_batch``; ``deadline_ms`` is the
    per-request inference deadline of a router loaded from ``bundle`` (a given ``router`` keeps its
    own); ``body_timeout_s`` bounds how long a request body may take to arrive.
    ``trusted_keys`` / ``expect_sha256`` go to ``Router.load`` (signed bundles, digest pinning);
    ``audit_key``, ``prompt_key``, ``audit_checkpoints``, ``checkpoint_every`` and
    ``checkpoint_seconds`` configure the audit log (see ``audit.py``)."""
    if bundle is None and router is None:
        raise ConfigError("create_app needs a bundle path or a loaded router")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be an integer >= 1, got {max_body_bytes!r}")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ConfigError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    for name, value in (("body_timeout_s", body_timeout_s), ("bundle_retry_s", bundle_retry_s)):
        if value is None and name == "bundle_retry_s":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    state = _State()
    metrics = metrics or ServingMetrics(ENDPOINTS)

    def attach(loaded: Any) -> None:
        state.router = loaded
        state.error = None
        metrics.set_bundle(loaded.info())

    def try_load() -> bool:
        from classifier.serving.runtime import Router

        if not Path(bundle).exists():
            error = f"cannot load bundle {bundle}: it does not exist (yet)"
        else:
            try:
                loaded = Router.load(bundle, threads=threads, policy=policy, deadline_ms=deadline_ms,
                                     trusted_keys=trusted_keys, expect_sha256=expect_sha256)
            except (TierwiseError, OSError) as exc:
                error = f"cannot load bundle {bundle}: {exc}"
            else:
                if state.closing:  # loaded in the background while the server shut down
                    loaded.close()
                    return False
                attach(loaded)
                state.owns_router = True
                logger.info("serving bundle %s", bundle)
                return True
        if error != state.error:  # log each new reason once, not on every retry
            logger.error("%s%s", error, f"; trying again every {bundle_retry_s:g} s" if bundle_retry_s else "")
        # keep running: /healthz answers, /readyz says why we are not ready
        state.error = error
        metrics.set_bundle(None)
        return False

    async def retry_load() -> None:
        while not state.closing:
            await asyncio.sleep(bundle_retry_s)  # type: ignore[arg-type]
            if not state.closing and await asyncio.to_thread(try_load):
                return

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if audit_log is not None:
            from classifier.serving.audit import (
                DEFAULT_CHECKPOINT_EVERY,
                DEFAULT_CHECKPOINT_SECONDS,
                AuditLog,
            )

            state.audit = AuditLog(audit_log, key=audit_key, prompt_key=prompt_key, checkpoints=audit_checkpoints,
                                   checkpoint_every=checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
                                   checkpoint_seconds=checkpoint_seconds or DEFAULT_CHECKPOINT_SECONDS,
                                   on_checkpoint=metrics.set_audit_checkpoint)
        retry: asyncio.Task | None = None
        if router is not None:
            attach(router)
        elif not try_load() and bundle_retry_s:
            retry = asyncio.create_task(retry_load())
        try:
            yield
        finally:
            state.closing = True
            if retry is not None:
                retry.cancel()
                try:
                    await retry
                except asyncio.CancelledError:
                    pass
            if state.owns_router and state.router is not None:
                state.router.close()
            if state.audit is not None:
                try:
                    state.audit.close()  # final checkpoint
                except (AuditError, OSError) as exc:
                    logger.error("final audit checkpoint failed: %s", exc)
            state.router = None
            state.error = "shutting down"
            metrics.set_bundle(None)

    app = FastAPI(
        title="tierwise router",
        version=__version__,
        description="Routes LLM prompts to a model tier with a calibrated classifier and an owner-approved policy.",
        lifespan=lifespan,
    )
    app.state.tierwise = state
    app.state.metrics = metrics

    # -- errors: always {"error": {"type", "message"}} ------------------------------------------
    @app.exception_handler(TierwiseError)
    async def _tierwise_error(_: Request, exc: TierwiseError) -> JSONResponse:
        return _json_error(exc.http_status, type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            msg = str(err.get("msg", "invalid"))
            parts.append(f"{loc}: {msg}")
        message = "; ".join(parts) or "invalid request body"
        return _json_error(400, InputError.__name__,
                           f"{message}. Expected JSON {{\"text\": \"...\"}} or {{\"texts\": [\"...\"]}}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse the body (not UTF-8, too deep, huge numbers)
            return _json_error(400, InputError.__name__,
                               f"{exc.detail}: the body must be UTF-8 JSON such as {{\"text\": \"...\"}} "
                               "or {\"texts\": [\"...\"]}")
        return _json_error(exc.status_code, "HTTPError", str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return _json_error(500, "InternalError", "internal error; the server log has the details")

    # -- endpoints ------------------------------------------------------------------------------
    @app.get("/healthz", summary="the process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="a verified bundle is loaded", responses={503: {"model": ErrorResponse}})
    def readyz() -> Response:
        if state.router is None:
            return _json_error(503, ServiceUnavailableError.__name__, state.error or "no bundle loaded")
        trust = getattr(state.router, "trust", None) or {}
        warnings = list(trust.get("warnings", ()))
        if state.audit is not None:
            if state.audit.key is None:
                warnings.append("the audit log is not keyed: anyone who can write its directory can rebuild its "
                                "chain; set --audit-key and --audit-checkpoints")
            if state.audit.prompt_key is None:
                warnings.append("the audit log stores unsalted prompt SHA-256 digests: a guessed prompt can be "
                                "confirmed; set --prompt-key")
        return JSONResponse({"status": "ready", "bundle": state.router.info(), "trust": trust, "warnings": warnings})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.post(ROUTE_PATH, summary="route one prompt or a batch", response_model=None,
              responses={200: {"model": RouteResponse}, **_ERRORS})
    def route(body: RouteRequest, request: Request) -> Response:
        loaded = state.router
        if loaded is None:
            raise ServiceUnavailableError(state.error or "no bundle loaded")
        request_id = body.request_id or _header_request_id(request) or uuid.uuid4().hex
        single = body.texts is None
        texts = [body.text] if single else list(body.texts or ())
        if not texts:
            raise InputError("'texts' is empty: send at least one prompt")
        limit = max_batch or loaded.input_limits.max_batch
        if len(texts) > limit:
            raise PayloadTooLargeError(f"'texts' holds {len(texts)} prompts; the limit is {limit} per request")
        start = time.perf_counter()
        try:
            decisions = loaded.route(texts)
        except Exception:  # noqa: BLE001 - Router.route answers faults itself; this is the last guard
            logger.exception("route failed for request %s; answering with the safe decision", request_id)
            decisions = [loaded.safe_decision("internal fault while routing", ["fallback"]) for _ in texts]
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        metrics.observe_decisions(decisions)
        if state.audit is not None:
            _audit(state.audit, loaded, decisions, texts, request_id, single, elapsed_ms)
            metrics.set_audit_entries(state.audit.entries)
        docs = [d.to_dict() for d in decisions]
        payload = {"request_id": request_id, "decision": docs[0]} if single else {"request_id": request_id, "decisions": docs}
        return Response(json.dumps(payload, ensure_ascii=False, allow_nan=False), media_type="application/json",
                        headers={"x-request-id": request_id})

    @app.post(CHAT_PATH, summary="route one OpenAI chat-completions request body, as the gateway has it",
              response_model=None, responses={200: {"model": RouteResponse}, **_ERRORS},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["messages"], "additionalProperties": True,
                  "properties": {"messages": {"type": "array", "minItems": 1, "items": {"type": "object"}},
                                 "tools": {"type": "array", "items": {"type": "object"}}},
                  "examples": [{"model": "gpt-4o-mini", "messages": [
                      {"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "Write a haiku about the sea"}]}]}}}}})
    async def route_chat(request: Request) -> Response:
        from classifier.serving.request import parse_request

        loaded = state.router
        if loaded is None:
            raise ServiceUnavailableError(state.error or "no bundle loaded")
        raw = await request.body()
        try:
            body = json.loads(raw.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an integer too long to convert
            raise InputError(f"the body is not JSON ({exc}); send an OpenAI chat-completions request body") from None
        if not isinstance(body, dict):
            raise InputError(f"body: must be a JSON object (an OpenAI chat-completions request with 'messages'), "
                             f"got {type(body).__name__}")
        parsed = parse_request(body)
        request_id = _header_request_id(request) or uuid.uuid4().hex
        start = time.perf_counter()
        try:
            decision = await asyncio.to_thread(loaded.route, parsed)
        except Exception:  # noqa: BLE001 - Router.route answers faults itself; this is the last guard
            logger.exception("route failed for request %s; answering with the safe decision", request_id)
            decision = loaded.safe_decision("internal fault while routing", ["fallback"])
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        metrics.observe_decisions([decision])
        if state.audit is not None:
            _audit(state.audit, loaded, [decision], [parsed.full_text], request_id, True, elapsed_ms)
        payload = {"request_id": request_id, "decision": decision.to_dict()}
        return Response(json.dumps(payload, ensure_ascii=False, allow_nan=False), media_type="application/json",
                        headers={"x-request-id": request_id})

    def openapi_with_limits() -> dict[str, Any]:
        # the batch limit is known once the bundle is loaded: publish it as maxItems
        doc = app.openapi_schema or FastAPI.openapi(app)
        texts = doc["components"]["schemas"]["RouteRequest"]["properties"]["texts"]
        limit = max_batch or (state.router.input_limits.max_batch if state.router is not None else None)
        if limit:
            texts["maxItems"] = limit
        else:
            texts.pop("maxItems", None)
        return doc

    app.openapi = openapi_with_limits  # type: ignore[method-assign]

    # outermost last: metrics see every answer, including the 413s of the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _header_request_id(request: Request) -> str | None:
    """The client's ``x-request-id`` header when it is a usable id (else one is generated)."""
    value = request.headers.get("x-request-id")
    if value and len(value) <= MAX_REQUEST_ID and _REQUEST_ID.fullmatch(value):
        return value
    return None


def _audit(audit: Any, router: Any, decisions: list[Any], texts: list[Any], request_id: str,
           single: bool, elapsed_ms: float) -> None:
    try:
        for i, (d, text) in enumerate(zip(decisions, texts, strict=True)):
            prompt = text if isinstance(text, str) else repr(text)
            audit.append(d, request_id=request_id if single else f"{request_id}:{i}", prompt=prompt,
                         model_version=router.model_version, bundle_hash=router.bundle_hash,
                         latency_ms=round(elapsed_ms, 3))
    except (AuditError, OSError) as exc:
        # decisions that cannot be recorded are not handed out: fail closed
        logger.error("audit log write failed: %s", exc)
        raise ServiceUnavailableError(f"the audit log cannot be written ({exc}); no decision was returned") from None


# -- CLI ------------------------------------------------------------------------------------------
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle directory or .tar.gz")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--policy", type=Path, default=None, help="routing policy YAML replacing the bundle's own")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"largest request body accepted (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="most prompts per request (default: the bundle's input_limits.max_batch)")
    parser.add_argument("--audit-log", type=Path, default=None, help="append every decision to this hash-chained log")
    parser.add_argument("--audit-key", type=Path, default=None,
                        help="key file (tierwise audit keygen) to HMAC-chain the audit log; keep it outside the log's folder")
    parser.add_argument("--audit-checkpoints", type=Path, default=None,
                        help="append HMAC'd checkpoints (entry count + head) here, on storage the log writer cannot "
                             "rewrite; needs --audit-key")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="write a checkpoint every this many entries (default 1000)")
    parser.add_argument("--checkpoint-seconds", type=float, default=None,
                        help="and every this many seconds when there are new entries (default 60)")
    parser.add_argument("--prompt-key", type=Path, default=None,
                        help="key file for keyed prompt digests (prompt_hmac) in the audit log instead of unsalted SHA-256")
    parser.add_argument("--trusted-key", type=Path, action="append", default=None,
                        help="Ed25519 public key (tierwise keygen) the bundle must be signed with; repeatable; "
                             "adds to $TIERWISE_TRUSTED_KEYS")
    parser.add_argument("--expect-sha256", default=None,
                        help="refuse the bundle unless the sha256 of its manifest.json is this (pins every file)")
    parser.add_argument("--deadline-ms", type=float, default=DEFAULT_DEADLINE_MS,
                        help="per-request inference deadline; past it the answer is the safe decision flagged "
                             f"fallback (0: none; default {DEFAULT_DEADLINE_MS:g})")
    parser.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help=f"a request body must arrive within this many seconds, else 408 (default {DEFAULT_BODY_TIMEOUT_S:g})")
    parser.add_argument("--header-timeout-s", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                        help="close a connection whose request line and headers take longer than this "
                             f"(default {DEFAULT_HEADER_TIMEOUT_S:g})")
    parser.add_argument("--keep-alive-s", type=int, default=DEFAULT_KEEP_ALIVE_S,
                        help=f"close idle keep-alive connections after this many seconds (default {DEFAULT_KEEP_ALIVE_S})")
    parser.add_argument("--limit-concurrency", type=int, default=DEFAULT_LIMIT_CONCURRENCY,
                        help="answer 503 beyond this many open connections or requests in flight "
                             f"(default {DEFAULT_LIMIT_CONCURRENCY})")
    parser.add_argument("--bundle-retry-s", type=float, default=DEFAULT_BUNDLE_RETRY_S,
                        help="when the bundle does not exist yet, look for it again every this many seconds "
                             f"(the server is up but unready meanwhile; default {DEFAULT_BUNDLE_RETRY_S:g})")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run_serve(args: argparse.Namespace) -> int:
    """Serve a bundle. A bundle that exists but fails verification (tampered, incomplete, of an
    unknown format) refuses to start: exit 2 with the reason, before the port is bound. A bundle
    path that does not exist yet starts the server unready (``/readyz`` 503) until it appears:
    deployments that sync the bundle in next to the server are not a crash loop."""
    import uvicorn

    from classifier.serving.runtime import Router

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    for flag, value in (("--deadline-ms", args.deadline_ms), ("--body-timeout-s", args.body_timeout_s),
                        ("--keep-alive-s", args.keep_alive_s), ("--limit-concurrency", args.limit_concurrency),
                        ("--header-timeout-s", args.header_timeout_s),
                        ("--bundle-retry-s", args.bundle_retry_s)):
        if not value >= 0 or (value == 0 and flag not in ("--deadline-ms",)):
            raise ConfigError(f"{flag} must be > 0{' (or 0 for none)' if flag == '--deadline-ms' else ''}, got {value}")
    deadline_ms = args.deadline_ms or None
    from classifier.serving import audit as audit_io
    from classifier.serving import signing

    keys = signing.trusted_keys_from_env() + signing.load_trusted_keys(args.trusted_key or ())
    audit_key = prompt_key = None
    if args.audit_key is not None or args.prompt_key is not None or args.audit_checkpoints is not None:
        if args.audit_log is None:
            raise ConfigError("--audit-key, --prompt-key and --audit-checkpoints need --audit-log")
    if args.audit_key is not None:
        audit_key = audit_io.load_key(args.audit_key, log_path=args.audit_log)
    if args.prompt_key is not None:
        prompt_key = audit_io.load_key(args.prompt_key, log_path=args.audit_log, what="prompt key")
    if args.audit_checkpoints is not None and audit_key is None:
        raise ConfigError("--audit-checkpoints needs --audit-key (checkpoints are HMAC'd with it)")
    router = None
    if args.bundle.exists():
        # load (and verify) before binding the port: a bad bundle exits 2 with the reason
        try:
            router = Router.load(args.bundle, threads=args.threads, policy=args.policy, deadline_ms=deadline_ms,
                                 trusted_keys=keys, expect_sha256=args.expect_sha256)
        except BundleError as exc:
            raise BundleError(f"refusing to serve {args.bundle}: {exc}") from None
    else:
        if args.policy is not None:
            from classifier.serving.policy import Policy

            Policy.from_yaml(args.policy)  # a bad policy fails now, not later in the background
        logger.warning("bundle %s does not exist: starting unready (/readyz answers 503) and looking for it "
                       "every %g s", args.bundle, args.bundle_retry_s)
    app = create_app(args.bundle, router=router, threads=args.threads, policy=args.policy,
                     max_body_bytes=args.max_body_bytes, max_batch=args.max_batch, audit_log=args.audit_log,
                     deadline_ms=deadline_ms, body_timeout_s=args.body_timeout_s, bundle_retry_s=args.bundle_retry_s,
                     trusted_keys=keys, expect_sha256=args.expect_sha256, audit_key=audit_key, prompt_key=prompt_key,
                     audit_checkpoints=args.audit_checkpoints, checkpoint_every=args.checkpoint_every,
                     checkpoint_seconds=args.checkpoint_seconds)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                    http=guarded_h11_protocol(args.header_timeout_s), h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                    timeout_keep_alive=args.keep_alive_s, limit_concurrency=args.limit_concurrency)
    finally:
        if router is not None:
            router.close()
    return 0
