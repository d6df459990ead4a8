"""The studio's one facade: what the UI, the REST API and the command line call.

It checks a request completely before a job exists (limits, then the server's own lists of
checkpoints, samplers and schedulers), stores it in the persistent queue, wakes the worker, and
lets callers follow a job: the in-process event bus gives every step and preview, and the queue
on disk catches what a worker in another process did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from comfy import graph as workflows
from comfy.backends.base import Backend, redact_url
from comfy.backends.client import ComfyClient
from comfy.backends.comfyui import ComfyBackend
from comfy.backends.factory import comfy_client, pool_backends
from comfy.backends.pool import BackendState, Pool, merge_object_info
from comfy.errors import ComfyError, ServerError, WorkflowError
from comfy.graph.object_info import STOCK_SAMPLERS, STOCK_SCHEDULERS, ObjectInfo
from comfy.graph.images import FittedImage, fit_image
from comfy.graph.params import GenerationParams, Limits
from comfy.jobs.events import EventBus, JobEvent
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import Job, JobPage, JobState
from comfy.jobs.blocking import BlockingStore
from comfy.jobs.store import DiskStore, JobStore, open_store
from comfy.jobs.worker import Worker
from comfy.settings import Settings
from comfy.storage.library import WorkflowLibrary
from comfy.storage.local import LocalStore
from comfy.storage.mounts import refuse_network_queue
from comfy.storage.retention import DAY, PruneReport, prune

if TYPE_CHECKING:
    from comfy.jobs.cluster import RedisLink
    from comfy.storage.backlog import UploadStatus
    from comfy.storage.uploader import Uploader

__all__ = ["Studio", "BackendStatus", "Models", "redact_url"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    checkpoints: list[str]
    samplers: list[str]
    schedulers: list[str]


@dataclass(frozen=True)
class BackendStatus:
    """One backend as the status header and ``/health`` show it (no secrets: URLs are redacted).

    >>> BackendStatus("http://127.0.0.1:8188", False, error="Cannot reach it").state
    'down'
    """

    url: str
    reachable: bool
    error: str | None = None
    gpu: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    #: Work pending or running there, ours included (RunPod: its jobs in queue + in progress).
    queue_remaining: int | None = None
    comfyui_version: str | None = None
    #: The name jobs record in ``job.backend`` (the redacted URL, or ``runpod:<endpoint id>``).
    name: str | None = None
    #: ``comfyui`` (a ComfyUI server or pod), ``runpod`` (RunPod Serverless) or ``demo`` (the built-in demo).
    kind: str = "comfyui"
    #: ``up``, ``down`` or ``probing``; from ``reachable`` unless given.
    state: str | None = None
    #: What routing compares: our jobs there plus the foreign work its queue had at the last look.
    load: int | None = None
    #: Our jobs running there now, and how many it may take at once.
    in_flight: int | None = None
    max_in_flight: int | None = None
    #: RunPod Serverless: GPU workers idle and running, and its own job counters.
    workers_idle: int | None = None
    workers_running: int | None = None
    jobs_in_queue: int | None = None
    jobs_in_progress: int | None = None
    #: Seconds since the pool marked it down (None while up).
    down_for_s: float | None = None

    def __post_init__(self) -> None:
        if self.state is None:
            object.__setattr__(self, "state", "up" if self.reachable else "down")
        if self.name is None:
            object.__setattr__(self, "name", self.url)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Studio:
    """Queue, worker, client and storage, put together from :class:`Settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: ComfyClient | None = None,
        job_store: JobStore | None = None,
        files: LocalStore | None = None,
        bus: EventBus | None = None,
        s3_client: Any = None,
    ) -> None:
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self.client = client or comfy_client(settings, settings.comfyui_urls[0])
        #: Every backend jobs may run on, in the order configured; the worker's pool routes between them.
        self.pool = Pool(pool_backends(settings, self.client))
        if job_store is None and settings.redis_url is not None:
            job_store = open_store(settings)  # REDIS_URL: the queue every replica and worker shares
        elif job_store is None:
            refuse_network_queue(settings.queue_dir)
            # The SQLite lock wait stays well inside a lease: a renewal stuck on a lock must not lose the job.
            job_store = DiskStore(JobQueue(settings.queue_dir, max_attempts=settings.max_attempts,
                                           timeout=min(settings.lease_seconds / 2, 60.0)))
        self.store: JobStore = job_store  #: the job queue, every call awaited (diskcache, or Redis)
        #: What the upload backlog and retention read jobs through, from their threads.
        self._blocking = job_store.queue if isinstance(job_store, DiskStore) else BlockingStore(job_store)
        self.files = files or LocalStore(settings.outputs_dir, settings.inputs_dir)  #: outputs, kept inputs
        self.bus = bus or EventBus()
        self.library = WorkflowLibrary(settings.data_dir / "workflows")
        #: Copies outputs to S3 in the background when S3_BUCKET is set (boto3 is imported only then).
        self.uploader: Uploader | None = None
        if settings.s3_bucket:
            from comfy.storage.uploader import Uploader

            self.uploader = Uploader.from_settings(settings, self._blocking, client=s3_client)
        self.worker = Worker(
            self.store, self.pool, self.files, bus=self.bus, max_in_flight=settings.max_in_flight,
            lease_seconds=settings.lease_seconds, job_timeout=settings.job_timeout, uploader=self.uploader,
        )
        #: With Redis: events, cancels and a heartbeat shared with the other replicas and workers.
        self.link: RedisLink | None = None
        if not isinstance(job_store, DiskStore) and hasattr(job_store, "client"):
            from comfy.jobs.cluster import RedisLink

            self.link = RedisLink(job_store, self.bus, member_id=self.worker.id)  # type: ignore[arg-type]
        self._object_info_file = settings.data_dir / "object_info.json"
        self._kept_info: ObjectInfo | None = None
        self._merged: tuple[Any, ObjectInfo, list[ObjectInfo]] | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._upload_task: asyncio.Task[None] | None = None
        self._upload_stop = asyncio.Event()
        self._retention_task: asyncio.Task[None] | None = None

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self, *, worker: bool = True, serving: bool = True, burst: bool = False) -> None:
        """Start the worker in the running event loop (it first re-attaches jobs left running).

        ``serving`` says this process serves the page or the API (a ``replica``, in ``/health``); with ``burst``
        the worker stops once the queue is empty (:meth:`worker_done`).
        """
        if isinstance(self._blocking, BlockingStore):
            self._blocking.bind(asyncio.get_running_loop())
        if self.link is not None:
            role = "+".join(name for name, on in (("replica", serving), ("worker", worker)) if on) or "client"
            await self.link.start(role=role, on_cancel=self.worker.request_cancel if worker else None)
        if worker and self._worker_task is None:
            self._stop = asyncio.Event()
            self._worker_task = asyncio.create_task(self.worker.run(self._stop, burst=burst), name="studio-worker")
        if self.uploader is not None and self._upload_task is None:  # uploads resume even without a worker
            self._upload_stop = asyncio.Event()
            self._upload_task = asyncio.create_task(self.uploader.run(self._upload_stop), name="studio-uploader")
        if self.settings.retention_days > 0 and self._retention_task is None:
            self._retention_task = asyncio.create_task(self._keep_pruning(), name="studio-retention")

    async def aclose(self) -> None:
        """Stop the worker; prompts still running on ComfyUI are re-attached at the next start."""
        if self._retention_task is not None:
            self._retention_task.cancel()
            await asyncio.gather(self._retention_task, return_exceptions=True)
            self._retention_task = None
        if self._worker_task is not None:
            self._stop.set()
            await asyncio.gather(self._worker_task, return_exceptions=True)
            self._worker_task = None
        if self._upload_task is not None:  # after the worker: its last jobs are scheduled by now
            self._upload_stop.set()
            await asyncio.gather(self._upload_task, return_exceptions=True)
            self._upload_task = None
        if self.uploader is not None:
            self.uploader.close()
        if self.link is not None:
            await self.link.aclose()
        await self.client.aclose()
        for backend in self.pool.backends:
            await backend.aclose()
        await self.store.close()

    async def worker_done(self) -> None:
        """Return when this process's worker has stopped (at once if it never ran)."""
        if self._worker_task is not None:
            await asyncio.gather(self._worker_task, return_exceptions=True)

    @property
    def worker_running(self) -> bool:
        """True while this process's worker task is alive."""
        return self._worker_task is not None and not self._worker_task.done()

    async def __aenter__(self) -> Studio:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- outputs ----------------------------------------------------------------------------------

    async def image_urls(self, job: Job | str) -> list[str]:
        """Where to show a job's images: presigned URLs once S3 has them, else their local paths.

        Raises :class:`JobNotFound`, or :class:`StorageError` when a URL cannot be signed and the local
        copy is gone (``S3_KEEP_LOCAL=false``).
        """
        if isinstance(job, str):
            job = await self.store.get(job)
        if self.uploader is None:
            return [output["path"] for output in job.outputs]
        return await asyncio.to_thread(self.uploader.urls, job)  # reads the backlog on disk

    async def upload_status(self, job_id: str) -> UploadStatus:
        """``uploaded`` (with the object keys), ``pending`` (with the reason) or ``off``."""
        if self.uploader is None:
            from comfy.storage.backlog import OFF

            return OFF
        return await asyncio.to_thread(self.uploader.status, job_id)

    async def storage_health(self) -> dict[str, Any]:
        """For ``/health``: local only, or the bucket, whether it answers and what to fix if not."""
        if self.uploader is None:
            return {"configured": False, "storage": "local", "reachable": None, "error": None}
        return {"storage": "s3", **await asyncio.to_thread(self.uploader.health)}

    # -- retention ------------------------------------------------------------------------------------

    async def prune(self, older_than_days: float) -> PruneReport:
        """Remove finished jobs older than this many days with their files (never a queued or running job)."""
        backlog = self.uploader.backlog if self.uploader is not None else None
        if isinstance(self._blocking, BlockingStore):  # Redis: its calls run on this loop (the CLI never starts)
            self._blocking.bind(asyncio.get_running_loop())
        return await asyncio.to_thread(prune, self._blocking, self.files,
                                       older_than=time.time() - older_than_days * DAY, backlog=backlog)

    async def _keep_pruning(self, interval: float = 3600.0) -> None:
        """STUDIO_RETENTION_DAYS: prune at start and every hour, in a thread (it reads the index, files)."""
        while True:
            try:
                report = await self.prune(self.settings.retention_days)
                if report.jobs or report.inputs or report.files:
                    logger.info("Retention (%g days): %s", self.settings.retention_days, report.sentence())
            except ComfyError as exc:
                logger.warning("Retention could not prune this time: %s", exc)
            await asyncio.sleep(interval)

    # -- what the backend offers ------------------------------------------------------------------

    async def object_info(self, *, refresh: bool = False) -> ObjectInfo | None:
        """The server's node catalogue, or the last one seen when it is unreachable (None if never).

        With several backends: every ComfyUI server's catalogue united (and the checkpoints configured
        for RunPod Serverless), so a request is refused only when no backend could run it.
        """
        if self.pool.single and isinstance(self.pool.backends[0], ComfyBackend):
            try:
                info = await self.client.object_info(refresh=refresh)
            except ServerError as exc:
                logger.warning("Using the cached node list: %s", exc)
                return self._cached_object_info()
        else:
            info = await self._pool_object_info(refresh)
            if info is None:
                return self._cached_object_info()
        self._keep_object_info(info)
        return info

    async def _pool_object_info(self, refresh: bool) -> ObjectInfo | None:
        pods = [b for b in self.pool.backends if isinstance(b, ComfyBackend)]
        asked = [p for p in pods if self.pool.state(p) is not BackendState.DOWN]
        answers = await asyncio.gather(*(p.client.object_info(refresh=refresh) for p in asked), return_exceptions=True)
        infos = []
        for pod, answer in zip(asked, answers):
            if isinstance(answer, ObjectInfo):
                infos.append(answer)
            elif isinstance(answer, ComfyError):
                logger.warning("No node list from %s: %s", pod.name, answer)
            elif isinstance(answer, BaseException):
                raise answer
        infos += [p.last_info for p in pods if p not in asked and p.last_info is not None]
        infos += [b.last_info for b in self.pool.backends if b.kind == "demo"]
        extra = self.settings.runpod_checkpoint_list or [] if self.settings.runpod_endpoint_id else []
        key = (tuple(id(info) for info in infos), tuple(extra))
        if self._merged is None or self._merged[0] != key:  # the same catalogues: the same union (and no write)
            merged = merge_object_info(infos, extra_checkpoints=extra)
            if merged is None:
                return None
            self._merged = (key, merged, infos)  # keeps the parts alive, so their ids stay theirs
        return self._merged[1]

    def _keep_object_info(self, info: ObjectInfo) -> None:
        # Written once per fetched catalogue, so a restart with the server down still knows the lists.
        if self._kept_info is not info:
            self._object_info_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._object_info_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info.raw), encoding="utf-8")
            tmp.replace(self._object_info_file)
            self._kept_info = info

    def _cached_object_info(self) -> ObjectInfo | None:
        try:
            return ObjectInfo.from_json(self._object_info_file.read_bytes())
        except (OSError, ValueError, ComfyError):
            return None

    async def models(self, *, refresh: bool = False) -> Models:
        info = await self.object_info(refresh=refresh)
        if info is None and self.settings.runpod_endpoint_id:  # serverless has no catalogue to ask
            return Models(self.settings.runpod_checkpoint_list or [], list(STOCK_SAMPLERS), list(STOCK_SCHEDULERS))
        if info is None:
            return Models([], [], [])
        return Models(list(info.checkpoints), list(info.samplers), list(info.schedulers))

    async def backend_status(self) -> BackendStatus:
        """The first backend: reachable or not, GPU and VRAM, its queue length; never raises."""
        return await self._status(self.pool.backends[0])

    async def backends_status(self) -> list[BackendStatus]:
        """Every backend, in the order configured (asked at once); never raises."""
        return list(await asyncio.gather(*(self._status(b) for b in self.pool.backends)))

    async def _status(self, backend: Backend) -> BackendStatus:
        view = next(v for v in self.pool.views() if v.backend is backend)
        known = {"name": backend.name, "kind": backend.kind, "load": view.load, "in_flight": view.in_flight,
                 "max_in_flight": backend.max_in_flight,
                 "down_for_s": round(time.monotonic() - view.down_since, 1) if view.down_since is not None else None}
        try:
            health = await backend.health()
        except ComfyError as exc:
            state = "probing" if view.state is BackendState.PROBING else "down"
            return BackendStatus(backend.url, False, error=str(exc), state=state, **known)
        return BackendStatus(
            backend.url, True, gpu=health.gpu, vram_total=health.vram_total, vram_free=health.vram_free,
            queue_remaining=health.queue_remaining, comfyui_version=health.version, state="up",
            workers_idle=health.workers_idle, workers_running=health.workers_running,
            jobs_in_queue=health.jobs_in_queue, jobs_in_progress=health.jobs_in_progress, **known,
        )

    # -- submitting -------------------------------------------------------------------------------

    async def submit(
        self,
        params: GenerationParams | dict[str, Any],
        *,
        count: int = 1,
        image: bytes | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Queue ``count`` jobs (seeds counting up from the first). Raises :class:`WorkflowError` first if anything is wrong."""
        if isinstance(params, dict):
            params = GenerationParams.from_dict(params)
        if not 1 <= count <= 100:
            raise WorkflowError(f"count is {count}; it must be between 1 and 100.", field="count")
        # Under an idempotency key a random seed is drawn from the request, so a retry is the same job.
        params = params.check(self.limits).resolve_seed(*((owner, idempotency_key) if idempotency_key else ()))
        note = None
        if image is not None:
            name, fitted = await asyncio.to_thread(self._keep_image, image, multiple=8)
            if min(fitted.width, fitted.height) < 64:
                raise WorkflowError(f"The init image is {fitted.width}×{fitted.height}; it must be at least 64 "
                                    "pixels on each side.", field="image")
            # img2img runs at the image's own size (fitted to the limits), and records that size.
            params = dataclasses.replace(params, init_image=name, width=fitted.width, height=fitted.height)
            note = fitted.note
        checked = await self._check_against_server(params)
        # Under a key the default checkpoint is left to the worker (it fills it in when the job runs): a retry is
        # then the same request whether or not the server answered the first time (it may not have: a 503).
        params = dataclasses.replace(checked, checkpoint=params.checkpoint) if idempotency_key else checked
        jobs = []
        for index in range(count):
            one = params.with_seed((params.seed + index) % 2**64) if count > 1 else params
            key = f"{idempotency_key}#{index}" if idempotency_key and count > 1 else idempotency_key
            job, _created = await self.store.enqueue(one.to_dict(), kind="generate", idempotency_key=key,
                                                     owner=owner, note=note)
            jobs.append(job)
            self.bus.publish(JobEvent(job.id, "queued", job=job.to_dict()))
        self.worker.wake()
        return jobs

    async def _check_against_server(self, params: GenerationParams) -> GenerationParams:
        info = await self.object_info()
        if info is None:  # never seen the server: the worker checks when it is back
            return params
        if params.checkpoint is None:
            params = dataclasses.replace(params, checkpoint=workflows.default_checkpoint(info))
        template = workflows.load_template("img2img" if params.init_image else "txt2img")
        probe = dataclasses.replace(params, init_image=_UPLOAD_PLACEHOLDER if params.init_image else None)
        workflows.validate(workflows.bind(template, probe), info, pending_uploads=True)
        return params

    async def submit_workflow(
        self,
        workflow: dict[str, Any] | str | bytes,
        *,
        inputs: dict[tuple[str, str], Any] | None = None,
        images: dict[str, bytes] | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Job:
        """Queue any API-format workflow, with ``inputs`` set and ``images`` (node id → PNG) for LoadImage nodes.

        ``params`` records the studio parameters that were bound onto it, for history and metadata.
        """
        graph = workflows.parse_workflow(workflow)
        if inputs:
            graph = workflows.apply_inputs(graph, inputs)
        kept: dict[str, str] = {}
        notes = []
        for node_id, data in (images or {}).items():
            if node_id not in graph:
                raise WorkflowError(f"The workflow has no node {node_id} to take an image.", field=f"node {node_id}")
            kept[node_id], fitted = await asyncio.to_thread(self._keep_image, data, field=f"node {node_id}")
            if fitted.note:
                notes.append(f"Node {node_id}: {fitted.note}")
        info = await self.object_info()
        if info is not None:
            workflows.validate(graph, info, pending_uploads=True)
        job, _created = await self.store.enqueue({**(params or {}), "images": kept}, kind="workflow", workflow=graph,
                                                 idempotency_key=idempotency_key, owner=owner,
                                                 note=" ".join(notes) or None)
        self.bus.publish(JobEvent(job.id, "queued", job=job.to_dict()))
        self.worker.wake()
        return job

    async def submit_params_to_workflow(
        self,
        workflow: dict[str, Any] | str | bytes,
        values: dict[str, Any],
        *,
        count: int = 1,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Queue a user's workflow with some studio parameters (prompt, steps, ...) bound onto it.

        Only the parameters given are written; the workflow keeps its own values for the rest. With
        ``count`` > 1 the seeds count up from the given one (or from a random one).
        """
        if isinstance(workflow, bytes) and workflow[:8] == b"\x89PNG\r\n\x1a\n":
            graph = workflows.workflow_from_png(workflow)
        else:
            graph = workflows.parse_workflow(workflow)
        if not 1 <= count <= 100:
            raise WorkflowError(f"count is {count}; it must be between 1 and 100.", field="count")
        base = GenerationParams.from_dict({"prompt": values.get("prompt", "-"), **values})
        base.check(self.limits)
        if count > 1 or values.get("seed") == -1:
            retry_material = (owner, idempotency_key, graph) if idempotency_key else ()
            values = {**values, "seed": base.resolve_seed(*retry_material).seed}
        jobs = []
        for index in range(count):
            one = {**values, "seed": (values["seed"] + index) % 2**64} if "seed" in values else values
            key = f"{idempotency_key}#{index}" if idempotency_key and count > 1 else idempotency_key
            jobs.append(await self.submit_workflow(workflows.bind_values(graph, one), idempotency_key=key,
                                                   owner=owner, params=one))
        return jobs

    def _keep_image(self, data: bytes, *, multiple: int = 1, field: str = "image") -> tuple[str, FittedImage]:
        """Check an upload, fit it to the size limits and keep it; the kept file's name (never a server path).

        Decoding is CPU work: call it in a thread.
        """
        fitted = fit_image(data, max_width=self.limits.max_width, max_height=self.limits.max_height,
                           max_bytes=self.settings.max_upload_bytes, multiple=multiple, field=field)
        return self.files.save_input(fitted.data).name, fitted

    # -- jobs -------------------------------------------------------------------------------------

    async def job(self, job_id: str) -> Job:
        return await self.store.get(job_id)

    async def jobs(self, *, states: Collection[JobState] | None = None, owner: str | None = None, limit: int = 50,
                   cursor: int | None = None, unowned: bool = False) -> JobPage:
        return await self.store.list(states=states, owner=owner, limit=limit, cursor=cursor, unowned=unowned)

    async def position(self, job_id: str) -> int | None:
        return await self.store.position(job_id)

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state."""
        return await self.store.counts()

    async def move_to_front(self, job_id: str) -> Job:
        """Run a queued job next. Raises :class:`QueueError` if it is not queued any more."""
        await self.store.move(job_id, to_index=0)
        return await self.store.get(job_id)

    async def active_jobs(self, *, owner: str | None = None) -> list[Job]:
        """Queued and running jobs, oldest first (the order they run in)."""
        page = await self.store.list(states=[JobState.QUEUED, JobState.RUNNING], owner=owner, limit=1000)
        return sorted(page.jobs, key=lambda job: job.seq)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one never runs; a running one is stopped on the server too."""
        before = await self.store.get(job_id)
        job = await self.store.cancel(job_id)
        if job.state is JobState.CANCELLED:
            self.bus.publish(JobEvent(job.id, "cancelled", job=job.to_dict(), message="Cancelled."))
            backend = self.pool.find(before.backend)
            if before.state is JobState.QUEUED and before.prompt_id and backend is not None:
                # It waited for its backend with its run's handle kept: that run is stopped when it answers.
                self.pool.add_orphan(backend, before.prompt_id)
        elif job.cancel_requested:
            self.worker.request_cancel(job_id)
            if self.link is not None:  # the worker running it may be in another process
                await self.link.request_cancel(job_id)
        return job

    async def follow(self, job_id: str, *, poll_interval: float = 0.5) -> AsyncIterator[JobEvent]:
        """Events of one job until it ends; the current state comes first, so late callers catch up."""
        sub = self.bus.subscribe(job_id)
        try:
            # Read at once, so the caller sees the state it left.
            job = await self.store.get(job_id)
            yield JobEvent(job.id, _kind(job), progress=job.progress, node=job.node, step=job.step,
                           steps=job.steps, job=job.to_dict())
            if job.state.is_final:
                return
            seen = job
            while True:
                try:
                    event = await sub.get(timeout=poll_interval)
                except asyncio.TimeoutError:
                    # A worker in another process writes only to the queue.
                    job = await self.store.get(job_id)
                    if job != seen:
                        seen = job
                        yield JobEvent(job.id, _kind(job), progress=job.progress, node=job.node, step=job.step,
                                       steps=job.steps, job=job.to_dict(), message=job.note)
                        if job.state.is_final:
                            return
                    continue
                yield event
                if event.final:
                    return
        finally:
            sub.close()

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Wait until the job ends and return it (raises ``TimeoutError`` after ``timeout``, events or not)."""
        try:
            async with asyncio.timeout(timeout), contextlib.aclosing(self.follow(job_id)) as events:
                async for event in events:
                    if event.final:
                        break
        except TimeoutError:
            raise TimeoutError(f"Job {job_id} did not finish in {timeout} s.") from None
        return await self.store.get(job_id)


_UPLOAD_PLACEHOLDER = "studio-upload.png"


def _kind(job: Job) -> str:
    return {JobState.QUEUED: "queued", JobState.RUNNING: "progress", JobState.SUCCEEDED: "succeeded",
            JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}[job.state]
