"""ComfyUI Studio's REST API: a FastAPI app on the same :class:`Studio` (queue, worker) as the UI.

``app.py`` mounts the Gradio UI onto this app at ``/``; every route here lives elsewhere:

    GET  /healthz  /readyz  /health  /metrics              open (no key): liveness, readiness, status, Prometheus
    GET  /models                                           checkpoints, samplers, schedulers, loras, vaes, upscale_models
    POST /api/v1/generate/            /generate/batch      generate and wait (202 past STUDIO_SYNC_WAIT_SECONDS)
    POST /api/v1/jobs                 /workflows/jobs      queue (202); Idempotency-Key honoured
    GET  /api/v1/jobs                 /jobs/{id}           list (cursor), one job; DELETE cancels
    GET  /api/v1/jobs/{id}/events     WS /ws/jobs/{id}     live events (SSE / WebSocket)
    GET  /api/v1/jobs/{id}/images/{n} /artifacts/{name}    output files;  /preview: the latest preview
    GET  /docs  /openapi.json                              the documentation of all of the above

See :mod:`api.guard` for keys, rate limits and size limits, :mod:`api.errors` for the
error shape, :mod:`api.metrics` for the metric names. Nothing here imports gradio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import SecretStr
from starlette.routing import Match

from api.errors import ApiError, Scrubber, error_response, install_error_handlers
from api.guard import ApiContext, BodyLimitMiddleware, Caller, Guard
from api.health import probe_dir, queue_counts, queue_writable, store_health
from api.jobs import jobs_router
from api.toolbox import toolbox_router
from api.metrics import CONTENT_TYPE, HttpMetricsMiddleware, StudioMetrics
from api.models import API_PREFIX, BackendOut, ErrorResponse, HealthOut, ModelsOut, ReadyOut, StorageOut, WorkerOut
from api.stream import stream_router
from comfy.auth import PasswordChecker
from comfy.errors import ComfyError
from comfy.service import BackendStatus, Studio
from comfy.settings import Settings

__all__ = ["create_api"]

#: A readiness probe answers within this many seconds, whatever the backend does.
READY_TIMEOUT = 5.0

DESCRIPTION = """
Scripts and services use ComfyUI Studio the way artists do: the same queue, the same models, the
same outputs as the studio UI served at `/`.

**Keys and logins.** When `API_KEYS` (comma-separated) or `AUTH_USERS` (the studio page's logins) is
set, every `/api/v1` route, `/models`, the event streams and `/ws/jobs/{id}` need credentials:
`Authorization: Bearer <key>` for a key, or HTTP Basic (`Authorization: Basic <base64 of user:password>`)
for a login. Each key and each login sees only its own jobs (404 for anyone else's), and its idempotency
keys are its own; a login sees the same jobs as that user on the page. `/healthz`, `/readyz`, `/health`,
`/metrics` and these docs stay open; they carry no prompts and no user data.

**Limits.** `STUDIO_RATE_LIMIT_PER_MINUTE` requests a minute per key (per client IP on an open API;
0 = off) → 429 with `Retry-After`. Bodies over `STUDIO_MAX_REQUEST_BYTES` → 413.

**Errors** are always `{"error": {"code", "message"}}`, plus `field` when one field is to blame:
400 the studio refused the parameters, 401 no or wrong key or login, 404 no such job or route, 409 idempotency
key reused with another body (or nothing left to cancel), 413 too large, 422 malformed request,
429 rate limited, 502 ComfyUI failed the job, 503 ComfyUI (or our storage) unavailable, 504 timed out.

**URLs** in answers (`location`, image `url`) are root-relative: prefix them with the address you called.
"""

_OPEN = ["/healthz", "/readyz", "/health", "/metrics"]


def create_api(studio: Studio, settings: Settings, *, manage_studio: bool = True,
               keepalive: float = 15.0, passwords: PasswordChecker | None = None) -> FastAPI:
    """The REST API for ``studio``. With ``manage_studio`` the app's lifespan starts and closes the studio.

    ``keepalive`` is the idle time between keep-alive messages on event streams (seconds); ``passwords``
    checks ``AUTH_USERS`` logins (give the page's checker to share its remembered logins).
    """
    scrub = Scrubber(_secrets(settings))
    ctx = ApiContext(studio, settings, Guard(settings, passwords=passwords), scrub, keepalive=keepalive)
    metrics = StudioMetrics(studio)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_studio:  # STUDIO_WORKER=0: a replica that serves the page and the API, workers run elsewhere
            await studio.start(worker=settings.run_worker)
        await metrics.start()
        try:
            yield
        finally:
            await metrics.aclose()
            if manage_studio:
                await studio.aclose()

    app = FastAPI(title="ComfyUI Studio API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.studio_metrics = metrics
    app.state.guard = ctx.guard  # the MCP route checks its callers with the same guard
    install_error_handlers(app, scrub)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, prefixes=("/api/", "/models", "/ws/", *_OPEN))
    routers = [_health_router(ctx, metrics), jobs_router(ctx), toolbox_router(ctx), stream_router(ctx)]
    for router in routers:
        app.include_router(router)
    _add_api_not_found(app, routers)
    return app


def _health_router(ctx: ApiContext, metrics: StudioMetrics) -> APIRouter:
    router = APIRouter(tags=["health"])
    studio = ctx.studio

    @router.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        """Touches nothing: 200 while the process serves requests."""
        return {"status": "ok"}

    @router.get("/readyz", response_model=ReadyOut, summary="Readiness: ComfyUI answers, the queue is writable",
                responses={503: {"model": ErrorResponse, "description": "Not ready; the message says why."}})
    async def readyz() -> ReadyOut:
        """Ready while at least one backend answers (the pool routes jobs to those that do) and the queue works."""
        if studio.link is not None and (problem := await queue_writable(studio)):  # Redis away: say that first
            raise ApiError(503, "queue_unavailable", ctx.scrub(problem), headers={"Retry-After": "5"})
        try:
            backends = await asyncio.wait_for(studio.backends_status(), READY_TIMEOUT)
        except TimeoutError:
            raise ApiError(503, "backend_unavailable", f"No backend answered within {READY_TIMEOUT:.0f} s.",
                           headers={"Retry-After": "5"}) from None
        up = [b for b in backends if b.reachable]
        if not up:
            reasons = "; ".join(f"{b.url} does not answer: {ctx.scrub(b.error or 'no answer')}" for b in backends)
            raise ApiError(503, "backend_unavailable", f"No backend answers. {reasons}", headers={"Retry-After": "5"})
        problem = await queue_writable(studio)
        if problem:
            raise ApiError(503, "queue_unavailable", problem, headers={"Retry-After": "5"})
        return ReadyOut(status="ready", backend=up[0].url, backends_up=len(up), backends_total=len(backends),
                        queue=await queue_counts(studio) or {})

    @router.get("/health", response_model=HealthOut, summary="Status: backends, GPU, queues, worker, storage")
    async def health() -> HealthOut:
        """Always 200; ``status`` is ``degraded`` when a backend, the worker or storage is wrong. No secrets."""
        try:
            statuses = await asyncio.wait_for(studio.backends_status(), READY_TIMEOUT)
        except TimeoutError:
            statuses = [BackendStatus(b.url, False, error="No answer in time.", name=b.name, kind=b.kind)
                        for b in studio.pool.backends]
        backends = [BackendOut(**{**status.to_dict(), "error": ctx.scrub(status.error) if status.error else None})
                    for status in statuses]
        storage = await asyncio.to_thread(probe_dir, ctx.settings.data_dir)
        counts = await queue_counts(studio)
        objects = await _objects(ctx)
        worker = WorkerOut(running=studio.worker_running, in_flight=len(studio.worker.running),
                           backend_down=ctx.scrub(studio.worker.backend_down) if studio.worker.backend_down else None)
        store = await store_health(studio)
        store["error"] = ctx.scrub(store["error"]) if store.get("error") else None
        # A replica without a worker (STUDIO_WORKER=0) is fine while some worker beats on the same Redis.
        working = worker.running or bool(store.get("workers"))
        ok = (all(b.reachable for b in backends) and storage.writable and counts is not None and working
              and objects.get("reachable") is not False and store["reachable"])
        return HealthOut(status="ok" if ok else "degraded", backend=backends[0], backends=backends,
                         queue=counts or {}, worker=worker, storage=StorageOut(**storage.__dict__), objects=objects,
                         store=store)

    @router.get("/models", response_model=ModelsOut, tags=["models"], summary="Checkpoints, samplers, schedulers",
                responses={401: {"model": ErrorResponse}, 429: {"model": ErrorResponse},
                           422: {"model": ErrorResponse}})
    async def models(refresh: bool = Query(False, description="Ask ComfyUI again instead of the cached list."),
                     caller: Caller = Depends(ctx.caller)) -> ModelsOut:
        """What the backend offers (its ``object_info``); the last list seen while it is unreachable."""
        found = await studio.models(refresh=refresh)
        return ModelsOut(checkpoints=found.checkpoints, samplers=found.samplers, schedulers=found.schedulers,
                         loras=found.loras, vaes=found.vaes, upscale_models=found.upscale_models)

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics",
                responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def prometheus() -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE)

    return router


async def _objects(ctx: ApiContext) -> dict[str, Any]:
    """The output store's health (S3 or local), scrubbed; a failure to ask is reported, not raised."""
    try:
        found = await asyncio.wait_for(ctx.studio.storage_health(), READY_TIMEOUT)
    except (TimeoutError, ComfyError, OSError) as exc:
        return {"storage": "s3", "reachable": False, "error": ctx.scrub(str(exc) or type(exc).__name__)}
    return {key: ctx.scrub(value) if isinstance(value, str) else value for key, value in found.items()}


def _add_api_not_found(app: FastAPI, routers: list[APIRouter]) -> None:
    """Unknown ``/api/v1/...`` paths answer our 404 (or 405) even once the UI is mounted at ``/``."""
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    async def not_found(request: Request) -> JSONResponse:
        allowed: set[str] = set()
        for route in (route for router in routers for route in router.routes):
            match, _ = route.matches({**request.scope, "method": "__none__"})
            if match is Match.PARTIAL:
                allowed |= set(getattr(route, "methods", None) or ())
        if allowed:
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}.",
                                  headers={"Allow": ", ".join(sorted(allowed))})
        return error_response(404, "not_found", f"Nothing at {request.url.path}; see /docs for the API's routes.")

    app.add_api_route(f"{API_PREFIX}/{{path:path}}", not_found, methods=methods, include_in_schema=False)


def _secrets(settings: Settings) -> list[str]:
    """Every configured secret value (each SecretStr, and the parts of the structured ones), to scrub."""
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
    found += settings.keys()
    for header in settings.backend_headers().values():
        found += [header, header.split(" ", 1)[-1]]
    found += list(settings.users().values())
    for url in settings.comfyui_urls:
        parts = urlsplit(url)
        found += [secret for secret in (parts.password, parts.query) if secret]
    return found
