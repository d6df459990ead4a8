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

HTTP 429 and 5xx are retried with backoff that honours ``Retry-After``; httpx errors become
:mod:`comfy.errors` types in one place, :func:`map_errors`. The API key is sent as ``Authorization:
Bearer`` and never logged, printed or put in an error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import email.utils
import hashlib
import io
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
from pydantic import SecretStr

from comfy import graph as workflows
from comfy.backends.base import BackendHealth, Outcome, Output, RunContext, redact_url
from comfy.errors import (
    ComfyError,
    ExecutionFailed,
    ExecutionInterrupted,
    JobTimedOut,
    PromptRejected,
    ProtocolError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
    WorkflowError,
    describe_transport_failure,
)
from comfy.graph.params import GenerationParams
from comfy.jobs.records import Job
from comfy.storage.local import LocalStore

__all__ = [
    "DEFAULT_BASE_URL",
    "RUN_LIMIT_BYTES",
    "WAITING_FOR_WORKER",
    "RequestTooLarge",
    "RunExpired",
    "RunPodBackend",
    "RunPodClient",
    "build_run_body",
    "describe_failure",
    "map_errors",
    "parse_progress",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
#: /run takes at most 10 MB; measured in decimal megabytes to stay clear of either reading.
RUN_LIMIT_BYTES = 10_000_000
WAITING_FOR_WORKER = "waiting for a GPU worker"
#: Images are never scaled below this many pixels on their longer side to fit the limit.
MIN_SIDE = 256
RUNNING = frozenset({"IN_PROGRESS", "RUNNING"})
_NODE_FAILURE = re.compile(r"Node Type: (?P<type>[^,]+), Node ID: (?P<id>[^,]+), Message: (?P<msg>.*)", re.S)


class RunExpired(ServerError):
    """Raised when RunPod answers 404 for a job it had: it expired (ttl, or 30 min after it ended).

    Retryable like :class:`PromptLost`: the job is submitted again while it has attempts left.
    """

    retryable = True
    code = "run_expired"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"RunPod no longer knows job {job_id}: it expired before its result was collected "
                         "(RunPod keeps results 30 minutes, and deletes jobs older than STUDIO_RUNPOD_TTL).")
        self.job_id = job_id


class RequestTooLarge(PromptRejected):
    """Raised when RunPod refuses ``/run`` because the request is larger than its 10 MB limit."""

    code = "request_too_large"


@contextlib.contextmanager
def map_errors(what: str) -> Iterator[None]:
    """Turn httpx exceptions into :class:`ServerError` subclasses (the one mapping point for RunPod)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerTimeout(f"RunPod did not answer in time ({what}).") from exc
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"Cannot reach RunPod ({what}): {describe_transport_failure(exc)}.") from exc
    except httpx.HTTPError as exc:  # invalid URLs, decoding errors, stream misuse
        raise ServerError(f"Talking to RunPod failed ({what}): {type(exc).__name__}.") from exc


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date); None when absent or unreadable."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class RunPodClient:
    """The serverless queue API of one endpoint. Retries 429/5xx (and refused connections) with backoff.

    >>> RunPodClient("abc123", SecretStr("rp_secret")).url("/run")
    'https://api.runpod.ai/v2/abc123/run'
    """

    def __init__(
        self,
        endpoint_id: str,
        api_key: SecretStr | str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.base_url = base_url.rstrip("/")
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout or httpx.Timeout(60.0, connect=10.0),
                                              follow_redirects=True)
        self.retries = retries
        self.backoff = backoff
        #: The longest wait between two tries, whatever ``Retry-After`` asks.
        self.max_wait = max_wait
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"RunPodClient(endpoint_id={self.endpoint_id!r}, base_url={redact_url(self.base_url)!r})"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{self.endpoint_id}{path}"

    async def aclose(self) -> None:
        if self._owns_http and not self.http.is_closed:
            await self.http.aclose()

    async def run(self, body: bytes) -> dict[str, Any]:
        """``POST /run`` with a prepared JSON body; returns ``{"id", "status"}``.

        Raises :class:`RequestTooLarge` (413), :class:`PromptRejected` (other 4xx), :class:`ServerUnavailable`.
        """
        response = await self._request("POST", "/run", "submitting a job", content=body, idempotent=False)
        if response.status_code == 413 or (response.status_code == 400 and b"too large" in response.content.lower()):
            raise RequestTooLarge(
                f"RunPod refused the job: the request is {len(body) / 1e6:.1f} MB, more than the 10 MB that /run "
                "accepts.",
                body=_json_or_text(response),
            )
        if 400 <= response.status_code < 500:
            raise PromptRejected(f"RunPod refused the job with HTTP {response.status_code}: "
                                 f"{_short(_json_or_text(response))}", body=_json_or_text(response))
        answer = self._json(response, "submitting a job")
        if not isinstance(answer.get("id"), str):
            raise ProtocolError(f"RunPod's answer to /run has no job id: {_short(answer)}")
        return answer

    async def status(self, job_id: str) -> dict[str, Any]:
        """``GET /status/{id}``; raises :class:`RunExpired` on 404."""
        response = await self._request("GET", f"/status/{job_id}", f"status of job {job_id}")
        if response.status_code == 404:
            raise RunExpired(job_id)
        return self._json(response, f"status of job {job_id}")

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """``POST /cancel/{id}``; a job RunPod no longer knows counts as cancelled."""
        response = await self._request("POST", f"/cancel/{job_id}", f"cancelling job {job_id}")
        if response.status_code == 404:
            return {"id": job_id, "status": "CANCELLED"}
        return self._json(response, f"cancelling job {job_id}")

    async def health(self) -> dict[str, Any]:
        """``GET /health``: ``{"jobs": {...}, "workers": {"idle", "running"}}``."""
        return self._json(await self._request("GET", "/health", "health"), "health")

    async def download(self, url: str) -> bytes:
        """Stream a presigned S3 URL (sent without our API key: it is someone else's server)."""
        what = f"downloading {redact_url(url)}"
        for attempt in range(self.retries + 1):
            with map_errors(what):
                async with self.http.stream("GET", url) as response:
                    if response.status_code == 200:
                        return b"".join([chunk async for chunk in response.aiter_bytes()])
                    if response.status_code < 500 or attempt == self.retries:
                        raise ServerError(f"The bucket answered HTTP {response.status_code} to {what} "
                                          "(an expired or wrong presigned URL?).")
            await self.sleep(self._wait(attempt, None))
        raise AssertionError("unreachable")

    # -- one request, retried -----------------------------------------------------------------------

    async def _request(self, method: str, path: str, what: str, *, content: bytes | None = None,
                       idempotent: bool = True) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"}  # at the point of use only
        if content is not None:
            headers["Content-Type"] = "application/json"
        for attempt in range(self.retries + 1):
            try:
                with map_errors(what):
                    response = await self.http.request(method, self.url(path), content=content, headers=headers)
            except (ServerUnavailable, ServerTimeout) as exc:
                # A refused connection sent nothing; anything else may have reached RunPod: retry only reads.
                if attempt == self.retries or not (idempotent or isinstance(exc.__cause__, httpx.ConnectError)):
                    raise
                wait = self._wait(attempt, None)
                logger.info("RunPod: %s failed (%s); retrying in %.2fs", what, exc, wait)
            else:
                if response.status_code in (401, 403):
                    raise ServerUnavailable(f"RunPod refused the API key (HTTP {response.status_code}) for {what}; "
                                            "check RUNPOD_API_KEY and RUNPOD_ENDPOINT_ID.")
                if response.status_code == 404 and not path.startswith("/status/") and not path.startswith("/cancel/"):
                    raise ServerUnavailable(f"RunPod has no endpoint {self.endpoint_id} (HTTP 404 for {what}); "
                                            "check RUNPOD_ENDPOINT_ID and RUNPOD_BASE_URL.")
                if response.status_code != 429 and response.status_code < 500:
                    return response
                # A 500/502/504 to /run may come after RunPod queued the job: sending it again could
                # start a second run we never learn of. 429 and 503 say it was not taken.
                unsure = not idempotent and response.status_code not in (429, 503)
                if attempt == self.retries or unsure:
                    kind = "rate-limited" if response.status_code == 429 else f"answered HTTP {response.status_code} to"
                    times = "" if unsure else f" {attempt + 1} times in a row"
                    raise ServerUnavailable(f"RunPod {kind} {what}{times}.", status=response.status_code)
                wait = self._wait(attempt, _retry_after(response))
                logger.info("RunPod answered HTTP %d to %s; retrying in %.2fs", response.status_code, what, wait)
            await self.sleep(wait)
        raise AssertionError("unreachable")

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.backoff * 2**attempt, self.max_wait)

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise ServerError(f"RunPod answered HTTP {response.status_code} to {what}: "
                              f"{_short(_json_or_text(response))}")
        try:
            body = response.json()
        except ValueError as exc:
            raise ProtocolError(f"RunPod's answer to {what} is not JSON.") from exc
        if not isinstance(body, dict):
            raise ProtocolError(f"RunPod's answer to {what} is not a JSON object.")
        return body


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "…"


# -- what a status says ------------------------------------------------------------------------------


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
        message = str(parsed.get("error_message") or parsed.get("error") or _short(parsed))
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


# -- the request body and its 10 MB limit ------------------------------------------------------------


def build_run_body(graph: dict[str, Any], images: dict[str, bytes], policy: dict[str, Any], *,
                   limit: int = RUN_LIMIT_BYTES) -> tuple[bytes, dict[str, Any], list[str]]:
    """The ``/run`` body as JSON bytes, the graph as sent, and notes on what was changed to fit ``limit``.

    Images too big for the limit are re-encoded as JPEG (when they have no transparency), then scaled
    down, keeping their aspect ratio; raises :class:`WorkflowError` if even that does not fit.
    """
    body = _encode(graph, images, policy)
    if len(body) <= limit:
        return body, graph, []
    from PIL import Image

    originals = {name: Image.open(io.BytesIO(data)) for name, data in images.items()}
    scale, notes = 1.0, []
    while True:
        sent: dict[str, bytes] = {}
        renames: dict[str, str] = {}
        sizes = []
        for name, img in originals.items():
            data, new_name, size = _shrink(img, name, scale)
            sent[new_name] = data
            renames[name] = new_name
            sizes.append(size)
        fitted = _rename(graph, renames)
        body = _encode(fitted, sent, policy)
        if len(body) <= limit:
            break
        if not originals:  # the workflow alone is too big: nothing to shrink
            raise WorkflowError(
                f"The workflow is too large for RunPod Serverless: {len(body) / 1e6:.1f} MB, and /run accepts at "
                f"most {limit / 1e6:g} MB. Remove large inline values (embedded images or text) from it.",
                field="workflow")
        # Never below MIN_SIDE on the longer side (an image already smaller is only re-encoded).
        floor = min(1.0, MIN_SIDE / max(max(img.size) for img in originals.values()))
        smaller = max(scale * min(0.9, max(0.5, (limit / len(body)) ** 0.5 * 0.95)), floor)
        if smaller >= scale:
            raise WorkflowError(
                f"The input image is too large for RunPod Serverless: the request would be {len(body) / 1e6:.1f} MB "
                f"even scaled down to {sizes[0][0]}×{sizes[0][1]}, and /run accepts at most {limit / 1e6:g} MB. "
                "Use a smaller image.", field="image")
        scale = smaller
    for name, new_name in renames.items():
        size = originals[name].size
        new_size = Image.open(io.BytesIO(sent[new_name])).size
        how = "as a JPEG" if new_name.endswith(".jpg") else "as a PNG"
        scaled = f", scaled from {size[0]}×{size[1]} to {new_size[0]}×{new_size[1]}," if new_size != size else ""
        notes.append(f"{name} was sent {how}{scaled} to fit RunPod's {limit / 1e6:g} MB request limit.")
    return body, fitted, notes


def _encode(graph: dict[str, Any], images: dict[str, bytes], policy: dict[str, Any]) -> bytes:
    payload: dict[str, Any] = {"workflow": graph}
    if images:
        payload["images"] = [{"name": name, "image": base64.b64encode(data).decode("ascii")}
                             for name, data in images.items()]
    return json.dumps({"input": payload, "policy": policy}, separators=(",", ":")).encode()


def _shrink(img: Any, name: str, scale: float) -> tuple[bytes, str, tuple[int, int]]:
    from PIL import Image

    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    frame = img.resize(size, Image.LANCZOS) if size != img.size else img
    stem = name.rsplit(".", 1)[0]
    out = io.BytesIO()
    if _opaque(frame):
        frame.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue(), f"{stem}.jpg", size
    frame.save(out, "PNG", optimize=True)  # its alpha may be a mask: keep it
    return out.getvalue(), f"{stem}.png", size


def _opaque(img: Any) -> bool:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = img.convert("RGBA").getchannel("A")
        return alpha.getextrema() == (255, 255)
    return True


def _rename(graph: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    changed = {old: new for old, new in renames.items() if old != new}
    if not changed:
        return graph
    return {node_id: {**node, "inputs": {k: changed.get(v, v) if isinstance(v, str) else v
                                         for k, v in (node.get("inputs") or {}).items()}}
            for node_id, node in graph.items()}


def _decode_base64(data: str) -> bytes:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("RunPod sent an output image that is not valid base64.") from exc


# -- the backend -------------------------------------------------------------------------------------


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
        if attach and job.prompt_id:
            ctx.submitted()
            ctx.started(message="re-attached after a restart")
            run_id = job.prompt_id
        else:
            graph, images = self._graph(job, ctx.store)
            body, graph, notes = build_run_body(graph, images, self._policy(ctx.job_timeout),
                                                limit=self.max_request_bytes)
            job = ctx.record(prompt_id=None, client_id=uuid.uuid4().hex, backend=self.name,
                             workflow=graph if job.kind == "generate" else job.workflow, note=None)
            ctx.started(job=job)
            answer = await self.api.run(body)
            run_id = answer["id"]
            ctx.submitted()
            ctx.record(prompt_id=run_id)
            logger.info("Job %s is RunPod job %s", job.id, run_id)
        outcome = await self._follow(ctx, run_id)
        return Outcome(outcome.handle, outcome.outputs, outcome.execution_ms, (*notes, *outcome.notes))

    def _graph(self, job: Job, store: LocalStore) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The graph and its input images, named by content (worker-comfyui uploads them before queueing)."""
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
            return graph, images
        params = GenerationParams.from_dict(job.params)
        graph = workflows.load_template("img2img" if params.init_image else "txt2img")
        if params.init_image:
            params = dataclasses.replace(params, init_image=keep(params.init_image))
        if params.checkpoint is None and self.checkpoints:
            params = dataclasses.replace(params, checkpoint=self.checkpoints[0])
        return workflows.bind(graph, params), images

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
            ctx.status(WAITING_FOR_WORKER + (" (cold start)" if cold else ""))
        elif status in RUNNING:
            ctx.status(None)
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
            raise ProtocolError(f"RunPod job {run_id} completed without an output object: {_short(output)}")
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


async def _decoded(data: str) -> bytes:
    return _decode_base64(data)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
