"""All of ComfyUI Studio's settings, read once from the environment and ``.env``.

Names fixed by the product (``COMFYUI_URL``) keep exactly that spelling; the studio's own settings
carry the ``STUDIO_`` prefix so they never collide with ComfyUI's or RunPod's variables.
Build it with :func:`load_settings` in an entry point and pass it down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from comfy.errors import ConfigError

__all__ = ["Settings", "load_settings", "redact_url", "DEFAULT_DATA_DIR"]

#: The project folder (where app.py is): its ``data`` folder is the default, whatever folder a command
#: runs in, so the page and ``python -m comfy`` started anywhere share one queue.
PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_DIR / "data"


def _env(name: str, field: str) -> AliasChoices:
    # The env name is the contract; the field name is accepted too, so tests can pass kwargs.
    return AliasChoices(name, field)


class Settings(BaseSettings):
    """ComfyUI Studio's configuration (see the README's configuration table)."""

    model_config = SettingsConfigDict(
        env_file=(PROJECT_DIR / ".env", ".env"),  # the project's, then the current folder's (it wins)
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # a SecretStr would otherwise be echoed in a ValidationError
        populate_by_name=True,
    )

    # -- the backend ------------------------------------------------------------------------------
    comfyui_url: str = Field(
        "http://127.0.0.1:8188",
        validation_alias=_env("COMFYUI_URL", "comfyui_url"),
        description="ComfyUI server URL, e.g. a RunPod pod's https://<pod>-8188.proxy.runpod.net.",
    )
    comfyui_headers: SecretStr | None = Field(
        None,
        validation_alias=_env("COMFYUI_HEADERS", "comfyui_headers"),
        description='Extra request headers for an authenticating proxy, as JSON: {"Authorization": "Bearer ..."}.',
    )
    connect_timeout: float = Field(10.0, gt=0, validation_alias=_env("STUDIO_CONNECT_TIMEOUT", "connect_timeout"))
    request_timeout: float = Field(60.0, gt=0, validation_alias=_env("STUDIO_REQUEST_TIMEOUT", "request_timeout"))
    job_timeout: float = Field(
        3600.0, gt=0, validation_alias=_env("STUDIO_JOB_TIMEOUT", "job_timeout"),
        description="Longest a job may run on the backend before it fails as timed out (seconds).",
    )
    ws_ping_interval: float = Field(
        20.0, gt=0, validation_alias=_env("STUDIO_WS_PING_INTERVAL", "ws_ping_interval"),
        description="WebSocket keep-alive ping; RunPod's proxy drops connections idle for ~100 s.",
    )
    max_in_flight: int = Field(
        2, ge=1, le=64, validation_alias=_env("STUDIO_MAX_IN_FLIGHT", "max_in_flight"),
        description="Prompts kept queued on a backend at once; 2 keeps the GPU busy between jobs.",
    )

    demo: bool = Field(
        False, validation_alias=_env("STUDIO_DEMO", "demo"),
        description="Run on the built-in demo backend: placeholder pictures drawn on the CPU, no ComfyUI needed.",
    )
    mcp: bool = Field(
        False, validation_alias=_env("STUDIO_MCP", "mcp"),
        description="Serve the page's named endpoints (generate, job_status, cancel, jobs) as MCP tools at "
                    "/gradio_api/mcp/ for assistants (Gradio's MCP server; needs the mcp package).",
    )

    # -- the studio's own state --------------------------------------------------------------------
    data_dir: Path = Field(
        DEFAULT_DATA_DIR, validation_alias=_env("STUDIO_DATA_DIR", "data_dir"),
        description="The queue (on a local disk), outputs, kept inputs and saved workflows; resolved once.",
    )
    outputs_dir_override: Path | None = Field(
        None, validation_alias=_env("STUDIO_OUTPUTS_DIR", "outputs_dir"),
        description="Where finished images go (default <data>/outputs); may be a network mount, unlike the queue.",
    )
    retention_days: float = Field(
        0.0, ge=0, validation_alias=_env("STUDIO_RETENTION_DAYS", "retention_days"),
        description="Finished jobs older than this many days are removed with their files; 0 keeps them for ever.",
    )
    max_attempts: int = Field(
        3, ge=1, le=20, validation_alias=_env("STUDIO_MAX_ATTEMPTS", "max_attempts"),
        description="How often a job is submitted at most when the backend loses it or cannot be reached.",
    )
    lease_seconds: float = Field(
        30.0, gt=0, validation_alias=_env("STUDIO_LEASE_SECONDS", "lease_seconds"),
        description="A worker that stops renewing its claim for this long is presumed dead.",
    )

    # -- Redis (optional: on when REDIS_URL is set; see comfy/jobs/redis_store.py) ------------------------
    redis_url: SecretStr | None = Field(
        None, validation_alias=_env("REDIS_URL", "redis_url"),
        description="Keep the queue, leases, idempotency keys and job events in Redis, shared by several "
                    "replicas and workers: redis://host:6379/0, rediss://... (TLS), unix:///path.sock. "
                    "Unset = diskcache in STUDIO_DATA_DIR (one machine). A password in it is a secret.",
    )
    redis_prefix: str = Field(
        "studio", validation_alias=_env("REDIS_PREFIX", "redis_prefix"),
        description="The start of every key and channel the studio uses in Redis (several studios can share one).",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_blank_is_unset(cls, value: object) -> object:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        return None if isinstance(raw, str) and not raw.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value().strip()
        parts = urlsplit(url)  # messages never repeat the URL: it may hold a password
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// (TLS) or unix://, e.g. redis://127.0.0.1:6379/0")
        try:
            _ = parts.port  # raises for a port that is not a number
        except ValueError:
            raise ValueError("has a port that is not a number; e.g. redis://127.0.0.1:6379/0") from None
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("must name the socket file, e.g. unix:///run/redis/redis.sock")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("must name a host, e.g. redis://127.0.0.1:6379/0")
        return SecretStr(url)

    @field_validator("redis_prefix")
    @classmethod
    def _check_redis_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:{}-]{1,64}", value.strip()):
            raise ValueError("must be 1-64 letters, digits or . _ - : { } (no spaces), e.g. studio")
        return value.strip()

    run_worker: bool = Field(
        True, validation_alias=_env("STUDIO_WORKER", "run_worker"),
        description="Run a worker in this process. STUDIO_WORKER=0 makes a replica that serves the page and the "
                    "API only, beside workers started with `python -m comfy worker` on the same REDIS_URL.",
    )
    shared_data: bool = Field(
        False, validation_alias=_env("STUDIO_SHARED_DATA", "shared_data"),
        description="Say that the outputs folder (STUDIO_OUTPUTS_DIR, by default in STUDIO_DATA_DIR) is one every "
                    "replica and worker mounts (a shared volume), so any of them serves any job's images without S3.",
    )

    @property
    def redis_url_redacted(self) -> str | None:
        """``REDIS_URL`` fit to show or log: the password replaced by ``***``."""
        return redact_url(self.redis_url.get_secret_value()) if self.redis_url is not None else None
    # -- end of Redis ----------------------------------------------------------------------------------------

    # -- input limits ---------------------------------------------------------------------------------
    max_width: int = Field(2048, ge=64, validation_alias=_env("STUDIO_MAX_WIDTH", "max_width"))
    max_height: int = Field(2048, ge=64, validation_alias=_env("STUDIO_MAX_HEIGHT", "max_height"))
    max_steps: int = Field(150, ge=1, validation_alias=_env("STUDIO_MAX_STEPS", "max_steps"))
    max_batch_size: int = Field(16, ge=1, validation_alias=_env("STUDIO_MAX_BATCH_SIZE", "max_batch_size"))
    max_prompt_length: int = Field(
        10_000, ge=1, validation_alias=_env("STUDIO_MAX_PROMPT_LENGTH", "max_prompt_length")
    )
    max_upload_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, validation_alias=_env("STUDIO_MAX_UPLOAD_BYTES", "max_upload_bytes")
    )

    # -- serving: the studio UI and the REST API ---------------------------------------------------
    server_name: str = Field("127.0.0.1", validation_alias=_env("GRADIO_SERVER_NAME", "server_name"))
    server_port: int = Field(7860, ge=1, le=65535, validation_alias=_env("GRADIO_SERVER_PORT", "server_port"))
    share: bool = Field(False, validation_alias=_env("SHARE", "share"),
                        description="Make a public Gradio share link (refused without AUTH_USERS).")
    allow_share_without_auth: bool = Field(
        False, validation_alias=_env("STUDIO_ALLOW_SHARE_WITHOUT_AUTH", "allow_share_without_auth"),
        description="Allow a public share link with no login (anyone with the link can use the GPU).",
    )
    auth_users: SecretStr | None = Field(
        None, validation_alias=_env("AUTH_USERS", "auth_users"),
        description="UI logins as user:password pairs separated by commas; a password may be a "
                    "pbkdf2_sha256$<iterations>$<salt>$<hash> hash.",
    )
    api_keys: SecretStr | None = Field(
        None, validation_alias=_env("API_KEYS", "api_keys"),
        description="REST API keys separated by commas (Authorization: Bearer <key>); none = open API.",
    )
    rate_limit_per_minute: int = Field(
        120, ge=0, validation_alias=_env("STUDIO_RATE_LIMIT_PER_MINUTE", "rate_limit_per_minute"),
        description="REST requests per minute per API key (or per client IP); 0 turns the limit off.",
    )
    max_request_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, validation_alias=_env("STUDIO_MAX_REQUEST_BYTES", "max_request_bytes")
    )
    sync_wait_seconds: float = Field(
        120.0, gt=0, validation_alias=_env("STUDIO_SYNC_WAIT_SECONDS", "sync_wait_seconds"),
        description="How long POST /api/v1/generate waits before answering 202 with the job to poll.",
    )

    # -- S3 storage (optional: on when S3_BUCKET is set; see comfy/storage/s3.py) --------------------
    s3_bucket: str | None = Field(
        None, validation_alias=_env("S3_BUCKET", "s3_bucket"),
        description="Bucket that receives every output (AWS S3, Cloudflare R2, MinIO, a Hugging Face bucket); "
                    "unset = local files only.",
    )
    s3_prefix: str = Field(
        "", validation_alias=_env("S3_PREFIX", "s3_prefix"),
        description="Key prefix: objects go to <prefix>/jobs/<job_id>/image_<n>.png and .../metadata.json.",
    )
    s3_endpoint_url: str | None = Field(
        None, validation_alias=_env("S3_ENDPOINT_URL", "s3_endpoint_url"),
        description="For S3-compatible stores: https://<account>.r2.cloudflarestorage.com, http://minio:9000, "
                    "https://s3.hf.co/<namespace>; unset = AWS.",
    )
    s3_region: str | None = Field(
        None, validation_alias=_env("S3_REGION", "s3_region"),
        description="Region (us-east-1, auto for R2); unset = boto3's default (AWS_REGION, the profile).",
    )
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", validation_alias=_env("S3_ADDRESSING_STYLE", "s3_addressing_style"),
        description="path (MinIO, most self-hosted stores), virtual (bucket.host), or auto.",
    )
    s3_access_key_id: SecretStr | None = Field(
        None, validation_alias=_env("S3_ACCESS_KEY_ID", "s3_access_key_id"),
        description="The studio's own S3 key; unset = boto3's default chain (AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY, a profile, an instance role).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        None, validate_default=True,  # so the pair is checked even when only the key id is set
        validation_alias=_env("S3_SECRET_ACCESS_KEY", "s3_secret_access_key"),
    )
    s3_presign_seconds: int = Field(
        3600, ge=1, le=604_800, validation_alias=_env("S3_PRESIGN_SECONDS", "s3_presign_seconds"),
        description="Lifetime of the presigned URLs shown in the gallery and the API (at most 7 days, SigV4).",
    )
    s3_keep_local: bool = Field(
        True, validation_alias=_env("S3_KEEP_LOCAL", "s3_keep_local"),
        description="Keep the local copy after upload; false deletes it once the bucket has it.",
    )

    @field_validator("s3_bucket", "s3_endpoint_url", "s3_region", mode="before")
    @classmethod
    def _s3_blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("s3_bucket")
    @classmethod
    def _check_s3_bucket(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{2,254}", value.strip()):
            raise ValueError("must be a bucket name (3-255 letters, digits, dots, hyphens or underscores), "
                             "without s3:// or a path; put a folder in S3_PREFIX")
        return value.strip() if value is not None else None

    @field_validator("s3_prefix")
    @classmethod
    def _check_s3_prefix(cls, value: str) -> str:
        prefix = value.strip().strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError("must be a key prefix such as studio/outputs (no empty, . or .. parts)")
        return prefix

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_s3_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.query:
            raise ValueError("must be an http:// or https:// URL naming a host, without credentials or a query")
        return value.strip().rstrip("/")

    @field_validator("s3_region")
    @classmethod
    def _check_s3_region(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,40}", value.strip()):
            raise ValueError("must be a region name such as us-east-1 (or auto for Cloudflare R2)")
        return value.strip() if value is not None else None

    @field_validator("s3_access_key_id", "s3_secret_access_key")
    @classmethod
    def _check_s3_key_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            value = None
        if info.field_name == "s3_secret_access_key":
            # Messages name the variables only: the values are secrets.
            key_id = info.data.get("s3_access_key_id")
            if key_id is not None and value is None:
                raise ValueError("is required when S3_ACCESS_KEY_ID is set (set both, or neither to use "
                                 "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)")
            if key_id is None and value is not None:
                raise ValueError("is set but S3_ACCESS_KEY_ID is not; set both, or neither")
        return value
    # -- end of S3 storage ---------------------------------------------------------------------------

    # -- RunPod Serverless (optional: on when RUNPOD_ENDPOINT_ID is set; see comfy/backends/runpod.py) --
    runpod_endpoint_id: str | None = Field(
        None, validation_alias=_env("RUNPOD_ENDPOINT_ID", "runpod_endpoint_id"),
        description="A RunPod Serverless endpoint running worker-comfyui; joins the pool of backends. "
                    "Without COMFYUI_URL set, the endpoint is the only backend.",
    )
    runpod_api_key: SecretStr | None = Field(
        None, validate_default=True,  # so a missing key is reported when the endpoint is set
        validation_alias=_env("RUNPOD_API_KEY", "runpod_api_key"),
        description="RunPod API key (sent as Authorization: Bearer; never logged).",
    )
    runpod_base_url: str = Field(
        "https://api.runpod.ai/v2", validation_alias=_env("RUNPOD_BASE_URL", "runpod_base_url"),
        description="RunPod's serverless API; requests go to <base>/<endpoint_id>/run, /status/<id>, ...",
    )
    runpod_max_in_flight: int = Field(
        4, ge=1, le=200, validation_alias=_env("STUDIO_RUNPOD_MAX_IN_FLIGHT", "runpod_max_in_flight"),
        description="Jobs kept at the endpoint at once (it scales its GPU workers up to its own maximum).",
    )
    runpod_checkpoints: str | None = Field(
        None, validation_alias=_env("STUDIO_RUNPOD_CHECKPOINTS", "runpod_checkpoints"),
        description="Checkpoints the endpoint's image has, separated by commas; unset = assume it has any "
                    "checkpoint a job asks for.",
    )
    runpod_ttl: float = Field(
        86_400.0, ge=10, le=604_800, validation_alias=_env("STUDIO_RUNPOD_TTL", "runpod_ttl"),
        description="Seconds a job may live at RunPod, queue and run together, before RunPod deletes it.",
    )
    failover_seconds: float = Field(
        15.0, gt=0, validation_alias=_env("STUDIO_FAILOVER_SECONDS", "failover_seconds"),
        description="With several backends: how long one that stopped answering may take to come back "
                    "before its running jobs are submitted to another.",
    )

    @field_validator("runpod_endpoint_id", "runpod_checkpoints", mode="before")
    @classmethod
    def _runpod_blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("runpod_endpoint_id")
    @classmethod
    def _check_runpod_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", value.strip()):
            raise ValueError("must be the endpoint's id (letters, digits, - and _), not its URL")
        return value.strip() if value is not None else None

    @field_validator("runpod_api_key")
    @classmethod
    def _check_runpod_key(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            value = None
        if value is None and info.data.get("runpod_endpoint_id"):
            raise ValueError("is required when RUNPOD_ENDPOINT_ID is set")  # names only: the value is a secret
        return value

    @field_validator("runpod_base_url")
    @classmethod
    def _check_runpod_base(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError("must be an http:// or https:// URL such as https://api.runpod.ai/v2")
        return value.strip().rstrip("/")

    @property
    def runpod_checkpoint_list(self) -> list[str] | None:
        """The endpoint's checkpoints when configured; None means "assume it has any"."""
        if self.runpod_checkpoints is None:
            return None
        return [name.strip() for name in self.runpod_checkpoints.split(",") if name.strip()]
    # -- end of RunPod Serverless ------------------------------------------------------------------------

    @field_validator("comfyui_url")
    @classmethod
    def _check_urls(cls, value: str) -> str:
        urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("give at least one URL, such as http://127.0.0.1:8188")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("each URL must start with http:// or https:// and name a host")
        return ",".join(urls)

    @field_validator("comfyui_headers")
    @classmethod
    def _check_headers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_headers(value.get_secret_value())
        return value

    @field_validator("auth_users")
    @classmethod
    def _check_users(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_pairs(value.get_secret_value())
        return value

    @property
    def comfyui_urls(self) -> list[str]:
        """The backend URLs, in the order given."""
        return self.comfyui_url.split(",")

    def backend_headers(self) -> dict[str, str]:
        """The extra headers for every request to the backend (secret: never log the result)."""
        if self.comfyui_headers is None:
            return {}
        return _parse_headers(self.comfyui_headers.get_secret_value())

    def users(self) -> dict[str, str]:
        """UI logins, user -> password or password hash (secret: never log the result)."""
        return _parse_pairs(self.auth_users.get_secret_value()) if self.auth_users else {}

    def keys(self) -> list[str]:
        """REST API keys (secret: never log the result)."""
        if self.api_keys is None:
            return []
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    @field_validator("data_dir", "outputs_dir_override")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Resolved once, at start-up: a later chdir (or a command run elsewhere) sees the same folder.
        return None if value is None or str(value) == "" else Path(value).expanduser().absolute()

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def outputs_dir(self) -> Path:
        return self.outputs_dir_override or self.data_dir / "outputs"

    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"


def redact_url(url: str) -> str:
    """``url`` without its password, in the address or in the query as redis-py also reads it, to show or log.

    >>> redact_url("redis://user:hunter2@host:6379/0"), redact_url("unix:///run/redis.sock?password=hunter2&db=0")
    ('redis://user:***@host:6379/0', 'unix:///run/redis.sock?password=***&db=0')
    """
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if parts.query:
        query = [(key, "***" if "password" in key.lower() else value)
                 for key, value in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="*"))
    # Written out by hand: geturl() drops the // of an empty host (unix:///path.sock).
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "") + \
        (f"#{parts.fragment}" if parts.fragment else "")


def _parse_headers(raw: str) -> dict[str, str]:
    # Deliberately vague messages: the value is a secret and must not be echoed back.
    try:
        headers = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError('must be a JSON object such as {"Authorization": "Bearer <token>"}') from None
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError('must be a JSON object of strings such as {"Authorization": "Bearer <token>"}')
    return headers


def _parse_pairs(raw: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError("must be user:password pairs separated by commas, e.g. alice:s3cret,bob:hunter2")
        pairs[user.strip()] = password
    if not pairs:
        raise ValueError("names no user; give user:password pairs or leave it unset")
    return pairs


def _env_name(field_name: str) -> str:
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field else None
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return field_name.upper()


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raises :class:`ConfigError` naming each variable that is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"{_env_name(loc)}: {err['msg']}")
        raise ConfigError("Invalid configuration:\n  " + "\n  ".join(lines)) from None
