"""RunPod Serverless as a backend: an endpoint running worker-comfyui, through RunPod's queue API.

    POST {base}/{endpoint}/run          {"input": {"workflow": graph, "images": [{name, image}]}, "policy": {...}}
    GET  {base}/{endpoint}/status/{id}  polled: fast at first, then slower (capped)
    POST {base}/{endpoint}/cancel/{id}
    GET  {base}/{endpoint}/health       workers idle/running, jobs in queue/in progress

Statuses map onto the job like this (see ``tests/fixtures/runpod/`` for the shapes):

    IN_QUEUE                 note and node "waiting for a GPU worker" (a cold start, or every worker busy)
    IN_PROGRESS / RUNNING    progress from ``output`` when the handler reports it ("4/10", {value, max}, ...)
    COMPLETED                ``output.images`` (base64, or presigned S3 URLs downloaded) → saved PNGs;
                             ``output.errors`` and ``status: success_no_images`` become the job's note
    FAILED                   ``error`` as text, or as a JSON string (a handler crash) → a readable message
    CANCELLED                ExecutionInterrupted (ours, or someone else's cancel)
    TIMED_OUT                JobTimedOut: the policy's executionTimeout (STUDIO_JOB_TIMEOUT) ran out
    HTTP 404 on /status      RunExpired: RunPod forgot the job (ttl or the 30 min result retention); the job
                             is submitted again while it has attempts left, else fails saying so

RunPod picks the job id, so unlike a ComfyUI prompt it can be stored only after ``/run`` answers; a
worker killed in between leaves one orphan run at RunPod, and the job is submitted again.

HTTP 429 and 5xx are retried with backoff that honours ``Retry-After``, except a ``/run`` that RunPod may
have queued (a 500/502/504, a timeout, a cut connection): it is never sent again, the job fails with
:class:`RunUnconfirmed`, since RunPod cannot look a run up without its id. httpx errors become
:mod:`comfy.errors` types in one place, :func:`map_errors`. The API key is sent as ``Authorization:
Bearer`` and never logged, printed or put in an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from comfy import graph as workflows
from comfy.backends.base import BackendHealth, Outcome, Output, RunContext, redact_url
from comfy.backends.runpod_client import RunPodClient, short
from comfy.backends.runpod_payload import RUN_LIMIT_BYTES, build_run_body, decode_base64
from comfy.errors import (
    ComfyError,
    ExecutionFailed,
    ExecutionInterrupted,
    JobTimedOut,
    PromptRejected,
    ProtocolError,
    ServerTimeout,
    ServerUnavailable,
)
from comfy.jobs.records import Job
from comfy.storage.local import LocalStore
from comfy.graph.toolbox import Toolbox, prepare_job

__all__ = ["WAITING_FOR_WORKER", "RunPodBackend", "describe_failure", "parse_progress"]


logger = logging.getLogger(__name__)


WAITING_FOR_WORKER = "waiting for a GPU worker"


RUNNING = frozenset({"IN_PROGRESS", "RUNNING"})
_NODE_FAILURE = re.compile(r"Node Type: (?P<type>[^,]+), Node ID: (?P<id>[^,]+), Message: (?P<msg>.*)", re.S)


def parse_progress(output: Any) -> tuple[float, int | None, int | None, str | None] | None:
    """(fraction, step, steps, node) from a handler's ``progress_update`` value, or None if it has none.

    >>> parse_progress({"progress": "4/10"})
    (0.4, 4, 10, None)
    >>> parse_progress({"type": "progress", "value": 12, "max": 25, "percent": 48.0, "node": "3"})
    (0.48, 12, 25, '3')
    >>> parse_progress({"percent": 50}), parse_progress(0.25), parse_progress(None)
    ((0.5, None, None, None), (0.25, None, None, None), None)
    """
    node = None
    value: Any = output
    if isinstance(output, dict):
        node = str(output["node"]) if output.get("node") is not None else None
        if isinstance(output.get("value"), (int, float)) and isinstance(output.get("max"), (int, float)):
            step, steps = int(output["value"]), int(output["max"])
            return (_clamp(step / steps) if steps else 0.0), step, steps, node
        value = output.get("progress", output.get("percent"))
        if value is None:
            return None
        if "percent" in output and "progress" not in output and isinstance(value, (int, float)):
            return _clamp(value / 100), None, None, node
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if match:
            step, steps = int(match[1]), int(match[2])
            return (_clamp(step / steps) if steps else 0.0), step, steps, node
        value = value.strip().rstrip("%")
        try:
            number = float(value)
        except ValueError:
            return None
        return _clamp(number / 100 if number > 1 else number), None, None, node
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _clamp(value / 100 if value > 1 else value), None, None, node
    return None


def _clamp(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 4)


def describe_failure(body: dict[str, Any]) -> ComfyError:
    """The error for a FAILED status: ``error`` as text or as a JSON string, plus ``output.details``."""
    raw = body.get("error")
    details = [str(d) for d in ((body.get("output") or {}).get("details") or [])] \
        if isinstance(body.get("output"), dict) else []
    parsed: Any = raw
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
    if isinstance(parsed, dict):  # the SDK's report of a handler that raised
        kind = str(parsed.get("error_type") or "error")
        kind = re.sub(r"^<class '(?:[\w.]*\.)?(\w+)'>$", r"\1", kind)
        message = str(parsed.get("error_message") or parsed.get("error") or short(parsed))
        return ExecutionFailed(f"The RunPod worker crashed: {kind}: {message}", exception_type=kind,
                               exception_message=message)
    text = str(parsed).strip() if parsed is not None else "RunPod reports the job failed, without a reason."
    for detail in details:
        match = _NODE_FAILURE.search(detail)
        if match:
            return ExecutionFailed(
                f"ComfyUI on the RunPod worker failed while running node {match['id'].strip()} "
                f"({match['type'].strip()}): {match['msg'].strip()}",
                node_id=match["id"].strip(), node_type=match["type"].strip(), exception_message=match["msg"].strip(),
            )
    message = text + ("" if not details else ": " + "; ".join(details))
    if text.startswith("Workflow validation failed"):
        return PromptRejected(f"The RunPod worker's ComfyUI refused the workflow. {message}")
    return ExecutionFailed(f"The RunPod worker failed: {message}")


class RunPodBackend:
    """A RunPod Serverless endpoint running worker-comfyui; see the module docstring."""

    kind = "runpod"

    def __init__(
        self,
        api: RunPodClient,
        *,
        max_in_flight: int = 4,
        checkpoints: list[str] | None = None,
        ttl: float = 86_400.0,
        poll_min: float = 0.25,
        poll_max: float = 5.0,
        reconnect_window: float = 120.0,
        max_request_bytes: int = RUN_LIMIT_BYTES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.max_in_flight = max_in_flight
        self.name = f"runpod:{api.endpoint_id}"
        self.url = redact_url(api.url(""))
        #: None: assume the endpoint has any checkpoint a job asks for.
        self.checkpoints = checkpoints
        self.ttl = ttl
        self.poll_min = poll_min
        self.poll_max = poll_max
        #: How long /status may keep failing before the job is given up here (and resubmitted elsewhere).
        self.reconnect_window = reconnect_window
        self.max_request_bytes = max_request_bytes
        self.sleep = sleep
        self._last_health: BackendHealth | None = None

    def __repr__(self) -> str:
        return f"RunPodBackend({self.name!r}, url={self.url!r})"

    async def health(self) -> BackendHealth:
        body = await self.api.health()
        jobs, workers = body.get("jobs") or {}, body.get("workers") or {}
        in_queue, in_progress = _int(jobs.get("inQueue")), _int(jobs.get("inProgress"))
        self._last_health = BackendHealth(
            gpu="RunPod Serverless", queue_remaining=(in_queue or 0) + (in_progress or 0),
            workers_idle=_int(workers.get("idle")), workers_running=_int(workers.get("running")),
            jobs_in_queue=in_queue, jobs_in_progress=in_progress,
        )
        return self._last_health

    async def refresh_models(self) -> None:
        """The serverless API has no ``/object_info``: what it has is configured (STUDIO_RUNPOD_CHECKPOINTS)."""

    def has_checkpoints(self, names: frozenset[str]) -> bool | None:
        return True if self.checkpoints is None else names <= set(self.checkpoints)

    async def cancel(self, job: Job) -> None:
        if job.prompt_id and job.backend == self.name:
            await self.api.cancel(job.prompt_id)

    async def forget(self, handle: str) -> None:
        await self.api.cancel(handle)

    async def aclose(self) -> None:
        await self.api.aclose()

    async def run(self, ctx: RunContext, *, attach: bool) -> Outcome:
        job = ctx.job
        notes: list[str] = []
        record = None
        if job.prompt_id and (attach or job.backend == self.name):
            # Its run here, after a restart or an outage it waited out; RunExpired if RunPod forgot it.
            ctx.submitted()
            ctx.started(message="re-attached after a restart" if attach else "re-attached: the backend is back")
            run_id = job.prompt_id
        else:
            graph, images, record = await self._graph(job, ctx.files, getattr(ctx, "toolbox", None) or Toolbox())
            body, graph, notes = build_run_body(graph, images, self._policy(ctx.job_timeout),
                                                limit=self.max_request_bytes)
            job = await ctx.record(prompt_id=None, client_id=uuid.uuid4().hex, backend=self.name,
                                   workflow=graph if job.kind == "generate" else job.workflow, note=None)
            ctx.started(job=job)
            answer = await self.api.run(body)
            run_id = answer["id"]
            ctx.submitted()
            await ctx.record(prompt_id=run_id)
            logger.info("Job %s is RunPod job %s", job.id, run_id)
        outcome = await self._follow(ctx, run_id)
        return Outcome(outcome.handle, outcome.outputs, outcome.execution_ms, (*notes, *outcome.notes), record)

    async def _graph(self, job: Job, store: LocalStore,
                     toolbox: Toolbox) -> tuple[dict[str, Any], dict[str, bytes], dict[str, Any] | None]:
        """The graph, its input images named by content (worker-comfyui uploads them before queueing), and
        what the PNGs record of the toolbox. Serverless has no ``object_info``: names are sent as given."""
        images: dict[str, bytes] = {}

        def keep(path: str) -> str:
            data = store.read_input(path)
            name = f"studio_{hashlib.sha256(data).hexdigest()[:16]}.png"
            images[name] = data
            return name

        if job.kind == "workflow":
            graph = workflows.parse_workflow(job.workflow or {})
            kept = dict(job.params.get("images") or {})
            if kept:
                graph = workflows.apply_inputs(graph, {(node_id, "image"): keep(path) for node_id, path in kept.items()})
            return graph, images, None

        async def upload(path: str) -> str:
            return keep(path)

        ready, graph = await prepare_job(job.params, toolbox, None, read_input=store.read_input, upload=upload,
                                         default_checkpoint=self.checkpoints[0] if self.checkpoints else
                                         _template_checkpoint())
        return graph, images, ready.record()

    def _policy(self, job_timeout: float) -> dict[str, Any]:
        week = 7 * 86_400_000
        return {"executionTimeout": int(min(max(job_timeout * 1000, 5_000), week)),
                "ttl": int(min(max(self.ttl * 1000, 10_000), week))}

    async def _follow(self, ctx: RunContext, run_id: str) -> Outcome:
        interval, last, failing_since = self.poll_min, None, None
        deadline = time.monotonic() + self.ttl + ctx.job_timeout  # RunPod ends it first; this is a backstop
        while True:
            try:
                body = await self.api.status(run_id)
            except (ServerUnavailable, ServerTimeout) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since + interval > self.reconnect_window:
                    raise
                logger.warning("RunPod status of job %s failed (%s); asking again in %.2fs", run_id, exc, interval)
            else:
                failing_since = None
                status = str(body.get("status") or "")
                if status != last:
                    interval, last = self.poll_min, status
                    await self._entered(ctx, status)
                done = self._on_status(ctx, run_id, status, body)
                if done is not None:
                    return done
            if time.monotonic() > deadline:
                with contextlib.suppress(ComfyError):
                    await self.api.cancel(run_id)
                raise JobTimedOut(ctx.job_timeout)
            await self.sleep(interval)
            interval = min(interval * 1.5, self.poll_max)

    async def _entered(self, ctx: RunContext, status: str) -> None:
        if status == "IN_QUEUE":
            health = None
            with contextlib.suppress(ComfyError):
                health = await self.health()  # no worker at all: a cold start, not a busy endpoint
            cold = health is not None and not (health.workers_idle or health.workers_running)
            await ctx.status(WAITING_FOR_WORKER + (" (cold start)" if cold else ""))
        elif status in RUNNING:
            await ctx.status(None)
            ctx.progress(0.0, node="RunPod worker", message="running on a RunPod worker")

    def _on_status(self, ctx: RunContext, run_id: str, status: str, body: dict[str, Any]) -> Outcome | None:
        if status in RUNNING:
            found = parse_progress(body.get("output"))
            if found is not None:
                fraction, step, steps, node = found
                ctx.progress(min(fraction, 0.99), node=node or "RunPod worker", step=step, steps=steps)
            return None
        if status == "COMPLETED":
            return self._outcome(run_id, body)
        if status == "FAILED":
            raise describe_failure(body)
        if status == "CANCELLED":
            raise ExecutionInterrupted(f"RunPod job {run_id} was cancelled.")
        if status == "TIMED_OUT":
            raise JobTimedOut(ctx.job_timeout)
        if status != "IN_QUEUE":
            logger.warning("RunPod job %s has a status this studio does not know: %r", run_id, status)
        return None

    def _outcome(self, run_id: str, body: dict[str, Any]) -> Outcome:
        output = body.get("output")
        if not isinstance(output, dict):
            raise ProtocolError(f"RunPod job {run_id} completed without an output object: {short(output)}")
        notes = [f"The RunPod worker reported: {error}" for error in output.get("errors") or ()]
        outputs: list[Output] = []
        for index, image in enumerate(output.get("images") or ()):
            filename = str(image.get("filename") or f"runpod_{index}.png")
            kind, data = image.get("type"), image.get("data")
            if kind == "base64" and isinstance(data, str):
                outputs.append(Output(None, filename, fetch=lambda data=data: _decoded(data)))
            elif kind == "s3_url" and isinstance(data, str) and data.startswith(("http://", "https://")):
                outputs.append(Output(None, filename, fetch=lambda url=data: self.api.download(url)))
            elif kind == "s3_url":
                notes.append(f"{filename} stayed inside the RunPod worker ({data}): its BUCKET_* settings are "
                             "incomplete, so it saved the file locally instead of uploading it.")
            else:
                notes.append(f"{filename} came in a form this studio cannot read ({kind!r}).")
        if not outputs and (output.get("images") or ()):
            raise ExecutionFailed("The RunPod job finished, but none of its images can be fetched: " + " ".join(notes))
        if not outputs:
            notes.append("The workflow ran but saved no images (only previews, or outputs that are not images).")
        return Outcome(run_id, tuple(outputs), _int(body.get("executionTime")), tuple(notes))


def _template_checkpoint() -> str:
    """Without a configured list, the shipped txt2img template's checkpoint (what the endpoint runs by default)."""
    graph = workflows.load_template("txt2img")
    return next(str(n["inputs"]["ckpt_name"]) for n in graph.values() if n["class_type"] == "CheckpointLoaderSimple")


async def _decoded(data: str) -> bytes:
    return decode_base64(data)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
