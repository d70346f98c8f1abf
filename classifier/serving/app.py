"""The HTTP routing service (``tierwise serve``): FastAPI on uvicorn around one ``Router``.

Endpoints:

- ``POST /v1/route``: body ``{"text": "..."}`` or ``{"texts": ["...", ...]}`` (optional
  ``request_id``) -> ``{"request_id", "decision"}`` or ``{"request_id", "decisions"}``;
- ``GET /healthz``: the process is up; ``GET /readyz``: a verified bundle is loaded (503 if not);
- ``GET /metrics``: Prometheus text format (see ``metrics.py``);
- ``GET /openapi.json``: the API schema.

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx status (``TierwiseError.http_status``;
400 for a malformed body, 413 for a body or batch over its limit, 503 while no bundle is
loaded). A well-formed request whose prompt cannot be classified (empty, undecodable, or an
inference fault) is answered 200 with the policy's safe decision, flagged, never a 500.

What this module leaves out: TLS, authentication and rate limiting (put the service behind a
proxy that does them) and multi-process workers (run several processes behind a balancer).
Imports fastapi, uvicorn, prometheus_client and the torch-free runtime only.
"""

from __future__ import annotations

import argparse
import json
import logging
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
ENDPOINTS = (ROUTE_PATH, "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB
MAX_REQUEST_ID = 128


class ServiceUnavailableError(TierwiseError):
    """No verified bundle is loaded (yet), or the audit log cannot be written."""

    http_status = 503


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


def _json_error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(kind, message), status_code=status)


# -- request and response documents (OpenAPI) ----------------------------------------------------
class RouteRequest(BaseModel):
    """Exactly one of ``text`` (one prompt) or ``texts`` (a batch)."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"examples": [{"text": "Write a haiku about the sea"},
                                                              {"texts": ["hi", "prove that sqrt(2) is irrational"],
                                                               "request_id": "req-42"}]})

    text: str | None = Field(None, description="one prompt")
    texts: list[str] | None = Field(None, description="a batch of prompts (at most the server's max batch)")
    request_id: str | None = Field(None, min_length=1, max_length=MAX_REQUEST_ID,
                                   description="echoed back and written to the audit log; generated if absent")

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


class RouteResponse(BaseModel):
    request_id: str
    decision: DecisionDoc | None = Field(None, description="for a 'text' request")
    decisions: list[DecisionDoc] | None = Field(None, description="for a 'texts' request, in order")


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 503)}


# -- ASGI middleware ------------------------------------------------------------------------------
class BodyLimitMiddleware:
    """Buffer request bodies up to ``max_bytes``; answer 413 JSON beyond (the app never sees them).

    The route handler needs the whole body anyway, so buffering here costs nothing extra.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
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
) -> FastAPI:
    """Build the app. Give a ``bundle`` path (loaded and verified at startup; ``/readyz`` is 503
    until that succeeds, and stays 503 with the reason if it fails) or an already loaded
    ``router``. ``max_batch`` defaults to the bundle's ``input_limits.max_batch``."""
    if bundle is None and router is None:
        raise ConfigError("create_app needs a bundle path or a loaded router")
    if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be an integer >= 1, got {max_body_bytes!r}")
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ConfigError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    state = _State()
    metrics = metrics or ServingMetrics(ENDPOINTS)

    def attach(loaded: Any) -> None:
        state.router = loaded
        state.error = None
        metrics.set_bundle(loaded.info())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if audit_log is not None:
            from classifier.serving.audit import AuditLog

            state.audit = AuditLog(audit_log)
        if router is not None:
            attach(router)
        else:
            from classifier.serving.runtime import Router

            try:
                attach(Router.load(bundle, threads=threads, policy=policy))
                state.owns_router = True
                logger.info("serving bundle %s", bundle)
            except (TierwiseError, OSError) as exc:
                # keep running: /healthz answers, /readyz says why we are not ready
                state.error = f"cannot load bundle {bundle}: {exc}"
                metrics.set_bundle(None)
                logger.error("%s", state.error)
        try:
            yield
        finally:
            if state.owns_router and state.router is not None:
                state.router.close()
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
        return JSONResponse({"status": "ready", "bundle": state.router.info()})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.post(ROUTE_PATH, summary="route one prompt or a batch", response_model=None,
              responses={200: {"model": RouteResponse}, **_ERRORS})
    def route(body: RouteRequest, request: Request) -> Response:
        loaded = state.router
        if loaded is None:
            raise ServiceUnavailableError(state.error or "no bundle loaded")
        request_id = body.request_id or request.headers.get("x-request-id") or uuid.uuid4().hex
        request_id = request_id[:MAX_REQUEST_ID]
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
        docs = [d.to_dict() for d in decisions]
        payload = {"request_id": request_id, "decision": docs[0]} if single else {"request_id": request_id, "decisions": docs}
        return Response(json.dumps(payload, ensure_ascii=False, allow_nan=False), media_type="application/json",
                        headers={"x-request-id": request_id})

    # outermost last: metrics see every answer, including the 413s of the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


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
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from classifier.serving.runtime import Router

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    # load (and verify) before binding the port: a bad bundle exits 2 with the reason
    router = Router.load(args.bundle, threads=args.threads, policy=args.policy)
    app = create_app(args.bundle, router=router, max_body_bytes=args.max_body_bytes, max_batch=args.max_batch,
                     audit_log=args.audit_log)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        router.close()
    return 0
