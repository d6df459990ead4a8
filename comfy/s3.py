"""Optional S3-compatible storage: every output, and a ``metadata.json`` beside it, in a bucket you own.

Local files stay the source of truth. The worker saves each image under the data folder as always, then
:meth:`Uploader.schedule` records the job in a persistent backlog; the uploader's loop copies it to the
bucket in the background, so a slow or unreachable bucket never holds a job up::

    worker: save locally ─▶ queue.finish ─▶ Uploader.schedule(job) ─▶ backlog (<data>/uploads, diskcache)
    Uploader.run(): claim a due record ─▶ S3Store.upload(image_<n>) for each image ─▶ S3Store.put_metadata
        success       ─▶ record "uploaded" with its keys ─▶ queue.annotate: outputs gain ``s3_key``
                         (─▶ the local copy is deleted when S3_KEEP_LOCAL=false)
        StorageError  ─▶ attempts + 1, next try after a backoff; the job's note says
                         "saved locally, upload pending: <reason>"

Objects: ``<prefix>/jobs/<job_id>/image_<n>.png`` (``image/png``) and ``<prefix>/jobs/<job_id>/metadata.json``
(``application/json``: the job's parameters and seed, workflow, timings and images).

**Exactly once after success.** Each object is marked done in the backlog (one diskcache transaction) as
soon as S3 acknowledged it, and the job once all its objects are; nothing marked done is sent again, after a
retry or a restart, and scheduling a job the backlog already knows does nothing. The one window left, S3
stored an object but the acknowledgement was lost (a broken connection, a crash), is closed by looking
first: on a retry an object is sent only if the bucket does not already hold it with the same sha256 (each
object carries ``x-amz-meta-sha256``).

**No loss.** The backlog is a ``diskcache.Cache`` with eviction off (a plain one drops entries past 1 GB)
in its own folder, so pending uploads survive restarts and resume. A local file is deleted
(``S3_KEEP_LOCAL=false``) only after its job is recorded as uploaded. A job whose ``schedule`` call was
lost is found at the next start by a scan of succeeded jobs with no upload record.

**Backoff.** A failure from S3 pauses the whole uploader (exponential, jittered, capped), and while it is
failing one job at a time probes the bucket: an outage or a wrong key is not hammered by every job.

boto3 calls block, so they run in threads (``asyncio.to_thread``); the client is thread-safe and is
injected (tests, custom sessions) or built by :func:`make_s3_client`, never at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import boto3
import diskcache
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import exceptions as boto_errors
from botocore.config import Config

from . import pngmeta
from .errors import ComfyError, JobNotFound, StorageError
from .queue import Job, JobQueue, JobState, owner_alive, worker_id
from .storage import METADATA_KEY, safe_name

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["S3Store", "Uploader", "UploadStatus", "make_s3_client", "PENDING_NOTE"]

logger = logging.getLogger(__name__)

# -- names (defined once) ------------------------------------------------------------------------------

JOBS_FOLDER = "jobs"
METADATA_NAME = "metadata.json"
#: The note on a job whose upload waits; ": <reason>" follows when an attempt failed.
PENDING_NOTE = "saved locally, upload pending"

RECORD_KEY = "upload:{}"  # one job's upload: state, objects done, attempts, reason, lease
PENDING_KEY = "pending"  # {job_id: when it is due}, the backlog's order
STATE_KEY = "state"  # {"enabled_at": when this backlog was created}

#: Files above this size go multipart, in parts this size; with ``MAX_PARTS_IN_FLIGHT`` parts at a time an
#: upload holds about 4 x 8 MiB whatever the file size (and ``Uploader.concurrency`` uploads run at once).
MULTIPART_BYTES = 8 * 1024 * 1024
MAX_PARTS_IN_FLIGHT = 4

_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                               "TokenRefreshRequired", "InvalidClientTokenId", "UnrecognizedClientException"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "403", "Forbidden"})
_REGION_CODES = frozenset({"PermanentRedirect", "301", "AuthorizationHeaderMalformed",
                           "IllegalLocationConstraintException"})
_BUSY_CODES = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"})


# -- the client ------------------------------------------------------------------------------------------

def make_s3_client(settings: Settings, *, max_attempts: int = 3, connect_timeout: float = 5.0,
                   read_timeout: float = 60.0) -> Any:
    """A boto3 S3 client for ``settings``: the studio's own key when set, else boto3's default chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance role).

    ``max_attempts`` counts botocore's own quick retries of one request; the uploader retries beyond that.
    Raises :class:`StorageError` when boto3 cannot build it (an unknown ``AWS_PROFILE``...).
    """
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": settings.s3_addressing_style},
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # boto3 >= 1.36 adds CRC checksums to every PutObject, which several S3-compatible stores refuse.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_appid="comfyui-studio",
    )
    key_id = settings.s3_access_key_id.get_secret_value() if settings.s3_access_key_id else None
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    with _map_s3_errors(_where(settings), "set up the S3 client"):
        session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                        region_name=settings.s3_region)
        return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


# -- the one place boto3/botocore errors become StorageError ---------------------------------------------

@dataclass(frozen=True)
class _Where:
    """What an error sentence names: the bucket, the endpoint, which settings hold the credentials."""

    bucket: str
    endpoint: str
    credentials: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text


def _where(settings: Settings) -> _Where:
    own = settings.s3_access_key_id is not None
    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else ""
    return _Where(
        bucket=settings.s3_bucket or "?",
        endpoint=_public_url(settings.s3_endpoint_url) if settings.s3_endpoint_url
        else f"AWS S3 ({settings.s3_region or 'default region'})",
        credentials="S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY" if own
        else "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or set S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY)",
        secrets=(secret,),
    )


@contextlib.contextmanager
def _map_s3_errors(where: _Where, action: str) -> Iterator[None]:
    """Turn boto3/botocore errors into :class:`StorageError` with a sentence that says what to fix."""
    try:
        yield
    except S3UploadFailedError as exc:  # upload_file wraps the ClientError it got
        cause = exc.__cause__ or exc.__context__
        sentence = _sentence(cause if isinstance(cause, Exception) else exc, where, action)
        raise StorageError(where.scrub(sentence)) from exc
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as exc:
        raise StorageError(where.scrub(_sentence(exc, where, action))) from exc


def _sentence(exc: Exception, where: _Where, action: str) -> str:
    if isinstance(exc, boto_errors.ClientError):
        return _client_error_sentence(exc, where, action)
    name = type(exc).__name__
    if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError,
                        boto_errors.CredentialRetrievalError, boto_errors.ProfileNotFound)):
        return f"No usable S3 credentials ({name}): set {where.credentials}."
    if isinstance(exc, boto_errors.SSLError):
        return f"The TLS handshake with S3 at {where.endpoint} failed: check S3_ENDPOINT_URL (https or http?) " \
               "and the server's certificate."
    if isinstance(exc, boto_errors.ConnectionError):  # endpoint, connect timeout, proxy
        return f"Cannot reach S3 at {where.endpoint}: check S3_ENDPOINT_URL and the network ({name}); " \
               "uploads are retried."
    if isinstance(exc, boto_errors.HTTPClientError):  # read timeout, connection closed, broken stream
        return f"The connection to S3 at {where.endpoint} broke while trying to {action} ({name}); it is retried."
    if isinstance(exc, boto_errors.NoRegionError):
        return "S3 needs a region: set S3_REGION (us-east-1, or auto for Cloudflare R2)."
    if isinstance(exc, (boto_errors.InvalidDNSNameError, boto_errors.InvalidS3AddressingStyleError)):
        return f"Bucket {where.bucket} cannot be addressed that way: set S3_ADDRESSING_STYLE=path."
    return f"S3 failed to {action} ({name}: {exc})."


def _client_error_sentence(exc: boto_errors.ClientError, where: _Where, action: str) -> str:
    response: dict[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    status = meta.get("HTTPStatusCode")
    code = str(error.get("Code") or status or "unknown")
    if code in _CREDENTIAL_CODES:
        return f"S3 refused the credentials ({code}): check {where.credentials}."
    if code in _MISSING_BUCKET_CODES:
        return f"Bucket {where.bucket} does not exist at {where.endpoint}: create it, or fix S3_BUCKET " \
               "(and S3_ENDPOINT_URL / S3_REGION)."
    if code in _DENIED_CODES:
        return f"S3 refused access to bucket {where.bucket} ({code}): check {where.credentials}, and that this " \
               "key may read and write the bucket."
    if code in _REGION_CODES:
        region = (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region") or error.get("Region")
        hint = f"set S3_REGION={region}" if region else "set S3_REGION to the bucket's region"
        return f"Bucket {where.bucket} is in another region than the one configured ({code}): {hint}."
    if code in _BUSY_CODES or (isinstance(status, int) and status >= 500):
        return f"S3 at {where.endpoint} is failing or busy ({code}); uploads are retried."
    message = error.get("Message") or ""
    return f"S3 refused to {action} ({code}{': ' + message if message else ''})."


def _public_url(url: str) -> str:
    """The endpoint without user:password or query, for messages and /health."""
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- the bucket ------------------------------------------------------------------------------------------

class S3Store:
    """Objects of one bucket under one prefix. Every method blocks (call it from a thread) and raises
    :class:`StorageError`, with a sentence that says what to fix, for anything S3 or boto3 refuses.

    >>> store = S3Store(client=None, bucket="art", prefix="studio")
    >>> store.key("0123456789abcdef", "image_0.png")
    'studio/jobs/0123456789abcdef/image_0.png'
    """

    def __init__(self, client: Any, bucket: str, *, prefix: str = "", presign_seconds: int = 3600,
                 where: _Where | None = None, transfer: TransferConfig | None = None,
                 client_factory: Callable[[], Any] | None = None) -> None:
        self._client = client
        self._client_factory = client_factory
        self._client_lock = threading.Lock()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.presign_seconds = presign_seconds
        self._where = where or _Where(bucket, "S3", "the S3 credentials")
        self._transfer = transfer or TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES,
            max_concurrency=MAX_PARTS_IN_FLIGHT, preferred_transfer_client="classic",
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, client: Any = None) -> S3Store:
        """The store for ``settings.s3_bucket``; builds the client with :func:`make_s3_client` unless given."""
        if not settings.s3_bucket:
            raise StorageError("S3 storage is off: set S3_BUCKET to turn it on.")
        # Built at first use, in a thread, so a bad AWS_PROFILE is a pending reason, not a failed start-up.
        return cls(client, settings.s3_bucket, prefix=settings.s3_prefix,
                   presign_seconds=settings.s3_presign_seconds, where=_where(settings),
                   client_factory=lambda: make_s3_client(settings))

    @property
    def client(self) -> Any:
        """The boto3 client (thread-safe); raises :class:`StorageError` when it cannot be built."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    if self._client_factory is None:
                        raise StorageError("No S3 client was given.")
                    self._client = self._client_factory()
        return self._client

    @property
    def endpoint(self) -> str:
        return self._where.endpoint

    def key(self, job_id: str, name: str) -> str:
        """``<prefix>/jobs/<job_id>/<name>`` (no leading slash when the prefix is empty)."""
        return "/".join(part for part in (self.prefix, JOBS_FOLDER, safe_name(job_id), safe_name(name)) if part)

    def image_key(self, job_id: str, index: int, path: str | Path) -> str:
        return self.key(job_id, f"image_{index}{Path(path).suffix.lower() or '.png'}")

    def upload(self, job_id: str, index: int, path: str | Path, *, content_type: str = "image/png",
               sha256: str | None = None) -> str:
        """Stream one local file to ``.../image_<index><suffix>`` (multipart when large); returns the key."""
        key = self.image_key(job_id, index, path)
        extra: dict[str, Any] = {"ContentType": content_type}
        if sha256:
            extra["Metadata"] = {"sha256": sha256}
        try:
            with self._errors(f"upload {key}"):
                self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra, Config=self._transfer)
        except OSError as exc:  # the local file, not the bucket
            raise StorageError(f"Cannot read the local file {path}: {exc.strerror or exc}.") from exc
        return key

    def put_metadata(self, job_id: str, metadata: dict[str, Any]) -> str:
        """Write ``.../metadata.json`` (application/json); returns the key."""
        key = self.key(job_id, METADATA_NAME)
        body = json.dumps(metadata, ensure_ascii=False, indent=2).encode("utf-8")
        with self._errors(f"upload {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                   Metadata={"sha256": hashlib.sha256(body).hexdigest()})
        return key

    def holds(self, key: str, sha256: str) -> bool:
        """Whether the bucket already has ``key`` with these bytes (from its ``x-amz-meta-sha256``)."""
        with self._errors(f"look up {key}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key)
            except boto_errors.ClientError as exc:
                if (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") == 404:
                    return False
                raise
        return (head.get("Metadata") or {}).get("sha256") == sha256

    def presign(self, key: str, *, expires: int | None = None) -> str:
        """A GET URL for ``key``, valid ``S3_PRESIGN_SECONDS`` (signed locally: no request is made)."""
        with self._errors(f"sign a URL for {key}"):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=expires or self.presign_seconds,
            )

    def check(self) -> None:
        """HEAD the bucket: raises :class:`StorageError` saying what to fix when it cannot be used."""
        with self._errors(f"open bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return _map_s3_errors(self._where, action)


# -- the backlog and its loop ------------------------------------------------------------------------------

@dataclass(frozen=True)
class UploadStatus:
    """Where a job's upload is.

    ``uploaded``: every object is in the bucket (``keys``: the images in output order, then ``metadata_key``).
    ``pending``: saved locally, waiting to upload; ``reason`` is why the last attempt failed (None before one).
    ``off``: nothing to upload: S3 is off, or the job did not succeed or finished before S3 was turned on.
    """

    state: Literal["uploaded", "pending", "off"]
    keys: tuple[str, ...] = ()
    metadata_key: str | None = None
    reason: str | None = None
    attempts: int = 0
    next_attempt_at: float | None = None
    uploaded_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keys"] = list(self.keys)
        return data


OFF = UploadStatus("off")


class Uploader:
    """Uploads succeeded jobs' outputs in the background, from a backlog that survives restarts.

    Call :meth:`schedule` when a job succeeded and run :meth:`run` in the event loop. Backoff, concurrency,
    the lease and the clock are parameters so tests run fast. Raises nothing into callers: failures are
    recorded on the job (its note), in :meth:`status` and in :meth:`health`.
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
        self.directory = Path(directory)
        self.keep_local = keep_local
        self.concurrency = max(1, concurrency)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.stop_grace = stop_grace
        self.owner = worker_id()
        self._now = now
        self._rng = rng
        try:
            # Eviction off: a plain Cache drops entries past 1 GB, which here would lose pending uploads.
            self._cache = diskcache.Cache(str(self.directory), eviction_policy="none", size_limit=2**62,
                                          cull_limit=0, statistics=False, tag_index=False,
                                          sqlite_journal_mode="wal", sqlite_synchronous=1)
            self._cache.add(STATE_KEY, {"enabled_at": now()})
        except (OSError, diskcache.Timeout) as exc:
            raise StorageError(f"Cannot open the upload backlog in {self.directory}: {exc}.") from exc
        self._active: set[str] = set()
        self._failures = 0  # consecutive failed attempts (all jobs): drives the shared backoff
        self._resume_at = 0.0
        self._next_due: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._uploaded: dict[str, asyncio.Event] = {}
        self._slots: asyncio.Semaphore | None = None
        self._health: dict[str, Any] = {"reachable": None, "error": None, "checked_at": None,
                                        "last_upload_at": None}

    @classmethod
    def from_settings(cls, settings: Settings, queue: JobQueue, *, client: Any = None, **options: Any) -> Uploader:
        """The uploader for ``settings`` (backlog in ``<data>/uploads``); ``client`` replaces the boto3 client."""
        store = S3Store.from_settings(settings, client=client)
        return cls(store, queue, settings.data_dir / "uploads", keep_local=settings.s3_keep_local, **options)

    def close(self) -> None:
        self._cache.close()

    # -- what callers see ---------------------------------------------------------------------------

    def schedule(self, job: Job) -> None:
        """Queue a succeeded job's outputs for upload (a job already known is left alone). Never raises."""
        if job.state is not JobState.SUCCEEDED:
            return
        try:
            created = self._create(job)
        except (StorageError, diskcache.Timeout, OSError) as exc:
            logger.error("Could not schedule the upload of job %s (retried at the next start): %s", job.id, exc)
            return
        if created:
            self._notify()

    def status(self, job_id: str) -> UploadStatus:
        record = self._cache.get(RECORD_KEY.format(job_id))
        if record is None:
            return OFF
        if record["state"] == "uploaded":
            return UploadStatus("uploaded", tuple(record["keys"]), record["metadata_key"],
                                attempts=record["attempts"], uploaded_at=record["uploaded_at"])
        reason = record["reason"] or (self._health["error"] if self._failures else None)
        return UploadStatus("pending", reason=reason, attempts=record["attempts"], next_attempt_at=record["due"])

    def health(self) -> dict[str, Any]:
        """For ``/health``: configured, reachable (None before the first check), the last error as a sentence."""
        pending = self._cache.get(PENDING_KEY) or {}
        oldest = min((self._cache.get(RECORD_KEY.format(j)) or {}).get("scheduled_at", self._now())
                     for j in list(pending)[:1000]) if pending else None
        return {
            "configured": True,
            "bucket": self.store.bucket,
            "prefix": self.store.prefix,
            "endpoint": self.store.endpoint,
            **self._health,
            "pending": len(pending),
            "oldest_pending_s": None if oldest is None else round(max(self._now() - oldest, 0.0), 3),
            "retry_at": self._resume_at if self._failures else None,
        }

    def urls(self, job: Job) -> list[str]:
        """Presigned URLs of a job's images when its upload is done, else their local paths."""
        status = self.status(job.id)
        keys = [output.get("s3_key") for output in job.outputs]
        if status.state == "uploaded" and not all(keys) and len(status.keys) == len(keys):
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
        """Wait until the job is uploaded (raises ``TimeoutError`` after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status.state == "uploaded":
                return status
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"Job {job_id} was not uploaded in {timeout} s ({status.reason or status.state}).")
            signal = self._uploaded.setdefault(job_id, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):  # another process may upload it: look again
                await asyncio.wait_for(signal.wait(), min(left if left is not None else 1.0, 1.0))

    async def check(self) -> dict[str, Any]:
        """HEAD the bucket; a problem is logged as a sentence that says what to fix and kept for /health."""
        try:
            await asyncio.to_thread(self.store.check)
        except StorageError as exc:
            self._health.update(reachable=False, error=str(exc), checked_at=self._now())
            logger.warning("S3 storage is not usable yet (outputs stay local, uploads are retried): %s", exc)
        else:
            self._health.update(reachable=True, error=None, checked_at=self._now())
            logger.info("S3 storage: bucket %s at %s", self.store.bucket, self.store.endpoint)
        return self.health()

    # -- the loop ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Upload until ``stop`` is set: first a bucket check and a catch-up scan, then due jobs as they come."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(self.concurrency)
        tasks: dict[asyncio.Task[None], str] = {}
        checking = asyncio.create_task(self.check(), name="s3-check")  # reported, never waited for
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
                    tasks.pop(task)
        finally:
            checking.cancel()
            await self._drain(tasks)

    async def _start_due(self, tasks: dict[asyncio.Task[None], str]) -> None:
        now = self._now()
        if now < self._resume_at:
            return
        # While S3 fails, one job at a time probes it; the others wait for the backoff to end.
        room = (1 if self._failures else self.concurrency) - len(tasks)
        if room <= 0:
            return
        for record in await asyncio.to_thread(self._claim, room):
            self._active.add(record["job_id"])
            task = asyncio.create_task(self._attempt(record), name=f"upload-{record['job_id']}")
            tasks[task] = record["job_id"]

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
        """On stop, let running uploads finish briefly; leave the rest, released, for the next start."""
        if tasks:
            await asyncio.wait(list(tasks), timeout=self.stop_grace)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._active:
            with contextlib.suppress(diskcache.Timeout, OSError):
                await asyncio.to_thread(self._release, set(self._active))
            self._active.clear()

    def _notify(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:  # scheduled from another thread (a Gradio handler, a test)
            loop.call_soon_threadsafe(self._wake.set)

    # -- one attempt at one job -------------------------------------------------------------------------

    async def _attempt(self, record: dict[str, Any]) -> None:
        job_id = record["job_id"]
        try:
            missing = [o["path"] for i, o in enumerate(record["job"]["outputs"])
                       if Path(self.store.image_key(job_id, i, o["path"])).name not in record["done"]
                       and not Path(o["path"]).is_file()]
            if missing:  # this job's problem, not the bucket's: it backs off alone
                reason = f"the local file {missing[0]} is missing, so it cannot be uploaded"
                await self._failed(record, reason, shared=False)
                return
            try:
                keys = await self._upload_objects(record)
            except StorageError as exc:
                await self._failed(record, str(exc), shared=True)
                return
            await self._succeeded(record, keys)
        except (ComfyError, diskcache.Timeout, OSError) as exc:  # the backlog or the queue failed: retry later
            logger.error("Upload of job %s stopped: %s", job_id, exc)
            self._failures += 1
            self._resume_at = self._now() + self._delay(self._failures)
        except Exception as exc:  # a bug must not spin on one job nor stop the others: back off, loudly
            logger.exception("Upload of job %s failed unexpectedly", job_id)
            with contextlib.suppress(ComfyError, diskcache.Timeout, OSError):
                await self._failed(record, f"internal error: {type(exc).__name__}", shared=False)
        finally:
            self._active.discard(job_id)

    async def _upload_objects(self, record: dict[str, Any]) -> dict[str, str]:
        """Every image that is not done yet (at most ``concurrency`` at once), then metadata.json."""
        job = record["job"]
        done: dict[str, dict[str, Any]] = dict(record["done"])
        look_first = record["tries"] > 1  # an earlier try may have stored what it did not record
        assert self._slots is not None

        async def one(index: int, output: dict[str, Any]) -> None:
            name = Path(self.store.image_key(job["id"], index, output["path"])).name
            if name in done:
                return
            async with self._slots:
                info = await asyncio.to_thread(self._upload_image, job["id"], index, output, look_first)
            done[name] = info
            await asyncio.to_thread(self._mark_done, job["id"], name, info)

        results = await asyncio.gather(*(one(i, o) for i, o in enumerate(job["outputs"])), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if METADATA_NAME not in done:
            metadata = await asyncio.to_thread(self._metadata, job, done)
            async with self._slots:
                key = await asyncio.to_thread(self.store.put_metadata, job["id"], metadata)
            done[METADATA_NAME] = {"key": key}
            await asyncio.to_thread(self._mark_done, job["id"], METADATA_NAME, done[METADATA_NAME])
        return {name: info["key"] for name, info in done.items()}

    def _upload_image(self, job_id: str, index: int, output: dict[str, Any], look_first: bool) -> dict[str, Any]:
        path = Path(output["path"])
        digest, size = _sha256(path)
        key = self.store.image_key(job_id, index, path)
        if look_first and self.store.holds(key, digest):
            logger.info("%s was already in the bucket; not uploading it again", key)
        else:
            self.store.upload(job_id, index, path, content_type=output.get("content_type") or "image/png",
                              sha256=digest)
            logger.debug("Uploaded %s (%d bytes)", key, size)
        return {"key": key, "sha256": digest, "size": size}

    def _metadata(self, job: dict[str, Any], done: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """metadata.json: how the images were made (parameters, seed, workflow, timings) and where they are."""
        outputs = job["outputs"]
        studio = _studio_chunk(outputs[0]["path"]) if outputs else {}
        queued, started, finished = job.get("queued_at"), job.get("started_at"), job.get("finished_at")
        images = []
        for index, output in enumerate(outputs):
            name = Path(self.store.image_key(job["id"], index, output["path"])).name
            info = done.get(name, {})
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
            "backend": _public_url(job["backend"]) if job.get("backend") else None,
            "attempts": job.get("attempts"),
            "timings": {
                "queued_at": queued, "started_at": started, "finished_at": finished,
                "queue_wait_s": _span(queued, started), "run_s": _span(started, finished),
                "execution_ms": studio.get("execution_ms"),
            },
            "images": images,
        }

    async def _succeeded(self, record: dict[str, Any], keys: dict[str, str]) -> None:
        job = record["job"]
        job_id = job["id"]
        names = [Path(self.store.image_key(job_id, i, o["path"])).name for i, o in enumerate(job["outputs"])]
        image_keys = [keys[name] for name in names]
        await asyncio.to_thread(self._record_uploaded, job_id, image_keys, keys[METADATA_NAME], record)
        if self._failures:
            logger.info("Uploads to bucket %s work again", self.store.bucket)
        self._failures = 0
        self._resume_at = 0.0
        self._health.update(reachable=True, error=None, last_upload_at=self._now())
        logger.info("Job %s uploaded to bucket %s (%d image(s))", job_id, self.store.bucket, len(image_keys))
        await asyncio.to_thread(self._annotate_uploaded, job_id, image_keys)
        if not self.keep_local:
            await asyncio.to_thread(_delete_local, [o["path"] for o in job["outputs"]])
        signal = self._uploaded.pop(job_id, None)
        if signal is not None:
            signal.set()

    async def _failed(self, record: dict[str, Any], reason: str, *, shared: bool) -> None:
        now = self._now()
        if shared:
            self._failures += 1
            due = self._resume_at = now + self._delay(self._failures)
            changed = reason != self._health["error"]
            self._health.update(reachable=False, error=reason)
        else:
            due = now + self._delay(record["attempts"] + 1)
            changed = reason != record["reason"]
        log = logger.warning if changed else logger.debug
        log("Upload of job %s pending (attempt %d, next in %.1f s): %s", record["job_id"], record["attempts"] + 1,
            due - now, reason)
        ids = await asyncio.to_thread(self._record_failure, record["job_id"], reason, due, shared)
        for job_id in ids:  # a new reason: every job it holds up says so
            await asyncio.to_thread(self._annotate_pending, job_id, reason)

    def _delay(self, failures: int) -> float:
        """Exponential backoff with jitter, capped: base * 2^(n-1), times 0.5-1.0, at most ``backoff_cap``."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** min(failures - 1, 32))
        return ceiling * (0.5 + self._rng() / 2)

    # -- backlog transactions (short: no network inside) -------------------------------------------------

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        try:
            with self._cache.transact():
                yield
        except diskcache.Timeout as exc:
            raise StorageError("The upload backlog stayed locked too long; it is retried.") from exc

    def _create(self, job: Job) -> bool:
        now = self._now()
        with self._txn():
            key = RECORD_KEY.format(job.id)
            if self._cache.get(key) is not None:
                return False
            reason = self._health["error"] if self._failures else None
            self._cache.set(key, {
                "job_id": job.id, "state": "pending", "scheduled_at": now, "attempts": 0, "tries": 0,
                "reason": reason, "due": now, "lease": None, "done": {}, "keys": [], "metadata_key": None,
                "uploaded_at": None, "job": job.to_dict(),
            })
            pending = self._cache.get(PENDING_KEY) or {}
            pending[job.id] = now
            self._cache.set(PENDING_KEY, pending)
        if reason:  # S3 is failing right now: say so on the job at once
            self._annotate_pending(job.id, reason)
        return True

    def _claim(self, limit: int) -> list[dict[str, Any]]:
        now = self._now()
        claimed: list[dict[str, Any]] = []
        next_due = None
        with self._txn():
            pending = self._cache.get(PENDING_KEY) or {}
            stale = []
            for job_id, due in sorted(pending.items(), key=lambda item: item[1]):
                if job_id in self._active:
                    continue
                if due > now or len(claimed) >= limit:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                key = RECORD_KEY.format(job_id)
                record = self._cache.get(key)
                if record is None or record["state"] == "uploaded":
                    stale.append(job_id)
                    continue
                if _leased_elsewhere(record["lease"], self.owner, now):
                    continue
                record = {**record, "lease": [self.owner, now + self.lease_seconds], "tries": record["tries"] + 1}
                self._cache.set(key, record)
                claimed.append(record)
            if stale:
                for job_id in stale:
                    pending.pop(job_id, None)
                self._cache.set(PENDING_KEY, pending)
        self._next_due = next_due
        return claimed

    def _mark_done(self, job_id: str, name: str, info: dict[str, Any]) -> None:
        with self._txn():
            key = RECORD_KEY.format(job_id)
            record = self._cache.get(key)
            if record is not None:
                done = {**record["done"], name: info}
                self._cache.set(key, {**record, "done": done, "lease": [self.owner, self._now() + self.lease_seconds]})

    def _record_uploaded(self, job_id: str, keys: list[str], metadata_key: str, claimed: dict[str, Any]) -> None:
        with self._txn():
            self._cache.set(RECORD_KEY.format(job_id), {
                "job_id": job_id, "state": "uploaded", "scheduled_at": claimed["scheduled_at"],
                "attempts": claimed["attempts"], "keys": keys, "metadata_key": metadata_key,
                "uploaded_at": self._now(),
            })
            pending = self._cache.get(PENDING_KEY) or {}
            if pending.pop(job_id, None) is not None:
                self._cache.set(PENDING_KEY, pending)

    def _record_failure(self, job_id: str, reason: str, due: float, shared: bool) -> list[str]:
        """Record the failed attempt; returns the jobs whose note should now show ``reason``."""
        changed = []
        with self._txn():
            pending = self._cache.get(PENDING_KEY) or {}
            for other in list(pending) if shared else [job_id]:
                key = RECORD_KEY.format(other)
                record = self._cache.get(key)
                if record is None or record["state"] == "uploaded":
                    continue
                if other == job_id:
                    record = {**record, "attempts": record["attempts"] + 1, "lease": None}
                elif other in self._active:
                    continue
                if record["reason"] != reason:
                    changed.append(other)
                pending[other] = max(pending[other], due)
                self._cache.set(key, {**record, "reason": reason, "due": pending[other]})
            self._cache.set(PENDING_KEY, pending)
        return changed

    def _release(self, job_ids: set[str]) -> None:
        with self._txn():
            for job_id in job_ids:
                key = RECORD_KEY.format(job_id)
                record = self._cache.get(key)
                if record is not None and record.get("lease") and record["lease"][0] == self.owner:
                    self._cache.set(key, {**record, "lease": None})

    # -- the job record -----------------------------------------------------------------------------------

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
            pass  # pruned meanwhile: the backlog still has the keys
        except ComfyError as exc:
            logger.warning("Job %s is uploaded but its record could not say so yet: %s", job_id, exc)

    def catch_up(self) -> int:
        """At start: schedule succeeded jobs that have no upload record (a lost ``schedule`` call), and finish
        what a crash interrupted (annotate, delete local copies). Only jobs that finished after S3 was turned
        on are considered. Returns how many were scheduled. Blocking: call it from a thread."""
        enabled_at = (self._cache.get(STATE_KEY) or {}).get("enabled_at", 0.0)
        scheduled = 0
        cursor = None
        while True:
            page = self.queue.list(states=[JobState.SUCCEEDED], limit=200, cursor=cursor)
            for job in page.jobs:
                if (job.finished_at or 0.0) < enabled_at:
                    continue
                record = self._cache.get(RECORD_KEY.format(job.id))
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


# -- helpers -------------------------------------------------------------------------------------------------

def _leased_elsewhere(lease: list[Any] | None, owner: str, now: float) -> bool:
    """True while another live uploader (another process) holds the job."""
    if not lease or lease[0] == owner:
        return False
    holder, expires = lease
    return expires > now and owner_alive(holder) is not False


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
    """The studio's PNG text chunk, read from the file's header (the chunks before the first IDAT) only."""
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
