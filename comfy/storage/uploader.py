"""The upload backlog and the loop that empties it into the bucket (see :mod:`comfy.storage.s3` for the bucket side,
:mod:`comfy.storage.backlog` for the records).

    worker: save locally ─▶ queue.finish ─▶ Uploader.schedule(job) ─▶ UploadBacklog (<data>/uploads)
    Uploader.run(): claim due records ─▶ S3Store.upload(image_<n>) for each image ─▶ S3Store.put_metadata
        success       ─▶ record "uploaded" with its keys ─▶ queue.annotate: outputs gain ``s3_key``
                         (─▶ the local copy is deleted when S3_KEEP_LOCAL=false)
        StorageError  ─▶ attempts + 1, next try after a backoff; the job's note says
                         "saved locally, upload pending: <reason>"

**Exactly once after success.** Each object is marked done in the backlog (one diskcache transaction) as
soon as S3 acknowledged it, and the job once all its objects are; nothing marked done is sent again, after a
retry or a restart, and scheduling a job the backlog already knows does nothing. The one window left, S3
stored an object but its acknowledgement was lost (a broken connection, a crash, a stop mid-upload), is
closed by looking first: on any try after the first, an object is sent only if the bucket does not already
hold it with the same sha256 (each object carries ``x-amz-meta-sha256``).

**No loss.** The backlog is a ``diskcache.Cache`` with eviction off (a plain one drops entries past 1 GB)
in its own folder, so pending uploads survive restarts and resume. A local file is deleted
(``S3_KEEP_LOCAL=false``) only after its job is recorded as uploaded. A job whose ``schedule`` call was
lost is found at the next start by a scan of the succeeded jobs that have no upload record.

**Backoff.** A failure from S3 pauses the whole uploader (exponential, jittered, capped), and while it is
failing one job at a time probes the bucket: an outage or a wrong key is not hammered by every job. A
problem of one job only (its local file is gone) backs off that job alone.

Several processes may share a data folder: a lease on each record (owner id, expiry) keeps two uploaders
off the same job; a lease whose owner died on this host is taken over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy.errors import ComfyError, JobNotFound, StorageError
from comfy.graph import pngmeta
from comfy.jobs.leases import worker_id
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import Job, JobState
from comfy.storage.backlog import OFF, UploadBacklog, UploadStatus
from comfy.storage.local import METADATA_KEY
from comfy.storage.s3 import METADATA_NAME, S3Store, public_url

__all__ = ["PENDING_NOTE", "Uploader", "job_metadata"]


if TYPE_CHECKING:
    from comfy.settings import Settings


logger = logging.getLogger(__name__)

#: The note on a job whose upload waits; ": <reason>" follows.
PENDING_NOTE = "saved locally, upload pending"


class Uploader:
    """Uploads succeeded jobs' outputs in the background, from a backlog that survives restarts.

    Call :meth:`schedule` when a job succeeded and run :meth:`run` in the event loop. Backoff, concurrency,
    polling, the lease and the clock are parameters so tests run fast. Nothing raises into the worker:
    failures are recorded on the job (its note), in :meth:`status` and in :meth:`health`.
    """

    def __init__(
        self,
        store: S3Store,
        queue: JobQueue,
        directory: str | Path,
        *,
        keep_local: bool = True,
        concurrency: int = 4,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        poll_interval: float = 5.0,
        lease_seconds: float = 900.0,
        stop_grace: float = 10.0,
        now: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.queue = queue
        self.backlog = UploadBacklog(directory, now=now)
        self.keep_local = keep_local
        self.concurrency = max(1, concurrency)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval  # also how soon another process's schedule() is noticed
        self.lease_seconds = lease_seconds
        self.stop_grace = stop_grace
        self.owner = worker_id()
        self._now = now
        self._rng = rng
        self._active: set[str] = set()  # jobs this loop is uploading now
        self._failures = 0  # consecutive failed attempts against S3: drives the shared backoff
        self._resume_at = 0.0
        self._next_due: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._uploaded: dict[str, asyncio.Event] = {}
        self._slots = asyncio.Semaphore(self.concurrency)
        self._health: dict[str, Any] = {"reachable": None, "error": None, "checked_at": None,
                                        "last_upload_at": None}

    @classmethod
    def from_settings(cls, settings: Settings, queue: JobQueue, *, client: Any = None, **options: Any) -> Uploader:
        """The uploader for ``settings`` (backlog in ``<data>/uploads``); ``client`` replaces the boto3 client."""

        store = S3Store.from_settings(settings, client=client)
        return cls(store, queue, settings.data_dir / "uploads", keep_local=settings.s3_keep_local, **options)

    def close(self) -> None:
        self.backlog.close()

    # -- what callers see ---------------------------------------------------------------------------------

    def schedule(self, job: Job) -> None:
        """Queue a succeeded job's outputs for upload (a job already known is left alone). Never raises."""
        if job.state is not JobState.SUCCEEDED:
            return
        try:
            created = self._create(job)
        except ComfyError as exc:
            logger.error("Could not schedule the upload of job %s (it is found at the next start): %s", job.id, exc)
            return
        if created:
            self._notify()

    def status(self, job_id: str) -> UploadStatus:
        record = self.backlog.get(job_id)
        if record is None:
            return OFF
        if record["state"] == "uploaded":
            return UploadStatus("uploaded", tuple(record["keys"]), record["metadata_key"], record.get("bucket"),
                                attempts=record["attempts"], uploaded_at=record["uploaded_at"])
        failing = self._failures > 0
        return UploadStatus("pending", reason=record["reason"] or (self._health["error"] if failing else None),
                            attempts=record["attempts"],
                            next_attempt_at=max(record["due"], self._resume_at if failing else 0.0))

    def health(self) -> dict[str, Any]:
        """For ``/health``: the bucket; ``reachable`` (the last check or upload worked; None before any);
        ``error``: what is wrong, as a sentence that says what to fix; how many uploads wait."""
        pending = self.backlog.pending()
        oldest = None
        for job_id in list(pending)[:1000]:
            scheduled = (self.backlog.get(job_id) or {}).get("scheduled_at")
            if scheduled is not None and (oldest is None or scheduled < oldest):
                oldest = scheduled
        return {
            "configured": True, "bucket": self.store.bucket, "prefix": self.store.prefix,
            "endpoint": self.store.endpoint, **self._health, "pending": len(pending),
            "oldest_pending_s": None if oldest is None else round(max(self._now() - oldest, 0.0), 3),
            "retry_at": self._resume_at if self._failures else None,
        }

    def urls(self, job: Job) -> list[str]:
        """Presigned URLs of a job's images once uploaded (to this bucket), else their local paths.

        Raises :class:`StorageError` when a URL cannot be signed and the local copy is gone.
        """
        status = self.status(job.id)
        keys = [output.get("s3_key") for output in job.outputs]
        if status.state == "uploaded":
            if status.bucket not in (None, self.store.bucket):
                keys = [None] * len(keys)  # uploaded to a bucket S3_BUCKET no longer names
            elif not all(keys) and len(status.keys) == len(keys):
                keys = list(status.keys)  # recorded as uploaded, the job not annotated yet
        urls = []
        for output, key in zip(job.outputs, keys):
            if key:
                try:
                    urls.append(self.store.presign(key))
                    continue
                except StorageError as exc:
                    if not Path(output["path"]).exists():
                        raise
                    logger.warning("Showing the local copy of %s: %s", key, exc)
            urls.append(output["path"])
        return urls

    async def wait_uploaded(self, job_id: str, *, timeout: float | None = None) -> UploadStatus:
        """Wait (in the uploader's event loop) until the job is uploaded; ``TimeoutError`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status.state == "uploaded":
                return status
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                self._uploaded.pop(job_id, None)
                raise TimeoutError(f"Job {job_id} was not uploaded in {timeout} s ({status.reason or status.state}).")
            signal = self._uploaded.setdefault(job_id, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):  # another process may upload it: look again
                await asyncio.wait_for(signal.wait(), min(left, 1.0))

    async def check(self) -> dict[str, Any]:
        """HEAD the bucket; a problem is logged as a sentence that says what to fix and kept for /health."""
        try:
            await asyncio.to_thread(self.store.check)
        except StorageError as exc:
            self._health.update(reachable=False, error=str(exc), checked_at=self._now())
            logger.warning("S3 storage is not usable yet (outputs stay local; uploads are retried): %s", exc)
        else:
            self._health.update(reachable=True, error=None, checked_at=self._now())
            logger.info("S3 storage: bucket %s at %s", self.store.bucket, self.store.endpoint)
        return self.health()

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Upload until ``stop`` is set: a bucket check (not waited for), a catch-up scan, then due jobs."""
        self._loop = asyncio.get_running_loop()
        tasks: dict[asyncio.Task[None], str] = {}
        checking = asyncio.create_task(self.check(), name="s3-check")
        try:
            try:
                await asyncio.to_thread(self.catch_up)
            except ComfyError as exc:
                logger.warning("Could not scan for jobs left to upload: %s", exc)
            while not stop.is_set():
                self._wake.clear()
                await self._start_due(tasks)
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait()), *tasks]
                await asyncio.wait(waiters, timeout=self._sleep_for(tasks), return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters[:2]:
                    waiter.cancel()
                for task in [t for t in tasks if t.done()]:
                    del tasks[task]
        finally:
            checking.cancel()
            await self._drain(tasks)

    async def _start_due(self, tasks: dict[asyncio.Task[None], str]) -> None:
        if self._now() < self._resume_at:
            return
        # While S3 fails, one job at a time probes it; the others wait for the backoff to end.
        room = (1 if self._failures else self.concurrency) - len(tasks)
        if room <= 0:
            return
        try:
            claimed, self._next_due = await asyncio.to_thread(
                self.backlog.claim, self.owner, room, skip=set(self._active), lease_seconds=self.lease_seconds)
        except ComfyError as exc:
            logger.error("Could not read the upload backlog: %s", exc)
            self._back_off()
            return
        for record in claimed:
            self._active.add(record["job_id"])
            tasks[asyncio.create_task(self._attempt(record), name=f"upload-{record['job_id']}")] = record["job_id"]

    def _sleep_for(self, tasks: dict[asyncio.Task[None], str]) -> float:
        now = self._now()
        wake_at = [now + self.poll_interval]
        if self._failures:
            if not tasks:  # else the probe's end wakes the loop
                wake_at.append(self._resume_at)
        elif self._next_due is not None and len(tasks) < self.concurrency:
            wake_at.append(self._next_due)
        return max(min(wake_at) - now, 0.001)

    async def _drain(self, tasks: dict[asyncio.Task[None], str]) -> None:
        """On stop, let running uploads finish briefly; release the rest for the next start."""
        held = set(tasks.values()) | self._active
        if tasks:
            await asyncio.wait(list(tasks), timeout=self.stop_grace)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if held:  # only leases still ours are released: finished jobs hold none
            with contextlib.suppress(ComfyError):
                await asyncio.to_thread(self.backlog.release, held, self.owner)
        self._active.clear()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not running: the loop reads the backlog when it starts
        try:
            same_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_loop = False
        if same_loop:
            self._wake.set()
        else:  # scheduled from another thread (a Gradio handler)
            loop.call_soon_threadsafe(self._wake.set)

    def _delay(self, failures: int) -> float:
        """Exponential backoff with jitter, capped: base * 2^(n-1), times 0.5 to 1, at most ``backoff_cap``."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(failures - 1, 32))
        return ceiling * (0.5 + self._rng() / 2)

    def _back_off(self) -> float:
        self._failures += 1
        self._resume_at = self._now() + self._delay(self._failures)
        return self._resume_at

    # -- one attempt at one job ----------------------------------------------------------------------------

    async def _attempt(self, record: dict[str, Any]) -> None:
        job_id = record["job_id"]
        try:
            missing = [o["path"] for i, o in enumerate(record["job"]["outputs"])
                       if self._name(job_id, i, o) not in record["done"] and not Path(o["path"]).is_file()]
            if missing:  # this job's problem, not the bucket's: it backs off alone
                await self._failed(record, f"the local file {missing[0]} is missing, so it cannot be uploaded",
                                   shared=False)
                return
            try:
                keys = await self._upload_objects(record)
            except StorageError as exc:
                await self._failed(record, str(exc), shared=True)
                return
            await self._succeeded(record, keys)
        except ComfyError as exc:  # the backlog itself failed: everything waits a little
            logger.error("Upload of job %s stopped: %s", job_id, exc)
            self._back_off()
        except Exception as exc:  # a bug must neither spin on one job nor stop the others: back off, loudly
            logger.exception("Upload of job %s failed unexpectedly", job_id)
            with contextlib.suppress(ComfyError):
                await self._failed(record, f"internal error ({type(exc).__name__})", shared=False)
        finally:
            self._active.discard(job_id)

    def _name(self, job_id: str, index: int, output: dict[str, Any]) -> str:
        return Path(self.store.image_key(job_id, index, output["path"])).name

    async def _upload_objects(self, record: dict[str, Any]) -> dict[str, str]:
        """Every image not done yet (at most ``concurrency`` at once over all jobs), then metadata.json."""
        job = record["job"]
        done: dict[str, dict[str, Any]] = dict(record["done"])
        look_first = record["tries"] > 1  # an earlier try may have stored what it could not record

        async def one(index: int, output: dict[str, Any]) -> None:
            name = self._name(job["id"], index, output)
            if name in done:
                return
            async with self._slots:
                info = await asyncio.to_thread(self._upload_image, job["id"], index, output, look_first)
            done[name] = info
            await asyncio.to_thread(self.backlog.mark_done, job["id"], name, info, owner=self.owner,
                                    lease_seconds=self.lease_seconds)

        results = await asyncio.gather(*(one(i, o) for i, o in enumerate(job["outputs"])), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if METADATA_NAME not in done:
            metadata = await asyncio.to_thread(job_metadata, job, done, self._name)
            async with self._slots:
                key = await asyncio.to_thread(self.store.put_metadata, job["id"], metadata)
            done[METADATA_NAME] = {"key": key}
            await asyncio.to_thread(self.backlog.mark_done, job["id"], METADATA_NAME, done[METADATA_NAME],
                                    owner=self.owner, lease_seconds=self.lease_seconds)
        return {name: info["key"] for name, info in done.items()}

    def _upload_image(self, job_id: str, index: int, output: dict[str, Any], look_first: bool) -> dict[str, Any]:
        path = Path(output["path"])
        digest, size = _sha256(path)
        key = self.store.image_key(job_id, index, path)
        if look_first and self.store.holds(key, digest):
            logger.info("%s is already in the bucket (an earlier try stored it); not sending it again", key)
        else:
            self.store.upload(job_id, index, path, content_type=output.get("content_type") or "image/png",
                              sha256=digest)
            logger.debug("Uploaded %s (%d bytes)", key, size)
        return {"key": key, "sha256": digest, "size": size}

    async def _succeeded(self, record: dict[str, Any], keys: dict[str, str]) -> None:
        job = record["job"]
        image_keys = [keys[self._name(job["id"], i, o)] for i, o in enumerate(job["outputs"])]
        await asyncio.to_thread(self.backlog.mark_uploaded, record, bucket=self.store.bucket, keys=image_keys,
                                metadata_key=keys[METADATA_NAME])
        if self._failures:
            logger.info("Uploads to bucket %s work again", self.store.bucket)
        self._failures = 0
        self._resume_at = 0.0
        self._health.update(reachable=True, error=None, last_upload_at=self._now())
        logger.info("Job %s uploaded to bucket %s (%d image(s))", job["id"], self.store.bucket, len(image_keys))
        await asyncio.to_thread(self._annotate_uploaded, job["id"], image_keys)
        if not self.keep_local:
            await asyncio.to_thread(_delete_local, [o["path"] for o in job["outputs"]])
        signal = self._uploaded.pop(job["id"], None)
        if signal is not None:
            signal.set()

    async def _failed(self, record: dict[str, Any], reason: str, *, shared: bool) -> None:
        now = self._now()
        new_reason = reason != (self._health["error"] if shared else record["reason"])
        if shared:
            due = self._back_off()
            self._health.update(reachable=False, error=reason)
        else:
            due = now + self._delay(record["attempts"] + 1)
        (logger.warning if new_reason else logger.debug)(
            "Upload of job %s pending (attempt %d; next in %.1f s): %s", record["job_id"], record["attempts"] + 1,
            due - now, reason)
        changed = await asyncio.to_thread(self.backlog.mark_failed, record["job_id"], reason, due, hold_others=shared,
                                          skip=set(self._active), new_reason=new_reason)
        for job_id in changed:  # a new reason: every job it holds up says so
            await asyncio.to_thread(self._annotate_pending, job_id, reason)

    # -- the job record --------------------------------------------------------------------------------------

    def _create(self, job: Job) -> bool:
        reason = self._health["error"] if self._failures else None
        created = self.backlog.create(job, reason)
        if created and reason:  # S3 is failing right now: say so on the job at once
            self._annotate_pending(job.id, reason)
        return created

    def _annotate_pending(self, job_id: str, reason: str) -> None:
        try:
            self.queue.annotate(job_id, note=f"{PENDING_NOTE}: {reason}")
        except ComfyError as exc:
            logger.debug("Could not note the pending upload on job %s: %s", job_id, exc)

    def _annotate_uploaded(self, job_id: str, keys: list[str]) -> None:
        try:
            job = self.queue.get(job_id)
            outputs = [{**output, "s3_key": key} for output, key in zip(job.outputs, keys)]
            note = "" if (job.note or "").startswith(PENDING_NOTE) else None
            self.queue.annotate(job_id, outputs=outputs + job.outputs[len(keys):], note=note)
        except JobNotFound:
            pass  # pruned meanwhile: the backlog keeps the keys
        except ComfyError as exc:
            logger.warning("Job %s is uploaded but its record could not say so yet: %s", job_id, exc)

    def catch_up(self) -> int:
        """At start: schedule succeeded jobs with no upload record (a lost ``schedule`` call) and finish what
        a crash interrupted (outputs' ``s3_key``, deleting local copies). Only jobs that finished after S3
        was turned on count. Returns how many were scheduled. Blocking: call it from a thread."""
        enabled_at = self.backlog.enabled_at
        scheduled = 0
        cursor = None
        while True:
            page = self.queue.list(states=[JobState.SUCCEEDED], limit=200, cursor=cursor)
            for job in page.jobs:
                if (job.finished_at or 0.0) < enabled_at:
                    continue
                record = self.backlog.get(job.id)
                if record is None:
                    logger.info("Job %s succeeded without an upload scheduled; scheduling it now", job.id)
                    scheduled += self._create(job)
                elif record["state"] == "uploaded":
                    if not all(o.get("s3_key") for o in job.outputs):
                        self._annotate_uploaded(job.id, record["keys"])
                    if not self.keep_local:
                        _delete_local([o["path"] for o in job.outputs])
            cursor = page.next_cursor
            if cursor is None:
                return scheduled


def job_metadata(job: dict[str, Any], done: dict[str, dict[str, Any]],
                 name_of: Callable[[str, int, dict[str, Any]], str]) -> dict[str, Any]:
    """metadata.json: how the images were made (parameters, seed, workflow, timings) and where they are."""
    outputs = job["outputs"]
    studio = _studio_chunk(outputs[0]["path"]) if outputs else {}
    queued, started, finished = job.get("queued_at"), job.get("started_at"), job.get("finished_at")
    images = []
    for index, output in enumerate(outputs):
        info = done.get(name_of(job["id"], index, output), {})
        images.append({"key": info.get("key"), "sha256": info.get("sha256"), "size": output.get("size"),
                       "width": output.get("width"), "height": output.get("height"),
                       "content_type": output.get("content_type"), "node_id": output.get("node_id"),
                       "source": output.get("source")})
    return {
        "job_id": job["id"],
        "kind": job["kind"],
        "params": job["params"],
        "seed": (job["params"] or {}).get("seed"),
        "workflow": job.get("workflow"),
        "prompt_id": job.get("prompt_id"),
        "backend": public_url(job["backend"]) if job.get("backend") else None,
        "attempts": job.get("attempts"),
        "timings": {
            "queued_at": queued, "started_at": started, "finished_at": finished,
            "queue_wait_s": _span(queued, started), "run_s": _span(started, finished),
            "execution_ms": studio.get("execution_ms"),
        },
        "images": images,
    }



def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise StorageError(f"Cannot read the local file {path}: {exc.strerror or exc}.") from exc
    return digest.hexdigest(), size


def _studio_chunk(path: str) -> dict[str, Any]:
    """The studio's PNG text chunk, read from the chunks before the first IDAT only (not the pixels)."""
    head = bytearray()
    try:
        with open(path, "rb") as handle:
            head += handle.read(8)
            if not pngmeta.is_png(bytes(head)):
                return {}
            while len(head) < 16 * 1024 * 1024:
                header = handle.read(8)
                if len(header) < 8:
                    break
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    break
                head += header + handle.read(length + 4)
        return json.loads(pngmeta.read_text_chunks(bytes(head)).get(METADATA_KEY, "{}"))
    except (OSError, ValueError, struct.error):
        return {}


def _span(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


def _delete_local(paths: list[str]) -> None:
    """S3_KEEP_LOCAL=false: remove uploaded files (and their job folder once empty)."""
    for path in map(Path, paths):
        try:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
        except OSError as exc:
            logger.warning("Could not delete the uploaded local copy %s: %s", path, exc)
