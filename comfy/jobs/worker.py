"""The worker: takes jobs from the queue, runs them on a pool of backends, saves what they make.

Each backend keeps up to its ``max_in_flight`` jobs at once (2 by default for a ComfyUI server: while
one runs, the next is already in ComfyUI's own queue, so the GPU does not idle between jobs). For each job:

    claim (a job some free backend can run) → choose the least-loaded backend that has its checkpoint
          → backend.run: build → record handle → submit → follow (progress, previews; cancel → backend)
          → fetch outputs → save → finish

Where a job runs is the backend's business (:mod:`comfy.backends.base`, :mod:`comfy.backends.runpod`); which
backend, and which are up, is the pool's (:mod:`comfy.backends.pool`). The worker keeps the rest: leases,
events, saving, retries and recovery. A backend stores its handle on the job *before* it submits where
the protocol allows, so a worker that dies at any point leaves enough to re-attach: :meth:`Worker.recover`
follows the run again on the backend the job names, or submits the job again if that backend lost it
(bounded by the queue's ``max_attempts``). A job whose task ended without resolving it (a queue error in
finish, fail or release) is taken up the same way once its lease expires, by this worker too.

Handing a job back is bounded. A backend that *answers* and refuses what the job needs (a 5xx, an event
WebSocket refused with an HTTP status) uses an attempt, so the job fails with that sentence after
``max_attempts``. A backend that does not answer uses none: the job goes back to the queue (keeping its
run's handle when the run may be there) and waits while the pool probes the backend with backoff. When
it answers again the job looks for its run there before it submits anything.

Queue calls go through the async :class:`~comfy.jobs.store.JobStore` (diskcache in a thread, or Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from comfy.backends.base import Backend, Outcome
from comfy.backends.client import ComfyClient
from comfy.backends.comfyui import ComfyBackend, build_prompt
from comfy.graph.toolbox import Toolbox, split_job_params
from comfy.backends.pool import Pool
from comfy.errors import (
    ComfyError,
    ExecutionInterrupted,
    PromptUnconfirmed,
    QueueError,
    QueueUnavailable,
    ServerTimeout,
    ServerUnavailable,
)
from comfy.jobs.events import EventBus, JobEvent
from comfy.jobs.leases import owner_alive
from comfy.jobs.leases import worker_id as new_worker_id
from comfy.jobs.records import Job, JobState
from comfy.jobs.store import JobStore
from comfy.storage.local import LocalStore, StoredImage

if TYPE_CHECKING:
    from comfy.storage.uploader import Uploader

__all__ = ["Worker", "build_prompt"]

logger = logging.getLogger(__name__)

#: Store progress on the job at most this often (events still reach the bus every step).
PROGRESS_WRITE_INTERVAL = 0.25
#: How long a job's end is retried while the queue's Redis cannot be reached (a restart); then its lease decides.
STORE_RETRY_SECONDS = 600.0
#: How often the notes of jobs that wait for a backend are brought up to date, and how many of them.
NOTE_INTERVAL = 1.0
NOTE_SCAN = 20
#: How long telling a failing backend to drop a job's run may take before it is left as an orphan.
FORGET_TIMEOUT = 2.0
#: How long a submission whose answer was lost, and that did not show up, is watched for and stopped if it
#: does (the pool looks every few seconds while it has such runs).
LATE_RUN_LINGER = 600.0
#: Errors after which the backend has no run left to stop (it restarted, or RunPod expired it).
_GONE = frozenset({"prompt_lost", "run_expired"})


class _Context:
    """What a backend may do to the job it runs (see :class:`comfy.backends.base.RunContext`)."""

    def __init__(self, worker: Worker, job: Job) -> None:
        self.job = job
        self.files = worker.files
        self.job_timeout = worker.job_timeout
        self.toolbox = worker.toolbox
        self._worker = worker
        self._last_write = 0.0
        self._writing: asyncio.Future[Any] | None = None

    async def record(self, **fields: Any) -> Job:
        return await self._worker.store.update(self.job.id, self._worker.id, **fields)

    def submitted(self) -> None:
        self._worker._submitted.add(self.job.id)

    def started(self, *, job: Job | None = None, message: str | None = None) -> None:
        self._worker._publish(self.job.id, "started", job=job, message=message)

    def progress(self, progress: float, *, node: str | None = None, step: int | None = None,
                 steps: int | None = None, message: str | None = None) -> None:
        worker = self._worker
        worker._publish(self.job.id, "progress", progress=progress, node=node, step=step, steps=steps, message=message)
        now = time.monotonic()
        if (now - self._last_write >= PROGRESS_WRITE_INTERVAL or step == steps) and self._writing is None:
            self._last_write = now
            # One at a time (a write skipped while one is on its way: the next carries the news).
            self._writing = asyncio.ensure_future(
                worker.store.update(self.job.id, worker.id, progress=progress, node=node, step=step, steps=steps))
            self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Future[Any]) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:  # a lost lease, a locked database: not fatal
            logger.debug("Progress of job %s not stored: %s", self.job.id, task.exception())

    def preview(self, image: bytes, mime: str | None) -> None:
        self._worker._publish(self.job.id, "preview", preview=image, preview_mime=mime)

    async def status(self, text: str | None) -> None:
        job = await self._worker.store.update(self.job.id, self._worker.id, note=text, node=text)
        if text:
            self._worker._publish(self.job.id, "progress", node=text, message=text, job=job)


class Worker:
    """Runs queued jobs on a pool of backends; see the module docstring for the steps.

    ``backends`` is a :class:`Pool`, a list of backends, one backend, or (as before pools) one
    :class:`ComfyClient`, which becomes a pool of one with ``max_in_flight`` slots.
    """

    def __init__(
        self,
        store: JobStore,
        backends: Pool | Sequence[Backend] | Backend | ComfyClient,
        files: LocalStore,
        *,
        bus: EventBus | None = None,
        max_in_flight: int = 2,
        lease_seconds: float = 30.0,
        job_timeout: float = 3600.0,
        poll_interval: float = 0.25,
        worker_id: str | None = None,
        uploader: Uploader | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.store = store
        #: Where generate jobs' styles and wildcards are read from (the shipped ones by default).
        self.toolbox = toolbox or Toolbox()
        #: Uploads succeeded jobs' outputs to S3 in the background (None: local files only).
        self.uploader = uploader
        self.pool = _as_pool(backends, max_in_flight)
        #: The first ComfyUI server's client (None when the pool has none).
        self.client: ComfyClient | None = next(
            (b.client for b in self.pool.backends if isinstance(b, ComfyBackend)), None)
        self.files = files
        self.bus = bus or EventBus()
        self.lease_seconds = lease_seconds
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self.id = worker_id or new_worker_id()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._where: dict[str, Backend] = {}
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}
        self._submitted: set[str] = set()  # jobs whose current attempt reached the backend
        self._next_note = 0.0

    @property
    def max_in_flight(self) -> int:
        """Jobs this worker runs at once at most: every backend's slots together."""
        return sum(b.max_in_flight for b in self.pool.backends)

    @property
    def backend_down(self) -> str | None:
        """None while some backend answers; otherwise why none does (shown to users)."""
        return self.pool.down_reason()

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

    def running_on(self, backend: Backend) -> list[str]:
        """Ids of the jobs this worker runs on ``backend`` now."""
        return [job_id for job_id, where in self._where.items() if where is backend]

    # -- the loop -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, *, burst: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``burst``, until the queue is empty and all is done)."""
        stop = stop or asyncio.Event()
        self.pool.probe_min = min(self.pool.probe_min, max(self.poll_interval * 8, 0.05))
        keeper = asyncio.create_task(self._keep_leases(stop))
        try:
            if not self.pool.single:
                await self.pool.check_all()
            while not stop.is_set():  # the queue may be unreachable at start (Redis restarting): wait for it
                try:
                    await self.recover()
                    break
                except QueueUnavailable as exc:
                    logger.warning("Waiting for the queue before taking jobs: %s", exc)
                    await _wait_any(stop, timeout=1.0)
            while not stop.is_set():
                self.pool.tick(self._wake.set)
                try:
                    await self._fill()
                except QueueError as exc:  # e.g. the database stayed locked: try again at the next turn
                    logger.warning("Could not take jobs from the queue: %s", exc)
                if burst and not self._tasks and not await self.store.pending_ids():
                    break
                self._wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait()),
                           *self._tasks.values()]
                timeout = min(self.poll_interval, max(self.pool.next_check_in(), 0.01))
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters[:2]:
                    waiter.cancel()
        finally:
            keeper.cancel()
            await self._drain(stop.is_set() and not burst)
            await self.pool.aclose()

    async def _fill(self) -> None:
        while free := self.pool.free():
            if self.pool.single:
                job = await self.store.claim(self.id, lease_seconds=self.lease_seconds)
            else:  # can_place only reads the pool (no I/O), so it may run in the queue's thread
                job = await self.store.claim_matching(self.id, lease_seconds=self.lease_seconds,
                                                      accept=lambda job, free=free: self.pool.can_place(job, free))
            if job is None:
                break
            # The pool may have moved while the claim ran; what is still free must still be able to take the job
            # (else a backend lacking its checkpoint would get it), or the backends it was accepted for are kept.
            still = [b for b in free if b in self.pool.free()]
            free = still if still and self.pool.can_place(job, still) else free
            self._start(job, self.pool.choose(job, free), attach=False)
        if not (self.pool.single and self.pool.down_reason() is None) and time.monotonic() >= self._next_note:
            self._next_note = time.monotonic() + NOTE_INTERVAL
            await self._note_waiting()

    async def _note_waiting(self) -> None:
        """Say why the first queued jobs wait, when it is a backend's absence (not just a busy pool)."""
        for job_id in (await self.store.pending_ids())[:NOTE_SCAN]:
            try:
                job = await self.store.get(job_id)
            except QueueError:
                continue
            reason = self.pool.waiting_reason(job)
            if reason and reason != job.note and job.state is JobState.QUEUED:
                await self.store.update(job.id, note=reason)

    def _start(self, job: Job, backend: Backend, *, attach: bool) -> None:
        left = self.pool.find(job.backend) if job.prompt_id and not attach else None
        if left is not None and left is not backend:
            # It kept the handle of a run on a backend that went away, and now runs elsewhere: stop that one.
            self.pool.add_orphan(left, job.prompt_id or "")
        self._cancels[job.id] = asyncio.Event()
        self._where[job.id] = backend
        self.pool.acquire(backend)
        task = asyncio.create_task(self._run_job(job, backend, attach=attach), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda done, job_id=job.id, backend=backend: self._forget(job_id, done, backend))

    def _forget(self, job_id: str, task: asyncio.Task[None], backend: Backend) -> None:
        self.pool.release(backend)
        # A job requeued by its task may be claimed again before that task's callback runs: the entries
        # are the new run's then, and stay (else its lease would no longer be renewed).
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
            self._cancels.pop(job_id, None)
            self._submitted.discard(job_id)
            self._where.pop(job_id, None)
        self._wake.set()

    async def _drain(self, abandon: bool) -> None:
        """On stop, leave running jobs to be re-attached by the next worker (their runs keep going)."""
        for task in list(self._tasks.values()):
            if abandon:
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        interval = max(self.lease_seconds / 3, 0.05)
        while not stop.is_set():
            await asyncio.sleep(interval)
            try:
                for job_id, task in list(self._tasks.items()):
                    if not await self.store.renew(job_id, self.id, lease_seconds=self.lease_seconds):
                        logger.warning("Lost the lease on job %s; another worker took it over", job_id)
                        task.cancel()
                await self._adopt_expired()
            except QueueError as exc:  # a locked database for a moment must not end the renewals
                logger.warning("Could not renew leases: %s", exc)

    # -- recovery -------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Take over jobs left running by a dead worker: re-attach to their runs or resubmit them."""
        page = await self.store.list(states=[JobState.RUNNING], limit=10_000)
        for job in page.jobs:
            dead = owner_alive(job.lease_owner or "") is False
            await self._adopt(job, force=dead)
        await self._adopt_expired()

    async def _adopt_expired(self) -> None:
        for job in await self.store.expired():
            await self._adopt(job, force=False)

    async def _adopt(self, job: Job, *, force: bool) -> None:
        # Our own job too once its lease expired: its task ended without resolving it (a queue error in
        # finish, fail or release) and nothing else would ever take it up. A live task keeps its job.
        if job.id in self._tasks:
            return
        taken = await self.store.take_over(job.id, self.id, lease_seconds=self.lease_seconds, force=force)
        if taken is None or taken.id in self._tasks:
            return
        backend = self.pool.backends[0] if self.pool.single else self.pool.find(taken.backend)
        logger.info("Re-attaching job %s (run %s on %s) left by %s", taken.id, taken.prompt_id, taken.backend,
                    job.lease_owner)
        if taken.prompt_id and backend is not None:
            self._start(taken, backend, attach=True)
        else:  # it died before submitting anything, or its backend is no longer configured
            reason = "re-queued after a worker restart" if backend is not None or not taken.backend else (
                f"re-queued after a worker restart: its backend {taken.backend} is no longer configured")
            await self.store.requeue(taken.id, self.id, reason)
            self._wake.set()

    # -- one job ----------------------------------------------------------------------------------

    async def _run_job(self, job: Job, backend: Backend, *, attach: bool) -> None:
        try:
            outcome = await self._execute(job, backend, attach=attach)
            executed = time.monotonic()
            stored = await self._save(job, backend, outcome)
            download_s = time.monotonic() - executed
            if outcome.notes:
                await _stored(lambda: self.store.update(job.id, self.id, note=" ".join(outcome.notes)))
            finished = await _stored(lambda: self.store.finish(job.id, self.id, outputs=[s.to_dict() for s in stored]))
            self._schedule_upload(finished)
            timings = {
                "queue_wait_s": max((finished.started_at or finished.queued_at) - finished.queued_at, 0.0),
                "execution_s": (outcome.execution_ms or 0) / 1000,
                "download_s": download_s,
            }
            self._publish(job.id, "succeeded", progress=1.0, job=finished, timings=timings,
                          message=finished.note if outcome.notes else None)
        except asyncio.CancelledError:
            raise
        except ExecutionInterrupted as exc:
            if await self._cancel_requested(job.id):
                await self._finish_cancelled(job.id)
            else:
                await self._fail(job.id, exc, retry=False)
        except QueueError as exc:  # the queue (not the backend) failed: the run may go on; never resubmit it
            logger.warning("Job %s could not be recorded (%s); it is re-attached to its run once its lease runs out",
                           job.id, exc)
        except ComfyError as exc:
            await self._on_error(job, backend, exc)
        except Exception as exc:  # a bug must fail one job, not kill the worker
            logger.exception("Job %s failed unexpectedly", job.id)
            await self._fail(job.id, exc, retry=False)

    async def _on_error(self, job: Job, backend: Backend, exc: ComfyError) -> None:
        if isinstance(exc, PromptUnconfirmed):  # it may arrive after all: stop it if it does
            self.pool.add_orphan(backend, exc.prompt_id, linger=LATE_RUN_LINGER)
        if await self._cancel_requested(job.id):
            await self._finish_cancelled(job.id)
            return
        submitted = job.id in self._submitted
        if isinstance(exc, ServerUnavailable) and _refused_this_request(exc) and not submitted:
            # It answers, so it is up, and refuses what this job needs (a 500, the event WebSocket): trying
            # again may meet the same answer, so it uses an attempt (bounded); the backend stays up.
            await self._fail(job.id, exc, retry=True)
            return
        if isinstance(exc, ServerUnavailable) or (isinstance(exc, ServerTimeout) and exc.retryable and submitted):
            self.pool.mark_down(backend, str(exc))
            logger.warning("Backend %s is unreachable: %s", backend.name, exc)
            # Unless another backend can take the job now, it waits for this one without using an attempt;
            # a run that may be there keeps its handle, to be looked for (not sent again) when it answers.
            if not submitted or self.pool.down_reason() is not None:
                await self._release(job.id, exc, keep_handle=submitted)
                return
        if exc.retryable and submitted and exc.code not in _GONE:
            await self._leave(job.id, backend)
        await self._fail(job.id, exc, retry=exc.retryable)

    async def _release(self, job_id: str, exc: ComfyError, *, keep_handle: bool) -> None:
        where = "the backend" if self.pool.single else "a backend"
        try:
            released = await self.store.release(job_id, self.id, f"waiting for {where}: {exc}",
                                                keep_handle=keep_handle)
        except QueueError as lost:  # left RUNNING: taken up again once its lease expires
            logger.warning("Could not hand job %s back to the queue: %s", job_id, lost)
            return
        # server_unavailable tells a caller that nothing can run it now; with others up it moves on.
        code = ServerUnavailable.code if self.pool.down_reason() is not None else "failover"
        self._publish(job_id, "retrying", job=released, message=released.note, error_code=code)

    async def _leave(self, job_id: str, backend: Backend) -> None:
        """Before a job is submitted again, stop its run on ``backend``; if it cannot be told, do it later."""
        try:
            handle = (await self.store.get(job_id)).prompt_id
        except QueueError:
            return
        if not handle:
            return
        try:
            await asyncio.wait_for(backend.forget(handle), FORGET_TIMEOUT)
        except (ComfyError, TimeoutError) as exc:
            logger.info("Could not stop run %s of job %s on %s (%s); it is stopped when it answers again",
                        handle, job_id, backend.name, exc)
            self.pool.add_orphan(backend, handle)

    async def _execute(self, job: Job, backend: Backend, *, attach: bool) -> Outcome:
        ctx = _Context(self, job)
        cancel = self._cancels.get(job.id) or asyncio.Event()
        run = asyncio.create_task(backend.run(ctx, attach=attach))
        watch = asyncio.create_task(self._watch_cancel(job, backend, cancel))
        try:
            done, _ = await asyncio.wait({run, watch}, return_when=asyncio.FIRST_COMPLETED)
            if run not in done:  # cancelled: the backend was told; wait briefly for it to confirm
                handle, gone = watch.result()
                if not gone:  # deleted from its queue before it started: nothing more will come
                    with contextlib.suppress(asyncio.TimeoutError, ComfyError):
                        await asyncio.wait_for(asyncio.shield(run), timeout=5.0)
                await self._cancel_late_handle(job.id, backend, handle)
                raise ExecutionInterrupted("Cancelled.")
            return run.result()
        finally:
            for task in (run, watch):
                task.cancel()

    async def _watch_cancel(self, job: Job, backend: Backend, signal: asyncio.Event) -> tuple[str | None, bool]:
        """Once the job is cancelled (in this process or another), tell the backend; returns the handle it was
        told about and whether the backend confirmed that run gone before it started."""
        while not signal.is_set():
            if await self._cancel_requested(job.id):
                break
            await _wait_any(signal, timeout=max(self.poll_interval * 2, 0.1))
        try:
            current = await self.store.get(job.id)
        except QueueError:
            return None, False
        gone = False
        with contextlib.suppress(ComfyError):
            gone = bool(await backend.cancel(current))
        return current.prompt_id, gone

    async def _cancel_late_handle(self, job_id: str, backend: Backend, cancelled: str | None) -> None:
        # A backend that learns its handle only when it submits (RunPod) may have got it after the cancel.
        with contextlib.suppress(QueueError, ComfyError):
            current = await self.store.get(job_id)
            if current.prompt_id and current.prompt_id != cancelled:
                await backend.cancel(current)

    async def _save(self, job: Job, backend: Backend, outcome: Outcome) -> list[StoredImage]:
        current = await self.store.get(job.id)
        metadata = {
            "job_id": job.id, "kind": job.kind, "params": current.params, "prompt_id": outcome.handle,
            "backend": backend.name, "execution_ms": outcome.execution_ms,
        }
        record = outcome.record if outcome.record is not None else self._record(current)
        if record:
            metadata["toolbox"] = record
        blobs = await asyncio.gather(*(output.fetch() for output in outcome.outputs))
        return [
            self.files.save_output(job.id, index, data, metadata=metadata, node_id=output.node_id,
                                   source=output.filename)
            for index, (output, data) in enumerate(zip(outcome.outputs, blobs))
        ]

    def _record(self, job: Job) -> dict[str, Any] | None:
        """What the PNGs record of the toolbox when the backend did not say (a run re-attached after a restart)."""
        if job.kind != "generate":
            return None
        try:
            params, cell = split_job_params(job.params)
            mask = self.files.read_input(params.mask) if params.mask and params.inpaint_full_res else None
            return self.toolbox.prepare(params, mask_png=mask, grid_cell=cell).record()
        except (ComfyError, ValueError):
            return None

    # -- bookkeeping --------------------------------------------------------------------------------

    def _schedule_upload(self, job: Job) -> None:
        if self.uploader is None or job.state is not JobState.SUCCEEDED:
            return
        try:
            self.uploader.schedule(job)
        except Exception:  # the job succeeded: never fail it here; the uploader's start-up scan catches it up
            logger.exception("Could not schedule the upload of job %s; it is retried at the next start", job.id)

    async def _cancel_requested(self, job_id: str) -> bool:
        try:
            return (await self.store.get(job_id)).cancel_requested
        except QueueError:
            return False

    async def _finish_cancelled(self, job_id: str) -> None:
        try:
            job = await _stored(lambda: self.store.mark_cancelled(job_id, self.id))
        except QueueError as lost:  # left RUNNING: taken up again once its lease expires
            logger.warning("Could not record the cancel of job %s: %s", job_id, lost)
            return
        self._publish(job_id, "cancelled", job=job, message="Cancelled.")

    async def _fail(self, job_id: str, exc: BaseException, *, retry: bool) -> None:
        code = getattr(exc, "code", "internal_error")
        message = str(exc) if isinstance(exc, ComfyError) else f"Internal error: {type(exc).__name__}: {exc}"
        try:
            job = await _stored(lambda: self.store.fail(job_id, self.id, code=code, message=message, retry=retry))
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


async def _stored(write: Callable[[], Awaitable[Job]], *, patience: float = STORE_RETRY_SECONDS) -> Job:
    """A job's end written to the store, tried again while the store is unreachable (a Redis restart or blip):
    the run is over on the backend, so its end is reported once the store is back rather than lost."""
    deadline, delay, said = time.monotonic() + patience, 0.1, False
    while True:
        try:
            job = await write()
        except QueueUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise
            if not said:
                logger.warning("The queue is unreachable; a job's end is kept until it is back: %s", exc)
                said = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        if said:
            logger.info("The queue answers again; job %s recorded as %s", job.id, job.state.value)
        return job


def _as_pool(backends: Pool | Sequence[Backend] | Backend | ComfyClient, max_in_flight: int) -> Pool:
    if isinstance(backends, Pool):
        return backends
    if isinstance(backends, ComfyClient):
        return Pool([ComfyBackend(backends, max_in_flight=max_in_flight)])
    if isinstance(backends, Sequence):
        return Pool(list(backends))
    return Pool([backends])


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _refused_this_request(exc: ServerUnavailable) -> bool:
    """An HTTP answer other than 503 or 429 (busy, try later): the server, or a proxy in front of it, is up
    and refuses the request (a 500 to it, or the event WebSocket refused with a 403)."""
    return exc.status is not None and exc.status not in (429, 503)
