"""The backend over one ComfyUI server (a RunPod pod or a local ComfyUI): submit, follow the run, fetch its images.

Built on :class:`~comfy.backends.client.ComfyClient`; see :mod:`comfy.backends.base` for the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
import uuid
from typing import Any

from comfy import graph as workflows
from comfy.backends import protocol
from comfy.backends.base import BackendHealth, Outcome, Output, RunContext, redact_url
from comfy.backends.client import ComfyClient
from comfy.backends.event_socket import EventStream
from comfy.backends.progress import ProgressTracker
from comfy.errors import ComfyError, JobTimedOut, ServerTimeout
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams
from comfy.jobs.records import Job
from comfy.storage.local import LocalStore

__all__ = ["ComfyBackend", "build_prompt"]


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
