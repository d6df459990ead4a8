"""Prometheus metrics for one studio, in a registry of their own (so tests can build several apps).

Gauges are read when scraped (``comfy_studio_jobs{state}`` from the queue's index, in-flight prompts
from the worker); histograms and counters are fed from the event bus, which sees every job's events::

    comfy_studio_jobs{state}                          jobs in our queue, by state
    comfy_studio_prompts_in_flight                    prompts this process has on ComfyUI
    comfy_studio_worker_up / comfy_studio_backend_up  1 or 0
    comfy_studio_job_queue_wait_seconds               queued -> started, per succeeded job
    comfy_studio_job_execution_seconds                ComfyUI's own execution time
    comfy_studio_job_download_seconds                 outputs fetched and saved
    comfy_studio_jobs_finished_total{state}           succeeded / failed / cancelled
    comfy_studio_backend_errors_total{code}           failures and retries by error code
    comfy_studio_http_requests_total{method,route,status} and comfy_studio_http_request_duration_seconds{route}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.health import queue_counts
from comfy.jobs.events import JobEvent, Subscription
from comfy.service import Studio

__all__ = ["CONTENT_TYPE", "HttpMetricsMiddleware", "StudioMetrics"]

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_EXEC_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _StateCollector(Collector):
    """Gauges computed at scrape time from the queue and the worker."""

    def __init__(self, studio: Studio) -> None:
        self._studio = studio
        #: Jobs by state, read (awaited) just before each scrape renders.
        self.counts: dict[str, int] = {}

    def describe(self) -> Iterator[Metric]:
        # Describing without collecting keeps registration from reading the queue.
        yield GaugeMetricFamily("comfy_studio_jobs", "Jobs in the studio's queue, by state.", labels=["state"])
        yield GaugeMetricFamily("comfy_studio_prompts_in_flight", "Prompts this process has on ComfyUI now.")
        yield GaugeMetricFamily("comfy_studio_worker_up", "1 while the worker runs in this process.")
        yield GaugeMetricFamily("comfy_studio_backend_up", "0 while the worker waits for an unreachable ComfyUI.")

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("comfy_studio_jobs", "Jobs in the studio's queue, by state.", labels=["state"])
        for state, count in self.counts.items():
            jobs.add_metric([state], count)
        yield jobs
        worker = self._studio.worker
        yield GaugeMetricFamily("comfy_studio_prompts_in_flight", "Prompts this process has on ComfyUI now.",
                                value=len(worker.running))
        yield GaugeMetricFamily("comfy_studio_worker_up", "1 while the worker runs in this process.",
                                value=1 if self._studio.worker_running else 0)
        yield GaugeMetricFamily("comfy_studio_backend_up", "0 while the worker waits for an unreachable ComfyUI.",
                                value=0 if worker.backend_down else 1)


class StudioMetrics:
    """The metrics of one studio; :meth:`start` follows the event bus, :meth:`render` answers a scrape."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_wait = Histogram("comfy_studio_job_queue_wait_seconds", "Seconds a job waited in our queue.",
                                    buckets=_WAIT_BUCKETS, registry=r)
        self.execution = Histogram("comfy_studio_job_execution_seconds", "Seconds ComfyUI spent executing a job.",
                                   buckets=_EXEC_BUCKETS, registry=r)
        self.download = Histogram("comfy_studio_job_download_seconds", "Seconds to fetch and save a job's outputs.",
                                  buckets=_FAST_BUCKETS, registry=r)
        self.finished = Counter("comfy_studio_jobs_finished", "Jobs that reached a final state.", ["state"],
                                registry=r)
        self.backend_errors = Counter("comfy_studio_backend_errors", "Job failures and retries, by error code.",
                                      ["code"], registry=r)
        self.http_requests = Counter("comfy_studio_http_requests", "REST requests answered.",
                                     ["method", "route", "status"], registry=r)
        self.http_seconds = Histogram("comfy_studio_http_request_duration_seconds", "REST request latency.",
                                      ["route"], buckets=_FAST_BUCKETS, registry=r)
        self._state = _StateCollector(studio)
        r.register(self._state)
        self._task: asyncio.Task[None] | None = None

    def observe(self, event: JobEvent) -> None:
        """Count one job event."""
        if event.kind == "succeeded" and event.timings:
            self.queue_wait.observe(event.timings.get("queue_wait_s", 0.0))
            self.execution.observe(event.timings.get("execution_s", 0.0))
            self.download.observe(event.timings.get("download_s", 0.0))
        if event.kind in ("failed", "retrying"):
            self.backend_errors.labels(code=event.error_code or "unknown").inc()
        if event.final:
            self.finished.labels(state=event.kind).inc()

    async def start(self) -> None:
        """Follow every job's events (call from the serving event loop)."""
        if self._task is None:
            sub = self.studio.bus.subscribe()
            self._task = asyncio.create_task(self._consume(sub), name="studio-metrics")

    async def _consume(self, sub: Subscription) -> None:
        try:
            async for event in sub:
                self.observe(event)
        finally:
            sub.close()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def render(self) -> bytes:
        """The text exposition format (the queue's counts read first)."""
        self._state.counts = await queue_counts(self.studio) or {}
        return generate_latest(self.registry)


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class HttpMetricsMiddleware:
    """Counts requests under ``prefixes`` by route template (``/api/v1/jobs/{job_id}``), not raw path."""

    def __init__(self, app: ASGIApp, *, metrics: StudioMetrics, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.metrics = metrics
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def watch(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # labels stay a bounded set
            self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.http_seconds.labels(route=route).observe(time.perf_counter() - started)
