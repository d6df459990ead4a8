"""The worker: takes jobs from the queue, runs them on a ComfyUI server, saves what they make.

It keeps ``max_in_flight`` prompts on the server at once (2 by default): while one runs, the next
is already in ComfyUI's own queue, so the GPU does not idle between jobs. For each job:

    claim → build the graph (upload init images) → record prompt id → open socket → POST /prompt
          → follow events (progress, previews; cancel → interrupt) → /history → download → save → finish

A prompt id is chosen here and stored on the job *before* it is submitted, so a worker that dies at
any point leaves enough to re-attach: :meth:`Worker.recover` follows the prompt through ``/history``,
or submits the job again if the server lost it (bounded by the queue's ``max_attempts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from . import protocol, workflows
from .client import ComfyClient, RunResult
from .errors import (
    ComfyError,
    ExecutionInterrupted,
    JobTimedOut,
    QueueError,
    ServerTimeout,
    ServerUnavailable,
)
from .events import EventBus, JobEvent
from .params import GenerationParams
from .progress import ProgressTracker
from .queue import Job, JobQueue, JobState, owner_alive, worker_id as new_worker_id
from .storage import LocalStore, StoredImage

if TYPE_CHECKING:
    from .s3 import Uploader

__all__ = ["Worker", "build_prompt"]

logger = logging.getLogger(__name__)

Prefetch = dict[protocol.OutputRef, "asyncio.Task[bytes]"]

#: Store progress on the job at most this often (events still reach the bus every step).
PROGRESS_WRITE_INTERVAL = 0.25


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


class Worker:
    """Runs queued jobs on one ComfyUI server; see the module docstring for the steps."""

    def __init__(
        self,
        queue: JobQueue,
        client: ComfyClient,
        store: LocalStore,
        *,
        bus: EventBus | None = None,
        max_in_flight: int = 2,
        lease_seconds: float = 30.0,
        job_timeout: float = 3600.0,
        poll_interval: float = 0.25,
        worker_id: str | None = None,
        uploader: Uploader | None = None,
    ) -> None:
        self.queue = queue
        #: Uploads succeeded jobs' outputs to S3 in the background (None: local files only).
        self.uploader = uploader
        self.client = client
        self.store = store
        self.bus = bus or EventBus()
        self.max_in_flight = max_in_flight
        self.lease_seconds = lease_seconds
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.id = worker_id or new_worker_id()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}
        self._submitted: set[str] = set()  # jobs whose current attempt reached the server
        #: None while the backend answers; otherwise why it does not (shown to users).
        self.backend_down: str | None = None

    # -- control from the service -----------------------------------------------------------------

    def wake(self) -> None:
        """A job was queued in this process: look now instead of at the next poll."""
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        """The job was marked cancel-requested; stop it now if this worker runs it."""
        if job_id in self._cancels:
            self._cancels[job_id].set()

    @property
    def running(self) -> list[str]:
        return list(self._tasks)

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``burst``, until the queue is empty and all is done)."""
        stop = stop or asyncio.Event()
        keeper = asyncio.create_task(self._keep_leases(stop))
        try:
            await self.recover()
            while not stop.is_set():
                if self.backend_down and not await self._probe_backend():
                    await _wait_any(stop, self._wake, timeout=min(10.0, self.poll_interval * 8))
                    continue
                self._fill()
                if burst and not self._tasks and not await asyncio.to_thread(self.queue.pending_ids):
                    break
                self._wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait()),
                           *self._tasks.values()]
                await asyncio.wait(waiters, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters[:2]:
                    waiter.cancel()
        finally:
            keeper.cancel()
            await self._drain(stop.is_set() and not burst)

    def _fill(self) -> None:
        while len(self._tasks) < self.max_in_flight and not self.backend_down:
            job = self.queue.claim(self.id, lease_seconds=self.lease_seconds)
            if job is None:
                return
            self._start(job, attach=False)

    def _start(self, job: Job, *, attach: bool) -> None:
        self._cancels[job.id] = asyncio.Event()
        task = asyncio.create_task(self._run_job(job, attach=attach), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t, job_id=job.id: self._forget(job_id))

    def _forget(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._cancels.pop(job_id, None)
        self._submitted.discard(job_id)
        self._wake.set()

    async def _drain(self, abandon: bool) -> None:
        """On stop, leave running jobs to be re-attached by the next worker (their prompts keep running)."""
        for task in list(self._tasks.values()):
            if abandon:
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not stop.is_set():
            await asyncio.sleep(interval)
            for job_id in list(self._tasks):
                if not self.queue.renew(job_id, self.id, lease_seconds=self.lease_seconds):
                    logger.warning("Lost the lease on job %s; another worker took it over", job_id)
                    self._tasks[job_id].cancel()
            await self._adopt_expired()

    async def _probe_backend(self) -> bool:
        try:
            await self.client.system_stats()
        except ComfyError as exc:
            self.backend_down = str(exc)
            return False
        logger.info("ComfyUI at %s answers again", self.client.base_url)
        self.backend_down = None
        return True

    # -- recovery -------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Take over jobs left running by a dead worker: re-attach to their prompts or resubmit them."""
        for job in self.queue.list(states=[JobState.RUNNING], limit=10_000).jobs:
            dead = owner_alive(job.lease_owner or "") is False
            await self._adopt(job, force=dead)
        await self._adopt_expired()

    async def _adopt_expired(self) -> None:
        for job in self.queue.expired():
            await self._adopt(job, force=False)

    async def _adopt(self, job: Job, *, force: bool) -> None:
        if job.id in self._tasks or job.lease_owner == self.id:
            return
        taken = self.queue.take_over(job.id, self.id, lease_seconds=self.lease_seconds, force=force)
        if taken is None:
            return
        logger.info("Re-attaching job %s (prompt %s) left by %s", taken.id, taken.prompt_id, job.lease_owner)
        if taken.prompt_id:
            self._start(taken, attach=True)
        else:  # it died before submitting anything
            self.queue.requeue(taken.id, self.id, "re-queued after a worker restart")
            self._wake.set()

    # -- one job ----------------------------------------------------------------------------------

    async def _run_job(self, job: Job, *, attach: bool) -> None:
        try:
            result, prefetch = await self._execute(job, attach=attach)
            executed = time.monotonic()
            stored = await self._save(job, result, prefetch)
            download_s = time.monotonic() - executed
            finished = self.queue.finish(job.id, self.id, outputs=[s.to_dict() for s in stored])
            self._schedule_upload(finished)
            timings = {
                "queue_wait_s": max((finished.started_at or finished.queued_at) - finished.queued_at, 0.0),
                "execution_s": (result.execution_ms or 0) / 1000,
                "download_s": download_s,
            }
            self._publish(job.id, "succeeded", progress=1.0, job=finished, timings=timings)
        except asyncio.CancelledError:
            raise
        except ExecutionInterrupted as exc:
            if self._cancel_requested(job.id):
                self._finish_cancelled(job.id)
            else:
                self._fail(job.id, exc, retry=False)
        except ComfyError as exc:
            self._on_error(job, exc)
        except Exception as exc:  # a bug must fail one job, not kill the worker
            logger.exception("Job %s failed unexpectedly", job.id)
            self._fail(job.id, exc, retry=False)

    def _on_error(self, job: Job, exc: ComfyError) -> None:
        if self._cancel_requested(job.id):
            self._finish_cancelled(job.id)
            return
        if isinstance(exc, ServerUnavailable):
            self.backend_down = str(exc)
            logger.warning("ComfyUI at %s is unreachable: %s", self.client.base_url, exc)
            if job.id not in self._submitted:
                # Nothing reached the server: the job waits for it without using up an attempt.
                released = self.queue.release(job.id, self.id, f"waiting for the backend: {exc}")
                self._publish(job.id, "retrying", job=released, message=released.note, error_code=exc.code)
                return
        self._fail(job.id, exc, retry=exc.retryable)

    async def _execute(self, job: Job, *, attach: bool) -> tuple[RunResult, Prefetch]:
        if attach and job.prompt_id and job.client_id:
            graph = job.workflow or {}
            self._submitted.add(job.id)
            self._publish(job.id, "started", message="re-attached after a restart")
        else:
            graph = await build_prompt(job, self.client, self.store)
            job = self.queue.update(job.id, self.id, prompt_id=str(uuid.uuid4()), client_id=uuid.uuid4().hex,
                                    backend=self.client.base_url, workflow=graph if job.kind == "generate" else job.workflow,
                                    note=None)
            self._publish(job.id, "started", job=job)
        return await self._follow(job, graph, submit=not attach)

    async def _follow(self, job: Job, graph: dict[str, Any], *, submit: bool) -> tuple[RunResult, Prefetch]:
        assert job.prompt_id and job.client_id
        tracker = ProgressTracker(graph)
        prefetch: Prefetch = {}
        last_write = 0.0
        deadline = time.monotonic() + self.job_timeout

        def on_event(event: protocol.Event) -> None:
            nonlocal last_write
            if isinstance(event, protocol.Preview):
                self._publish(job.id, "preview", preview=event.image, preview_mime=event.mime)
                return
            if isinstance(event, protocol.Executed):
                for ref in event.outputs:
                    if ref.type == "output" and ref not in prefetch:
                        # Start the download now; the end-of-run signal follows within milliseconds.
                        prefetch[ref] = asyncio.create_task(self.client.download(ref))
            if tracker.feed(event):
                snap = tracker.snapshot()
                self._publish(job.id, "progress", progress=snap.progress, node=snap.node, step=snap.step,
                              steps=snap.steps)
                now = time.monotonic()
                if now - last_write >= PROGRESS_WRITE_INTERVAL or snap.step == snap.steps:
                    last_write = now
                    self.queue.update(job.id, self.id, progress=snap.progress, node=snap.node, step=snap.step,
                                      steps=snap.steps)

        cancel = self._cancels.get(job.id) or asyncio.Event()
        run = asyncio.create_task(self._submit_and_follow(job, graph, on_event, deadline, submit))
        watch = asyncio.create_task(self._watch_cancel(job, cancel))
        try:
            done, _ = await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
            if run not in done:  # cancelled: the server was told; wait briefly for it to confirm
                with contextlib.suppress(asyncio.TimeoutError, ComfyError):
                    await asyncio.wait_for(asyncio.shield(run), timeout=5.0)
                raise ExecutionInterrupted("Cancelled.")
            return run.result(), prefetch
        finally:
            for task in (run, watch):
                task.cancel()
            if not run.done() or run.cancelled() or run.exception() is not None:
                for task in prefetch.values():
                    task.cancel()

    async def _submit_and_follow(self, job: Job, graph: dict[str, Any], on_event: Any, deadline: float,
                                 submit: bool) -> RunResult:
        assert job.prompt_id and job.client_id
        try:
            if not submit:
                return await self.client.follow(job.prompt_id, job.client_id, on_event=on_event, deadline=deadline)
            async with self.client.events(job.client_id) as stream:
                await self.client.queue_prompt(graph, client_id=job.client_id, prompt_id=job.prompt_id)
                self._submitted.add(job.id)
                return await self.client.follow(job.prompt_id, job.client_id, on_event=on_event, deadline=deadline,
                                                stream=stream)
        except ServerTimeout as exc:
            if time.monotonic() < deadline:
                raise
            # The job's own limit, not a network hiccup: stop it on the server, do not retry.
            with contextlib.suppress(ComfyError):
                await self.client.cancel(job.prompt_id)
            raise JobTimedOut(self.job_timeout) from exc

    async def _watch_cancel(self, job: Job, signal: asyncio.Event) -> None:
        """Return once the job is cancelled (in this process or another), after telling the server."""
        while not signal.is_set():
            if self._cancel_requested(job.id):
                break
            await _wait_any(signal, timeout=max(self.poll_interval * 2, 0.1))
        assert job.prompt_id
        with contextlib.suppress(ComfyError):
            await self.client.cancel(job.prompt_id)

    async def _save(self, job: Job, result: RunResult, prefetched: Prefetch) -> list[StoredImage]:
        current = self.queue.get(job.id)
        metadata = {
            "job_id": job.id, "kind": job.kind, "params": current.params, "prompt_id": result.prompt_id,
            "backend": self.client.base_url, "execution_ms": result.execution_ms,
        }

        async def fetch(ref: protocol.OutputRef) -> bytes:
            task = prefetched.get(ref)
            if task is not None:
                try:
                    return await task
                except ComfyError:
                    pass  # fetch it again below
            return await self.client.download(ref)

        blobs = await asyncio.gather(*(fetch(ref) for ref in result.outputs))
        return [
            self.store.save_output(job.id, index, data, metadata=metadata, node_id=ref.node_id, source=ref.filename)
            for index, (ref, data) in enumerate(zip(result.outputs, blobs))
        ]

    # -- bookkeeping --------------------------------------------------------------------------------

    def _schedule_upload(self, job: Job) -> None:
        if self.uploader is None or job.state is not JobState.SUCCEEDED:
            return
        try:
            self.uploader.schedule(job)
        except Exception:  # the job succeeded: never fail it here; the uploader's start-up scan catches it up
            logger.exception("Could not schedule the upload of job %s; it is retried at the next start", job.id)

    def _cancel_requested(self, job_id: str) -> bool:
        try:
            return self.queue.get(job_id).cancel_requested
        except QueueError:
            return False

    def _finish_cancelled(self, job_id: str) -> None:
        job = self.queue.mark_cancelled(job_id, self.id)
        self._publish(job_id, "cancelled", job=job, message="Cancelled.")

    def _fail(self, job_id: str, exc: BaseException, *, retry: bool) -> None:
        code = getattr(exc, "code", "internal_error")
        message = str(exc) if isinstance(exc, ComfyError) else f"Internal error: {type(exc).__name__}: {exc}"
        try:
            job = self.queue.fail(job_id, self.id, code=code, message=message, retry=retry)
        except QueueError as lost:
            logger.warning("Could not record the failure of job %s: %s", job_id, lost)
            return
        if job.state is JobState.QUEUED:
            logger.info("Job %s will be retried: %s", job_id, message)
            self._publish(job_id, "retrying", job=job, message=message, error_code=code)
        else:
            logger.info("Job %s failed: %s", job_id, message)
            self._publish(job_id, "failed", job=job, message=message, error_code=code)

    def _publish(self, job_id: str, kind: str, *, job: Job | None = None, **fields: Any) -> None:
        self.bus.publish(JobEvent(job_id, kind, job=job.to_dict() if job else None, **fields))  # type: ignore[arg-type]


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()

