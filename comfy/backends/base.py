"""Where a job runs: the :class:`Backend` protocol and its ComfyUI-server implementation.

The worker owns everything about a job that does not depend on where it runs: the queue, leases,
events, saving outputs, recovery. A backend knows how to *run* one job on one kind of server and hands
back an :class:`Outcome` whose outputs the worker fetches and saves:

    Backend.run(ctx, attach)      build what to send → record the handle on the job (ctx.record) →
                                  submit (ctx.submitted) → follow (ctx.progress / ctx.preview / ctx.status)
                                  → Outcome(handle, outputs, execution_ms, notes)
    Backend.cancel(job)           stop it (delete it from the server's queue, interrupt it, POST /cancel)
    Backend.forget(handle)        the same for a handle the job has left behind (failover, see pool.py)
    Backend.health()              load and device, for routing and the status header; raises when down

The *handle* is what re-attaching needs after a restart and is stored on the job before anything is
submitted wherever the protocol allows: for ComfyUI the ``prompt_id`` and ``client_id`` we choose;
for RunPod the job id RunPod returns (see :mod:`comfy.backends.runpod`). ``job.backend`` names the backend.

Two implementations: :class:`ComfyBackend` here (one ComfyUI server: HTTP + WebSocket, previews,
``/history`` re-attach) and :class:`comfy.backends.runpod.RunPodBackend` (RunPod Serverless).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from comfy import graph as workflows
from comfy.backends import protocol
from comfy.backends.client import ComfyClient
from comfy.backends.event_socket import EventStream
from comfy.backends.progress import ProgressTracker
from comfy.errors import ComfyError, JobTimedOut, ServerTimeout
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams
from comfy.jobs.records import Job
from comfy.storage.local import LocalStore

__all__ = [
    "Backend",
    "BackendHealth",
    "ComfyBackend",
    "Outcome",
    "Output",
    "RunContext",
    "build_prompt",
    "redact_url",
    "required_checkpoints",
]


def redact_url(url: str) -> str:
    """The URL without user:password or query (tokens), for pages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def required_checkpoints(job: Job) -> frozenset[str]:
    """The checkpoint files a job needs: the one it asks for, or every ``ckpt_name`` its workflow names.

    >>> required_checkpoints(Job(id="0" * 16, seq=1, kind="generate", params={"checkpoint": "a.safetensors"}))
    frozenset({'a.safetensors'})
    """
    if job.kind == "generate":
        name = job.params.get("checkpoint")
        return frozenset({name}) if isinstance(name, str) and name else frozenset()
    names = set()
    for node in (job.workflow or {}).values():
        value = (node.get("inputs") or {}).get("ckpt_name") if isinstance(node, dict) else None
        if isinstance(value, str) and value:
            names.add(value)
    return frozenset(names)


@dataclass(frozen=True)
class BackendHealth:
    """What a backend said about itself the last time it answered."""

    gpu: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    #: Work waiting or running there, ours included (ComfyUI's queue; RunPod's jobs in queue + in progress).
    queue_remaining: int | None = None
    version: str | None = None
    #: RunPod Serverless only: its GPU workers and its own job counters.
    workers_idle: int | None = None
    workers_running: int | None = None
    jobs_in_queue: int | None = None
    jobs_in_progress: int | None = None


@dataclass(frozen=True)
class Output:
    """One file a run produced; ``fetch()`` returns its bytes (prefetched, decoded or downloaded)."""

    node_id: str | None
    filename: str
    fetch: Callable[[], Awaitable[bytes]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Outcome:
    """A finished run: its handle, its outputs, the server's execution time and any warnings for the job."""

    handle: str
    outputs: tuple[Output, ...]
    execution_ms: int | None = None
    notes: tuple[str, ...] = ()


class RunContext(Protocol):
    """What the worker gives a backend for one job (it owns the queue, the lease and the bus)."""

    job: Job
    store: LocalStore
    job_timeout: float

    def record(self, **fields: Any) -> Job:
        """Store run details on the job (handle, backend, workflow, note); raises if the lease is lost."""

    def submitted(self) -> None:
        """The job reached the backend: from now on a failure uses up an attempt."""

    def started(self, *, job: Job | None = None, message: str | None = None) -> None:
        """Publish ``started``."""

    def progress(self, progress: float, *, node: str | None = None, step: int | None = None,
                 steps: int | None = None, message: str | None = None) -> None:
        """Publish progress; the stored record is updated at most every few hundred ms."""

    def preview(self, image: bytes, mime: str | None) -> None:
        """Publish a preview image."""

    def status(self, text: str | None) -> None:
        """A waiting state worth showing (``waiting for a GPU worker``), stored as the job's note and node."""


class Backend(Protocol):
    """One place jobs can run; see the module docstring for the life of a run."""

    #: Stable name stored on jobs (``job.backend``) and shown to people: a redacted URL, ``runpod:<id>``.
    name: str
    #: ``comfyui`` or ``runpod``.
    kind: str
    #: Where it is, without credentials, for the status header.
    url: str
    max_in_flight: int

    async def health(self) -> BackendHealth:
        """Load and device; raises :class:`ServerError` when it does not answer."""

    async def refresh_models(self) -> None:
        """Fetch what it has installed again (after start-up or a return from down)."""

    def has_checkpoints(self, names: frozenset[str]) -> bool | None:
        """Whether it has every one of ``names``; None while unknown."""

    async def run(self, ctx: RunContext, *, attach: bool) -> Outcome:
        """Run ``ctx.job`` (or re-attach to its stored handle) to the end; raises a :class:`ComfyError`."""

    async def cancel(self, job: Job) -> None:
        """Stop the job's current run there; quietly nothing when it has ended."""

    async def forget(self, handle: str) -> None:
        """Stop a run the job left there (it runs elsewhere now)."""

    async def aclose(self) -> None: ...


# -- the ComfyUI server -------------------------------------------------------------------------------


async def build_prompt(job: Job, client: ComfyClient, store: LocalStore) -> dict[str, Any]:
    """The API graph to submit for ``job``: template or workflow, parameters bound, images uploaded.

    Raises :class:`WorkflowError` when it cannot run on this server (checked against ``object_info``).
    """
    info = await client.object_info()
    if job.kind == "workflow":
        graph = workflows.parse_workflow(job.workflow or {})
        images = dict(job.params.get("images") or {})
        if images:
            names = {node_id: await _upload(client, store, path) for node_id, path in images.items()}
            graph = workflows.apply_inputs(graph, {(node_id, "image"): name for node_id, name in names.items()})
    else:
        params = GenerationParams.from_dict(job.params)
        graph = workflows.load_template("img2img" if params.init_image else "txt2img")
        if params.init_image:
            params = dataclasses.replace(params, init_image=await _upload(client, store, params.init_image))
        if params.checkpoint is None:
            params = dataclasses.replace(params, checkpoint=workflows.default_checkpoint(info))
        graph = workflows.bind(graph, params)
    workflows.validate(graph, info)
    return graph


async def _upload(client: ComfyClient, store: LocalStore, path: str) -> str:
    data = store.read_input(path)
    # Named by content: the same image uploaded twice is one file on the server.
    name = f"studio_{hashlib.sha256(data).hexdigest()[:16]}.png"
    return await client.upload_image(data, name, overwrite=True)


Prefetch = dict[protocol.OutputRef, "asyncio.Task[bytes]"]


class ComfyBackend:
    """A ComfyUI server (a local one or a RunPod pod) through one :class:`ComfyClient`.

    Submitting: the event socket is taken (opened ahead, see :meth:`ComfyClient.new_events`), the prompt
    id and its client id are stored on the job, then ``POST /prompt``. Outputs are downloaded as soon as
    their node reports them, so the end-of-run signal finds them on their way.
    """

    kind = "comfyui"

    def __init__(self, client: ComfyClient, *, max_in_flight: int = 2) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self.name = self.url = redact_url(client.base_url)
        #: The catalogue as last fetched by :meth:`refresh_models` (kept while the server is down).
        self.last_info: ObjectInfo | None = None
        self._checkpoints: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"ComfyBackend({self.name!r})"

    async def health(self) -> BackendHealth:
        stats, remaining = await asyncio.gather(self.client.system_stats(), self.client.queue_remaining())
        device = (stats.get("devices") or [{}])[0]
        return BackendHealth(
            gpu=device.get("name"), vram_total=device.get("vram_total"), vram_free=device.get("vram_free"),
            queue_remaining=remaining, version=(stats.get("system") or {}).get("comfyui_version"),
        )

    async def refresh_models(self) -> None:
        info = await self.client.object_info(refresh=True)
        self.last_info, self._checkpoints = info, frozenset(info.checkpoints)

    def has_checkpoints(self, names: frozenset[str]) -> bool | None:
        if not names:
            return True
        return None if self._checkpoints is None else names <= self._checkpoints

    async def cancel(self, job: Job) -> None:
        if job.prompt_id:
            await self.client.cancel(job.prompt_id)

    async def forget(self, handle: str) -> None:
        await self.client.cancel(handle)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, ctx: RunContext, *, attach: bool) -> Outcome:
        job = ctx.job
        if attach and job.prompt_id and job.client_id:
            ctx.submitted()
            ctx.started(message="re-attached after a restart")
            return await self._follow(ctx, job, job.workflow or {}, None)
        graph = await build_prompt(job, self.client, ctx.store)
        # The socket comes first (usually opened ahead): its client id is stored with the prompt id
        # before anything is submitted.
        async with self.client.new_events() as stream:
            job = ctx.record(prompt_id=str(uuid.uuid4()), client_id=stream.client_id, backend=self.name,
                             workflow=graph if job.kind == "generate" else job.workflow, note=None)
            ctx.started(job=job)
            return await self._follow(ctx, job, graph, stream)

    async def _follow(self, ctx: RunContext, job: Job, graph: dict[str, Any], stream: EventStream | None) -> Outcome:
        """Submit (given the new prompt's ``stream``) and follow the run; without one, re-attach."""
        assert job.prompt_id and job.client_id
        tracker = ProgressTracker(graph)
        prefetch: Prefetch = {}
        deadline = time.monotonic() + ctx.job_timeout

        def on_event(event: protocol.Event) -> None:
            if isinstance(event, protocol.Preview):
                ctx.preview(event.image, event.mime)
                return
            if isinstance(event, protocol.Executed):
                for ref in event.outputs:
                    if ref.type == "output" and ref not in prefetch:
                        # Start the download now; the end-of-run signal follows within milliseconds.
                        prefetch[ref] = asyncio.create_task(self.client.download(ref))
            if tracker.feed(event):
                snap = tracker.snapshot()
                ctx.progress(snap.progress, node=snap.node, step=snap.step, steps=snap.steps)

        try:
            result = await self._submit_and_follow(ctx, job, graph, on_event, deadline, stream)
        except BaseException:
            for task in prefetch.values():
                task.cancel()
            raise
        outputs = tuple(
            Output(ref.node_id, ref.filename, fetch=lambda ref=ref: self._fetch(ref, prefetch)) for ref in result.outputs
        )
        return Outcome(result.prompt_id, outputs, result.execution_ms)

    async def _submit_and_follow(self, ctx: RunContext, job: Job, graph: dict[str, Any], on_event: Any,
                                 deadline: float, stream: EventStream | None) -> Any:
        assert job.prompt_id and job.client_id
        try:
            if stream is not None:
                await self.client.queue_prompt(graph, client_id=job.client_id, prompt_id=job.prompt_id)
                ctx.submitted()
                self.client.prepare_events()  # the next job's socket, opened while this one runs
            return await self.client.follow(job.prompt_id, job.client_id, on_event=on_event, deadline=deadline,
                                            stream=stream)
        except ServerTimeout as exc:
            if time.monotonic() < deadline:
                raise
            # The job's own limit, not a network hiccup: stop it on the server, do not retry.
            with contextlib.suppress(ComfyError):
                await self.client.cancel(job.prompt_id)
            raise JobTimedOut(ctx.job_timeout) from exc

    async def _fetch(self, ref: protocol.OutputRef, prefetched: Prefetch) -> bytes:
        task = prefetched.get(ref)
        if task is not None:
            try:
                return await task
            except ComfyError:
                pass  # fetch it again below
        return await self.client.download(ref)
