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

from comfy.backends.base import Backend, redact_url
from comfy.backends.client import ComfyClient
from comfy.backends.comfyui import ComfyBackend
from comfy.backends.factory import comfy_client, pool_backends
from comfy.backends.pool import BackendState, Pool, merge_object_info
from comfy.errors import ComfyError, ServerError
from comfy.graph.object_info import STOCK_SAMPLERS, STOCK_SCHEDULERS, ObjectInfo
from comfy.graph.params import Limits
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
from comfy.storage.retention import DAY, Copies, PruneReport, prune
from comfy.submission import Submission
from comfy.grids import Grids
from comfy.graph.toolbox import Toolbox

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
    loras: list[str] = dataclasses.field(default_factory=list)
    vaes: list[str] = dataclasses.field(default_factory=list)
    upscale_models: list[str] = dataclasses.field(default_factory=list)


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
    device_type: str | None = None  #: ``cpu``: the memory shown is RAM
    queue_remaining: int | None = None  #: work pending or running there, ours included (RunPod: queue + in progress)
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


class Studio(Submission, Grids):
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
        #: Copies of outputs kept elsewhere (the page's), removed with their jobs by retention.
        self.copies: list[Copies] = []
        #: Copies outputs to S3 in the background when S3_BUCKET is set (boto3 is imported only then).
        self.uploader: Uploader | None = None
        if settings.s3_bucket:
            from comfy.storage.uploader import Uploader

            self.uploader = Uploader.from_settings(settings, self._blocking, client=s3_client)
        self.worker = Worker(
            self.store, self.pool, self.files, bus=self.bus, max_in_flight=settings.max_in_flight,
            lease_seconds=settings.lease_seconds, job_timeout=settings.job_timeout, uploader=self.uploader,
            toolbox=Toolbox.in_data_dir(settings.data_dir),
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
                                       older_than=time.time() - older_than_days * DAY, backlog=backlog,
                                       copies=self.copies)

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
        return Models(list(info.checkpoints), list(info.samplers), list(info.schedulers), list(info.loras),
                      list(info.vaes), list(info.upscale_models))

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
            device_type=health.device_type, queue_remaining=health.queue_remaining,
            comfyui_version=health.version, state="up",
            workers_idle=health.workers_idle, workers_running=health.workers_running,
            jobs_in_queue=health.jobs_in_queue, jobs_in_progress=health.jobs_in_progress, **known,
        )

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



def _kind(job: Job) -> str:
    return {JobState.QUEUED: "queued", JobState.RUNNING: "progress", JobState.SUCCEEDED: "succeeded",
            JobState.FAILED: "failed", JobState.CANCELLED: "cancelled"}[job.state]
