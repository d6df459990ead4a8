"""A fake RunPod Serverless endpoint running worker-comfyui: the queue API on a real loopback port.

Built from ``tests/fixtures/runpod/`` (the shapes of RunPod's API and of worker-comfyui's handler):

* ``/v2/{endpoint}/run``, ``/status/{id}``, ``/cancel/{id}``, ``/health``, with the bearer key checked on
  every call (401 otherwise) and the 10 MB limit on ``/run`` (413);
* a job waits ``IN_QUEUE`` for ``queue_delay`` and for a free worker (``workers`` of them; a cold one
  first takes ``cold_start``), runs ``IN_PROGRESS`` (reporting ``{"progress": "k/n"}`` per sampler step
  unless ``progress`` is off), then ends ``COMPLETED`` with the handler's output, or as a scenario says;
* the handler either runs the workflow on a :class:`FakeComfy` (``comfy=``: uploads the images, queues
  the prompt, reads ``/history``, fetches ``/view``: real PNGs, real validation errors), or returns the
  captured ComfyUI PNG from ``tests/fixtures/comfyui/images``;
* outputs come as base64 (worker-comfyui's default), as presigned "S3" URLs served by this same fake
  under ``/s3/...`` (``output = "s3"``), or as the container-local path of a misconfigured bucket
  (``output = "s3_local"``).

Scenario knobs (settable any time): ``fail_next`` ("handler_error", "exception"), ``partial_errors_next``,
``no_images_next``, ``time_out_next``, ``expire_next`` (the next job is forgotten once it runs: 404),
``hold`` (running jobs wait), ``rate_limit_next = n`` (n answers 429 with ``retry_after``),
``errors_next = n`` (n answers ``error_status``, 503), ``max_body``, ``lose_run_reply_next = status``
(the next ``/run`` is queued and runs, but its answer is a gateway's ``status``: what a 502/504 after
RunPod took the job looks like), ``run_answer_delay`` (seconds ``/run`` waits, the job queued, before it
answers: a client's read timeout). Observations: ``requests`` (time, method, path,
status, auth header present), ``runs`` (the ``/run`` bodies), ``cancels``, ``s3_gets``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import loopback
from tests.fakes.comfyui import FakeComfy

__all__ = ["FakeRunPod", "RUNPOD_FIXTURES", "fixture"]

RUNPOD_FIXTURES = Path(__file__).parent.parent / "fixtures" / "runpod"
COMFY_IMAGES = Path(__file__).parent.parent / "fixtures" / "comfyui" / "images"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})


def fixture(name: str) -> dict[str, Any]:
    """``tests/fixtures/runpod/<name>.json`` (e.g. ``serverless/status-in-queue``)."""
    return json.loads((RUNPOD_FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def _body(name: str) -> dict[str, Any]:
    return copy.deepcopy(fixture(f"serverless/{name}")["response"]["body"])


@dataclass
class _Job:
    id: str
    input: dict[str, Any]
    policy: dict[str, Any]
    status: str = "IN_QUEUE"
    output: Any = None
    error: str | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    task: asyncio.Task[None] | None = None
    expire: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.submitted) * 1000)
            body["workerId"] = "fakeworker01"
        if self.ended is not None and self.started is not None:
            body["executionTime"] = int((self.ended - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class Seen:
    at: float
    method: str
    path: str
    status: int
    authorized: bool


class FakeRunPod:
    """See the module docstring. ``url`` is the API base (``http://127.0.0.1:<port>/v2``)."""

    def __init__(self, *, endpoint_id: str = "fakeendpoint01", api_key: str = "rp_FAKE_KEY_0123456789",
                 comfy: FakeComfy | None = None, queue_delay: float = 0.0, cold_start: float = 0.0,
                 workers: int = 4, step_time: float = 0.0, idle_timeout: float = 60.0) -> None:
        self.endpoint_id = endpoint_id
        self.api_key = api_key
        self.comfy = comfy
        self.queue_delay = queue_delay
        self.cold_start = cold_start
        self.workers = workers
        self.step_time = step_time
        self.idle_timeout = idle_timeout
        self.progress = True
        self.output = "base64"
        self.fail_next: str | None = None
        self.partial_errors_next = False
        self.no_images_next = False
        self.time_out_next = False
        self.expire_next = False
        self.hold = False
        self.rate_limit_next = 0
        self.retry_after: str | None = "1"
        self.errors_next = 0
        self.error_status = 503
        self.lose_run_reply_next: int | None = None
        self.run_answer_delay = 0.0
        self.max_body = 10 * 1024 * 1024
        self.requests: list[Seen] = []
        self.runs: list[dict[str, Any]] = []
        self.cancels: list[str] = []
        self.s3_gets: list[dict[str, Any]] = []
        self._jobs: dict[str, _Job] = {}
        self._objects: dict[str, bytes] = {}
        self._running = 0
        self._booting = 0
        self._warm_until = 0.0
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._app = Starlette(routes=[
            Route("/v2/{endpoint}/run", self._run, methods=["POST"]),
            Route("/v2/{endpoint}/status/{job_id}", self._status, methods=["GET"]),
            Route("/v2/{endpoint}/cancel/{job_id}", self._cancel, methods=["POST"]),
            Route("/v2/{endpoint}/health", self._health, methods=["GET"]),
            Route("/s3/{key:path}", self._s3, methods=["GET"]),
        ])

    # -- public -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v2"

    def start(self) -> FakeRunPod:
        """Serve (again, on the same port) in a daemon thread."""
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-runpod", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Stop answering (jobs keep their state and go on when started again)."""
        if self._thread is None or self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._halt(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._thread, self._loop = None, None

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status_of(self, job_id: str) -> str | None:
        job = self._jobs.get(job_id)
        return job.status if job else None

    def expire(self, job_id: str) -> None:
        """Forget a job: ``/status`` answers 404 from now on."""
        job = self._jobs.pop(job_id, None)
        if job is not None and job.task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(job.task.cancel)

    def statuses(self, path_part: str) -> list[int]:
        return [seen.status for seen in self.requests if path_part in seen.path]

    # -- server -------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        sock = loopback.bind(self._port)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, lifespan="off", log_config=None, access_log=False)
        self._server = await loopback.start(config, sock)
        for job in self._jobs.values():  # back after stop(): unfinished jobs go on (from the queue)
            if job.status not in FINAL and (job.task is None or job.task.done()):
                job.status = "IN_QUEUE"
                job.task = asyncio.create_task(self._work(job))

    async def _halt(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await loopback.halt(server)
        await loopback.cancel_the_rest()

    async def _gate(self, request: Request) -> Response | None:
        """Auth, then the scripted 429s and 503s; None lets the request through."""
        authorized = request.headers.get("authorization") == f"Bearer {self.api_key}"
        status = 200
        answer: Response | None = None
        if request.path_params.get("endpoint") != self.endpoint_id:
            status, answer = 404, JSONResponse({"error": "endpoint not found"}, 404)
        elif not authorized:
            status, answer = 401, Response("Unauthorized", 401)
        elif self.rate_limit_next > 0:
            self.rate_limit_next -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            status, answer = 429, JSONResponse({"error": "rate limit exceeded"}, 429, headers=headers)
        elif self.errors_next > 0:
            self.errors_next -= 1
            status, answer = self.error_status, Response("upstream connect error", self.error_status)
        self.requests.append(Seen(time.monotonic(), request.method, request.url.path, status, authorized))
        return answer

    def _seen(self, request: Request, status: int) -> None:
        last = self.requests[-1]
        self.requests[-1] = Seen(last.at, last.method, last.path, status, last.authorized)

    async def _run(self, request: Request) -> Response:
        if (denied := await self._gate(request)) is not None:
            return denied
        raw = await request.body()
        if len(raw) > self.max_body:
            self._seen(request, 413)
            return JSONResponse({"error": f"request body too large: {len(raw)} bytes, max 10MB"}, 413)
        body = json.loads(raw)
        self.runs.append(body)
        job = _Job(str(uuid.uuid4()) + "-u1", body.get("input") or {}, body.get("policy") or {})
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._work(job))
        if self.run_answer_delay:
            await asyncio.sleep(self.run_answer_delay)
        if self.lose_run_reply_next is not None:  # taken, but the gateway in front answers an error
            status, self.lose_run_reply_next = self.lose_run_reply_next, None
            self._seen(request, status)
            return Response("upstream request timeout", status)
        return JSONResponse({"id": job.id, "status": "IN_QUEUE"})

    async def _known_job(self, request: Request) -> _Job | Response:
        """The job the path names, or the answer to send instead (refused, or 404 once it expired)."""
        if (denied := await self._gate(request)) is not None:
            return denied
        job = self._jobs.get(request.path_params["job_id"])
        if job is None:
            self._seen(request, 404)
            return JSONResponse({"error": "request does not exist"}, 404)
        return job

    async def _status(self, request: Request) -> Response:
        job = await self._known_job(request)
        if isinstance(job, Response):
            return job
        return JSONResponse(job.body())

    async def _cancel(self, request: Request) -> Response:
        job = await self._known_job(request)
        if isinstance(job, Response):
            return job
        self.cancels.append(job.id)
        if job.status not in FINAL:
            job.status, job.ended = "CANCELLED", time.monotonic()
            if job.task is not None:
                job.task.cancel()
        return JSONResponse({"id": job.id, "status": job.status})

    async def _health(self, request: Request) -> Response:
        if (denied := await self._gate(request)) is not None:
            return denied
        body = _body("health")
        count = lambda *states: sum(1 for j in self._jobs.values() if j.status in states)  # noqa: E731
        body["jobs"].update(completed=count("COMPLETED"), failed=count("FAILED", "TIMED_OUT"),
                            inProgress=count("IN_PROGRESS"), inQueue=count("IN_QUEUE"))
        warm = time.monotonic() < self._warm_until
        body["workers"] = {"running": self._running, "idle": max(self.workers - self._running, 0) if warm else 0}
        return JSONResponse(body)

    async def _s3(self, request: Request) -> Response:
        key = request.path_params["key"]
        self.s3_gets.append({"key": key, "authorization": request.headers.get("authorization"),
                             "signed": "X-Amz-Signature" in request.url.query})
        data = self._objects.get(key)
        if data is None or "X-Amz-Signature" not in request.url.query:
            return Response("<Error><Code>AccessDenied</Code></Error>", 403, media_type="application/xml")
        return Response(data, media_type="image/png")

    # -- the worker -----------------------------------------------------------------------------------

    async def _work(self, job: _Job) -> None:
        try:
            await asyncio.sleep(self.queue_delay)
            while self._running + self._booting >= self.workers:
                await asyncio.sleep(0.01)
            if time.monotonic() >= self._warm_until:
                self._booting += 1  # a worker boots (pulls the image, starts ComfyUI): neither idle nor running
                try:
                    await asyncio.sleep(self.cold_start)
                finally:
                    self._booting -= 1
            self._running += 1
            try:
                job.status, job.started = "IN_PROGRESS", time.monotonic()
                self._warm_until = time.monotonic() + self.idle_timeout
                await self._handle(job)
            finally:
                self._running -= 1
                self._warm_until = time.monotonic() + self.idle_timeout
        except asyncio.CancelledError:
            return
        job.ended = time.monotonic()
        if job.expire:
            self._jobs.pop(job.id, None)

    async def _handle(self, job: _Job) -> None:
        if self.expire_next:
            self.expire_next, job.expire = False, True
            self._jobs.pop(job.id, None)
            return
        if self.time_out_next:
            self.time_out_next = False
            await asyncio.sleep(0.05)
            job.status = "TIMED_OUT"
            return
        while self.hold:
            await asyncio.sleep(0.01)
        if self.fail_next:
            kind, self.fail_next = self.fail_next, None
            failed = _body("status-failed-exception" if kind == "exception" else "status-failed-handler-error")
            job.status, job.error, job.output = "FAILED", failed["error"], failed.get("output")
            return
        problem = _validate(job.input)
        if problem:
            job.status, job.error = "FAILED", problem
            return
        if self.comfy is not None:
            result = await self._run_on_comfy(job)
        else:
            result = await self._run_from_fixtures(job)
        if "error" in result:  # the SDK pops 'error' (FAILED) and leaves the rest as output
            job.status, job.error = "FAILED", result.pop("error")
            job.output = result or None
            return
        job.status, job.output = "COMPLETED", result

    async def _run_from_fixtures(self, job: _Job) -> dict[str, Any]:
        steps = max([n["inputs"].get("steps", 1) for n in job.input["workflow"].values()
                     if isinstance(n, dict) and n.get("class_type") in ("KSampler", "KSamplerAdvanced")] or [1])
        for step in range(1, steps + 1):
            await asyncio.sleep(self.step_time)
            if self.progress:
                job.output = {"progress": f"{step}/{steps}"}  # what progress_update(job, ...) shows
        job.output = None
        return self._result(job, [("ComfyUI_00001_.png", (COMFY_IMAGES / "txt2img_output.png").read_bytes())])

    async def _run_on_comfy(self, job: _Job) -> dict[str, Any]:
        assert self.comfy is not None
        async with httpx.AsyncClient(base_url=self.comfy.url, timeout=30) as http:
            for image in job.input.get("images") or ():
                data = base64.b64decode(image["image"].partition(",")[2] or image["image"])
                answer = await http.post("/upload/image", files={"image": (image["name"], data, "image/png")},
                                         data={"overwrite": "true"})
                if answer.status_code != 200:
                    return {"error": "Failed to upload one or more input images",
                            "details": [f"Error uploading {image['name']}: HTTP {answer.status_code}"]}
            answer = await http.post("/prompt", json={"prompt": job.input["workflow"], "client_id": uuid.uuid4().hex})
            if answer.status_code == 400:
                return {"error": _validation_message(answer.json())}
            prompt_id = answer.json()["prompt_id"]
            while True:
                entry = (await http.get(f"/history/{prompt_id}")).json().get(prompt_id)
                if entry is not None:
                    break
                await asyncio.sleep(0.01)
            status = entry["status"]
            if status.get("status_str") != "success":
                data = next(d for name, d in status["messages"] if name == "execution_error")
                return {"error": "Job processing failed", "details": [
                    f"Workflow execution error: Node Type: {data['node_type']}, Node ID: {data['node_id']}, "
                    f"Message: {data['exception_message'].strip()}"]}
            files = []
            for output in entry["outputs"].values():
                for image in output.get("images", ()):
                    if image.get("type") == "temp":
                        continue
                    files.append((image["filename"], (await http.get("/view", params=image)).content))
        return self._result(job, files)

    def _result(self, job: _Job, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        if self.no_images_next:
            self.no_images_next = False
            return _body("status-completed-no-images")["output"]
        images = []
        for name, data in files:
            if self.output == "s3":
                key = f"bucket/{job.id}/{secrets.token_hex(4)}.png"
                self._objects[key] = data
                url = f"http://127.0.0.1:{self._port}/s3/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=604800&X-Amz-Signature=fake"
                images.append({"filename": name, "type": "s3_url", "data": url})
            elif self.output == "s3_local":
                images.append({"filename": name, "type": "s3_url", "data": f"simulated_uploaded/{secrets.token_hex(4)}.png"})
            else:
                images.append({"filename": name, "type": "base64", "data": base64.b64encode(data).decode()})
        result: dict[str, Any] = {"images": images}
        if self.partial_errors_next:
            self.partial_errors_next = False
            result["errors"] = _body("status-completed-partial-errors")["output"]["errors"]
        return result


def _validate(payload: dict[str, Any]) -> str | None:
    """worker-comfyui's validate_input (error texts from the fixtures)."""
    if "workflow" not in payload:
        return fixture("worker-comfyui/error-missing-workflow")["response"]["handler_return"]["error"]
    images = payload.get("images")
    if images is not None and not all(isinstance(i, dict) and "name" in i and "image" in i for i in images):
        return fixture("worker-comfyui/error-bad-images")["response"]["handler_return"]["error"]
    return None


def _validation_message(body: dict[str, Any]) -> str:
    """How worker-comfyui flattens ComfyUI's 400 (see worker-comfyui/error-validation-400.json)."""
    lines = ["Workflow validation failed:"]
    for node_id, problem in (body.get("node_errors") or {}).items():
        lines.append(f"• Node {node_id} (errors): {problem.get('errors')}")
        lines.append(f"• Node {node_id} (class_type): {problem.get('class_type')}")
    if len(lines) == 1:
        lines.append(f"• {body.get('error', {}).get('message', 'unknown error')}")
    return "\n".join(lines)
