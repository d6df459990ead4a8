"""The backend over one ComfyUI server (a RunPod pod or a local ComfyUI): submit, follow the run, fetch its images.

Built on :class:`~comfy.backends.client.ComfyClient`; see :mod:`comfy.backends.base` for the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from typing import Any

import httpx

from comfy import graph as workflows
from comfy.backends import protocol
from comfy.backends.base import BackendHealth, Outcome, Output, RunContext, redact_url
from comfy.backends.client import ComfyClient
from comfy.backends.event_socket import EventStream
from comfy.backends.progress import ProgressTracker
from comfy.errors import (
    ComfyError,
    JobTimedOut,
    PromptRejected,
    PromptUnconfirmed,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
)
from comfy.graph.object_info import ObjectInfo
from comfy.jobs.records import Job
from comfy.storage.local import LocalStore
from comfy.graph.toolbox import Toolbox, prepare_job

__all__ = ["WAITING_ON_BACKEND", "ComfyBackend", "build_prompt"]

logger = logging.getLogger(__name__)

#: The note of a job whose prompt waits in ComfyUI's own queue (behind another prompt), not running yet.
WAITING_ON_BACKEND = "waiting on the backend: queued on ComfyUI behind another prompt"
#: After an answer to POST /prompt that may have come after ComfyUI took the prompt (a timeout, a reset, a
#: proxy's 5xx or page), the waits between looks for it in /queue and /history before it is sent again.
#: ComfyUI validates a prompt before it queues it, and finishes a request whose client has gone.
LATE_PROMPT_LOOKS = (0.0, 0.5, 1.0, 2.0, 4.0)


async def build_prompt(job: Job, client: ComfyClient, store: LocalStore,
                       toolbox: Toolbox | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The API graph to submit for ``job`` and what its PNGs record of the toolbox (None for a workflow job).

    A generate job's graph is built by :func:`comfy.graph.toolbox.prepare_job` (LoRAs, VAE, hires, inpainting,
    outpainting, styles, wildcards, family), its images uploaded; a workflow job's images are uploaded
    into it. Raises :class:`WorkflowError` when it cannot run on this server (checked against ``object_info``).
    """
    info = await client.object_info()
    if job.kind == "workflow":
        graph = workflows.parse_workflow(job.workflow or {})
        images = dict(job.params.get("images") or {})
        if images:
            names = {node_id: await _upload(client, store, path) for node_id, path in images.items()}
            graph = workflows.apply_inputs(graph, {(node_id, "image"): name for node_id, name in names.items()})
        workflows.validate(graph, info)
        return graph, None
    ready, graph = await prepare_job(job.params, toolbox or Toolbox(), info, read_input=store.read_input,
                                     upload=lambda path: _upload(client, store, path),
                                     metadata_of=client.checkpoint_metadata)
    return graph, ready.record()


async def _upload(client: ComfyClient, store: LocalStore, path: str) -> str:
    data = store.read_input(path)
    # Named by content: the same image uploaded twice is one file on the server.
    name = f"studio_{hashlib.sha256(data).hexdigest()[:16]}.png"
    return await client.upload_image(data, name, overwrite=True)


Prefetch = dict[protocol.OutputRef, "asyncio.Task[bytes]"]


class ComfyBackend:
    """A ComfyUI server (a local one or a RunPod pod) through one :class:`ComfyClient`.

    Submitting: the event socket is taken (opened ahead, see :meth:`ComfyClient.new_events`), the prompt
    id (ours, a uuid4) and its client id are stored on the job, then ``POST /prompt``. When its answer is
    lost (a timeout, a reset, a 5xx) the prompt may be queued all the same: the server is asked for that
    id (``/history``, ``/queue``) and a prompt found there is followed; it is resent only when provably
    absent, and when the server cannot be asked the handle stays on the job for the next look. Outputs
    are downloaded as soon as their node reports them, so the end-of-run signal finds them on their way.

    A prompt queued behind another of ours shows as waiting on the backend until it starts.
    """

    kind = "comfyui"

    def __init__(self, client: ComfyClient, *, max_in_flight: int = 2) -> None:
        self.client = client
        self.max_in_flight = max_in_flight
        self.name = self.url = redact_url(client.base_url)
        #: The catalogue as last fetched by :meth:`refresh_models` (kept while the server is down).
        self.last_info: ObjectInfo | None = None
        self._checkpoints: frozenset[str] | None = None
        #: Our prompts submitted here and not yet ended, oldest first: a newer one waits behind them.
        self._in_flight: list[str] = []
        self._submitting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

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

    async def cancel(self, job: Job) -> bool:
        return bool(job.prompt_id) and await self.client.cancel(job.prompt_id)  # type: ignore[arg-type]

    async def forget(self, handle: str) -> None:
        await self.client.cancel(handle)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, ctx: RunContext, *, attach: bool) -> Outcome:
        job = ctx.job
        kept = bool(job.prompt_id and job.client_id) and (attach or job.backend == self.name)
        # After a restart, follow the run (it raises PromptLost if the server lost it); after an outage the
        # job waited out, look first: a run still here, or in the history, is followed instead of sent again.
        if kept and not attach:
            try:
                kept = await self.client.locate(job.prompt_id or "") is not None
            except ServerError:
                ctx.submitted()  # still no answer: the run may be there, so the job keeps its handle
                raise
        if kept:
            ctx.submitted()
            ctx.started(message="re-attached after a restart" if attach else "re-attached: the backend is back")
            self._in_flight.append(job.prompt_id or "")
            return await self._follow(ctx, job, job.workflow or {}, None, waiting=False)
        async with contextlib.AsyncExitStack() as stack:
            async with self._submit_lock():  # FIFO: prompts reach ComfyUI in the order their jobs were claimed
                graph, record = await build_prompt(job, self.client, ctx.files, getattr(ctx, "toolbox", None))
                # The socket comes first (usually opened ahead): its client id is stored with the prompt id
                # before anything is submitted.
                stream = await stack.enter_async_context(self.client.new_events())
                job = await ctx.record(prompt_id=str(uuid.uuid4()), client_id=stream.client_id, backend=self.name,
                                       workflow=graph if job.kind == "generate" else job.workflow, note=None)
                ctx.started(job=job)
                await self._submit(ctx, job, graph)
                # ComfyUI runs one prompt at a time: one sent behind another of ours waits in its queue.
                waiting = bool(self._in_flight)
                self._in_flight.append(job.prompt_id or "")
            self.client.prepare_events()  # the next job's socket, opened while this one runs
            outcome = await self._follow(ctx, job, graph, stream, waiting=waiting)
            return dataclasses.replace(outcome, record=record)

    def _submit_lock(self) -> asyncio.Lock:
        """Held from building a prompt to its POST; fair (FIFO). One per event loop (a backend may outlive one)."""
        loop = asyncio.get_running_loop()
        if self._submitting is None or self._submitting[0] is not loop:
            self._submitting = (loop, asyncio.Lock())
        return self._submitting[1]

    async def _follow(self, ctx: RunContext, job: Job, graph: dict[str, Any], stream: EventStream | None, *,
                      waiting: bool) -> Outcome:
        """Follow a submitted prompt (on the ``stream`` it was submitted with; without one, re-attach)."""
        assert job.prompt_id and job.client_id
        tracker = ProgressTracker(graph)
        prefetch: Prefetch = {}
        deadline = time.monotonic() + ctx.job_timeout
        shown = [False]  # "waiting on the backend", until the run's first event

        async def on_event(event: protocol.Event) -> None:
            if shown[0] and getattr(event, "prompt_id", None) == job.prompt_id:
                shown[0] = False
                await ctx.status(None)
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
            if waiting:
                shown[0] = True
                await ctx.status(WAITING_ON_BACKEND)
            result = await self._until_done(ctx, job, on_event, deadline, stream)
        except BaseException:
            for task in prefetch.values():
                task.cancel()
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._in_flight.remove(job.prompt_id or "")
        outputs = tuple(
            Output(ref.node_id, ref.filename, fetch=lambda ref=ref: self._fetch(ref, prefetch)) for ref in result.outputs
        )
        return Outcome(result.prompt_id, outputs, result.execution_ms)

    async def _until_done(self, ctx: RunContext, job: Job, on_event: Any, deadline: float,
                          stream: EventStream | None) -> Any:
        assert job.prompt_id and job.client_id
        try:
            return await self.client.follow(job.prompt_id, job.client_id, on_event=on_event, deadline=deadline,
                                            stream=stream)
        except ServerTimeout as exc:
            if time.monotonic() < deadline:
                raise
            # The job's own limit, not a network hiccup: stop it on the server, do not retry.
            with contextlib.suppress(ComfyError):
                await self.client.cancel(job.prompt_id)
            raise JobTimedOut(ctx.job_timeout) from exc

    async def _submit(self, ctx: RunContext, job: Job, graph: dict[str, Any]) -> None:
        """``POST /prompt``; on an answer lost on the way, find out whether ComfyUI queued it anyway.

        Raises :class:`PromptUnconfirmed` when the prompt may be there but did not show up: the job is sent
        again under a new id, and the worker stops this one should it appear later.
        """
        assert job.prompt_id and job.client_id
        try:
            await self.client.queue_prompt(graph, client_id=job.client_id, prompt_id=job.prompt_id)
        except PromptRejected:
            raise
        except ServerError as lost:
            if not _may_have_arrived(lost):
                raise  # nothing reached ComfyUI (refused, or refused by a proxy): sending it again is safe
            try:
                where = await self._look_for(job.prompt_id)
            except ServerError as unknown:
                # Queued or not, nobody can tell now: the job keeps its handle and looks again later.
                ctx.submitted()
                raise unknown from lost
            if where is None:
                raise PromptUnconfirmed(job.prompt_id, str(lost), sum(LATE_PROMPT_LOOKS)) from lost
            logger.info("The answer to POST /prompt for %s was lost (%s), but ComfyUI has it (%s): following it",
                        job.prompt_id, lost, where)
        ctx.submitted()

    async def _look_for(self, prompt_id: str) -> str | None:
        """Where ComfyUI has ``prompt_id``, looking again with growing waits; None if it never showed up."""
        for wait in LATE_PROMPT_LOOKS:
            await asyncio.sleep(wait)
            where = await self.client.locate(prompt_id)
            if where is not None:
                return where
        return None

    async def _fetch(self, ref: protocol.OutputRef, prefetched: Prefetch) -> bytes:
        task = prefetched.get(ref)
        if task is not None:
            try:
                return await task
            except ComfyError:
                pass  # fetch it again below
        return await self.client.download(ref)


def _may_have_arrived(error: ServerError) -> bool:
    """Whether a failed ``POST /prompt`` may have reached ComfyUI: all but a connection never made and a
    proxy's refusal of our credentials (those sent nothing on)."""
    cause = error.__cause__
    if isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return False
    return not (isinstance(error, ServerUnavailable) and error.status in (401, 403))
