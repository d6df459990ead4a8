"""Who is calling, may they, and how much: API keys, the per-caller rate limit, the request size limit.

* **Keys.** With ``API_KEYS`` set, every ``/api/v1`` route, ``/models`` and ``/ws/jobs/{id}`` need
  ``Authorization: Bearer <key>`` (401 otherwise). Keys are compared in constant time, each against
  every configured key. A caller is known by a stable id derived from its key (``key:`` + 16 hex of
  its sha256), never by the key: that id owns the caller's jobs and scopes its idempotency keys.
  Health, readiness and metrics stay open, as orchestrators and scrapers call them without a key.
* **Rate limit.** A token bucket per caller id (per client IP when the API is open, and for requests
  whose key is wrong, so guessing keys is slow too): ``STUDIO_RATE_LIMIT_PER_MINUTE``, 0 = off; 429
  with ``Retry-After`` (whole seconds).
* **Size.** ``STUDIO_MAX_REQUEST_BYTES`` per request body under ``/api/``: 413 when ``Content-Length``
  says so, or as soon as a streamed (chunked) body passes it. The UI's own routes keep Gradio's limits.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from api.errors import ApiError, BodyTooLarge, Scrubber, error_response
from api.ratelimit import TokenBucket
from comfy.service import Studio
from comfy.settings import Settings

__all__ = ["ApiContext", "BodyLimitMiddleware", "Caller", "Guard", "bearer", "key_id"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Only for the OpenAPI document (the padlock in /docs); :class:`Guard` reads the header itself.
bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                    description="An API key from API_KEYS. Required only when API_KEYS is set.")


def key_id(key: str) -> str:
    """The stable, non-secret id of an API key: ``key:`` + the first 16 hex digits of its sha256."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Caller:
    """An authenticated (or, on an open API, anonymous) caller."""

    #: Owner of the caller's jobs: the key's id, or None on an open API (jobs are shared then).
    owner: str | None
    #: What the rate limit counts against.
    bucket: str


class Guard:
    """Checks one request: key first, then the rate limit. Raises :class:`ApiError` (401 / 429)."""

    def __init__(self, settings: Settings, limiter: TokenBucket | None = None) -> None:
        self._keys = [(key.encode(), key_id(key)) for key in settings.keys()]
        self.limiter = limiter or TokenBucket(settings.rate_limit_per_minute)

    @property
    def open(self) -> bool:
        return not self._keys

    def check(self, conn: HTTPConnection) -> Caller:
        if self.open:
            caller = Caller(owner=None, bucket=_ip_bucket(conn))
        else:
            owner = self._owner(conn)
            caller = Caller(owner=owner, bucket=owner)
        self._limit(caller.bucket)
        return caller

    def _owner(self, conn: HTTPConnection) -> str:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            self._limit(_ip_bucket(conn))
            raise ApiError(401, "unauthorized", "This API needs a key: send the header 'Authorization: Bearer <key>'.",
                           headers={"WWW-Authenticate": "Bearer"})
        given = token.encode()
        found = None
        for key, ident in self._keys:  # every key is compared, so timing says nothing about which matched
            if hmac.compare_digest(given, key):
                found = ident
        if found is None:
            self._limit(_ip_bucket(conn))
            raise ApiError(401, "unauthorized", "The API key is not valid.",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found

    def _limit(self, bucket: str) -> None:
        wait = self.limiter.acquire(bucket)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited",
                           f"Too many requests: the limit is {self.limiter.per_minute} a minute. "
                           f"Try again in {seconds} s.",
                           headers={"Retry-After": str(seconds), "RateLimit-Limit": str(self.limiter.per_minute)})


@dataclass
class ApiContext:
    """What every route needs; built once by :func:`api.app.create_api`."""

    studio: Studio
    settings: Settings
    guard: Guard
    scrub: Scrubber
    #: Seconds between keep-alive comments on an idle event stream.
    keepalive: float = 15.0

    async def caller(self, request: Request,
                     _credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Caller:
        """FastAPI dependency: the checked caller of this request."""
        return self.guard.check(request)

    def may_see(self, caller: Caller, job_owner: str | None) -> bool:
        """Keys see only their own jobs; an open API shows every job."""
        return self.guard.open or caller.owner == job_owner


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes on paths under ``prefix`` (413, JSON)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, limit: int,
                 prefix: str = "/api/") -> None:
        self.app = app
        self.limit = limit
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.limit:
            response = error_response(413, "payload_too_large",
                                      f"The request body is {length} bytes; the limit is {self.limit} bytes.",
                                      headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


def _ip_bucket(conn: HTTPConnection) -> str:
    return f"ip:{conn.client.host if conn.client else 'unknown'}"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
