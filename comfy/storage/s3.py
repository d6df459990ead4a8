"""Optional S3-compatible storage: every output, and a ``metadata.json`` beside it, in a bucket you own.

AWS S3, Cloudflare R2, MinIO or a Hugging Face bucket (``S3_ENDPOINT_URL=https://s3.hf.co/<namespace>``).
Local files stay the source of truth: the worker saves each image under the data folder as always, and
:class:`~comfy.storage.uploader.Uploader` copies it to the bucket in the background, from
a backlog that survives restarts, so a slow or unreachable bucket never holds a job up and loses nothing.

This module is the bucket side: :func:`make_s3_client` (the studio's own key, or boto3's default chain),
:class:`S3Store` (keys, content types, streaming and multipart uploads, presigned URLs, the start-up check),
and :func:`_map_s3_errors`, the one place where boto3/botocore errors become :class:`StorageError`, with a
sentence that says what to fix and never a secret.

Objects: ``<prefix>/jobs/<job_id>/image_<n>.png`` (``image/png``) and ``<prefix>/jobs/<job_id>/metadata.json``
(``application/json``). Each carries ``x-amz-meta-sha256``, which lets a retry see what is already there.

boto3 calls block: callers run them in threads (``asyncio.to_thread``). The client is thread-safe, injected
(tests, custom sessions) or built at first use from the settings, never at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore import exceptions as boto_errors
from botocore.config import Config

from comfy.errors import StorageError
from comfy.storage.local import safe_name

if TYPE_CHECKING:
    from comfy.settings import Settings

__all__ = ["METADATA_NAME", "S3Store", "make_s3_client", "public_url"]

logger = logging.getLogger(__name__)

# -- names (defined once) ------------------------------------------------------------------------------

JOBS_FOLDER = "jobs"
METADATA_NAME = "metadata.json"

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
        endpoint=public_url(settings.s3_endpoint_url) if settings.s3_endpoint_url
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


def public_url(url: str) -> str:
    """A URL without user:password or query (tokens), for messages, /health and metadata.json."""
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
