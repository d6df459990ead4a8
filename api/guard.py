"""Who is calling, may they, and how much: API keys and logins, the per-caller rate limit, the size limit.

* **Who.** With ``API_KEYS`` or ``AUTH_USERS`` set, every ``/api/v1`` route, ``/models`` and
  ``/ws/jobs/{id}`` need credentials (401 otherwise): ``Authorization: Bearer <key>`` for a key, or
  ``Authorization: Basic <base64 user:password>`` for a login of ``AUTH_USERS`` (the page's logins).
  Keys are compared in constant time, each against every configured key; passwords are checked off the
  event loop by :class:`comfy.auth.PasswordChecker`. A key's caller is known by a stable id (``key:`` +
  16 hex of the key's sha256), never by the key; a login's caller by the user name, the same owner the
  page gives that user's jobs, so both doors show a user the same jobs. That id owns the caller's jobs
  and scopes its idempotency keys. Liveness, readiness, status and metrics stay open (orchestrators and
  scrapers call them without credentials); they carry no prompts and no user data.
* **Rate limit.** A token bucket per caller id (per client IP when the API is open, and for requests
  without usable credentials): ``STUDIO_RATE_LIMIT_PER_MINUTE``, 0 = off; 429 with ``Retry-After`` (whole
  seconds). Credentials are paid for *before* they are checked: a key costs a token of the address's
  bucket, a login one of the address's and one of the user name's login buckets
  (:meth:`comfy.auth.PasswordChecker.attempt`), each given back when the credentials were right. An empty
  bucket answers 429 without looking at them, so the limit tells a guesser nothing (were it charged after
  the check, a limited guess would get 429 when wrong and 200 when right). Too many password checks at
  once answer 503 with ``Retry-After`` at once, rather than queueing.
* **Parsing.** The ``Authorization`` header is read here, not by FastAPI's ``HTTPBasic`` (which answers 401
  to a malformed header even where nothing is required): an open API ignores it; a protected one answers
  401 with a sentence to any malformed value, never 500.
* **Size.** ``STUDIO_MAX_REQUEST_BYTES`` per request body under ``/api/``: 413 when ``Content-Length``
  says so, or as soon as a streamed (chunked) body passes it. The UI's own routes keep Gradio's limits.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPBasic, HTTPBearer
from starlette.requests import HTTPConnection

from api.errors import ApiError, BodyTooLarge, Scrubber, error_response
from comfy.auth import Attempt, PasswordChecker
from comfy.ratelimit import TokenBucket
from comfy.service import Studio
from comfy.settings import Settings

__all__ = ["ApiContext", "BodyLimitMiddleware", "Caller", "Guard", "basic", "bearer", "key_id"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]



class _DocumentedBearer(HTTPBearer):
    """Only for the OpenAPI document (the padlock in /docs); :class:`Guard` reads the header itself."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


class _DocumentedBasic(HTTPBasic):
    """Only for the OpenAPI document: FastAPI's own would answer 401 to a malformed header even when open."""

    async def __call__(self, request: Request) -> None:  # type: ignore[override]
        return None


bearer = _DocumentedBearer(auto_error=False, scheme_name="ApiKey",
                           description="An API key from API_KEYS. Required only when API_KEYS is set.")
basic = _DocumentedBasic(auto_error=False, scheme_name="Login", realm="ComfyUI Studio",
                         description="A studio login from AUTH_USERS (the page's user name and password).")

#: Longest decoded ``user:password`` looked at (a password check costs ~0.3 s; a novel gets a 401 at once).
_MAX_LOGIN = 1024


def key_id(key: str) -> str:
    """The stable, non-secret id of an API key: ``key:`` + the first 16 hex digits of its sha256."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Caller:
    """An authenticated (or, on an open API, anonymous) caller."""

    #: Owner of the caller's jobs: the key's id or the login's user name; None on an open API (shared jobs).
    owner: str | None
    #: What the rate limit counts against.
    bucket: str


class Guard:
    """Checks one request: the rate limit around the credentials, then the caller's own.

    Raises :class:`ApiError` (401, 429, 503).
    """

    def __init__(self, settings: Settings, limiter: TokenBucket | None = None,
                 passwords: PasswordChecker | None = None) -> None:
        self._keys = [(key.encode(), key_id(key)) for key in settings.keys()]
        users = settings.users()
        self.passwords = passwords if passwords is not None else (
            PasswordChecker(users, attempts_per_minute=settings.rate_limit_per_minute) if users else None)
        self.limiter = limiter or TokenBucket(settings.rate_limit_per_minute)

    @property
    def open(self) -> bool:
        return not self._keys and self.passwords is None

    async def check(self, conn: HTTPConnection) -> Caller:
        if self.open:  # nothing is required, so nothing is read: any Authorization header is ignored
            caller = Caller(owner=None, bucket=_ip_bucket(conn))
        else:
            owner = await self._owner(conn)
            caller = Caller(owner=owner, bucket=owner)
        self._limit(caller.bucket)
        return caller

    def _challenge(self, error: str | None = None) -> dict[str, str]:
        schemes = []
        if self._keys:
            schemes.append("Bearer" + (f' error="{error}"' if error else ""))
        if self.passwords is not None:
            schemes.append('Basic realm="ComfyUI Studio", charset="UTF-8"')
        return {"WWW-Authenticate": ", ".join(schemes)}

    def _refuse(self, conn: HTTPConnection, message: str, error: str | None = None, *, charge: bool = True) -> ApiError:
        if charge:  # credentials missing or unreadable (nothing was checked) count against the address
            self._limit(_ip_bucket(conn))
        return ApiError(401, "unauthorized", message, headers=self._challenge(error))

    def _needs(self) -> str:
        ways = []
        if self._keys:
            ways.append("a key as 'Authorization: Bearer <key>'")
        if self.passwords is not None:
            ways.append("a studio login as HTTP Basic ('Authorization: Basic <base64 of user:password>')")
        return "This API needs " + " or ".join(ways) + "."

    async def _owner(self, conn: HTTPConnection) -> str:
        scheme, token = _authorization(conn)
        if scheme == "bearer" and token and self._keys:
            return self._key_owner(conn, token)
        if scheme == "basic" and token and self.passwords is not None:
            return await self._login_owner(conn, token)
        raise self._refuse(conn, self._needs())

    def _key_owner(self, conn: HTTPConnection, token: str) -> str:
        address = _ip_bucket(conn)
        self._limit(address)  # paid before the comparison, given back below when the key is right
        given = token.encode()
        found = None
        for key, ident in self._keys:  # every key is compared, so timing says nothing about which matched
            if hmac.compare_digest(given, key):
                found = ident
        if found is None:
            raise self._refuse(conn, "The API key is not valid.", "invalid_token", charge=False)
        self.limiter.give_back(address)
        return found

    async def _login_owner(self, conn: HTTPConnection, token: str) -> str:
        assert self.passwords is not None
        username, password = _basic_login(token)
        if username is None:
            raise self._refuse(conn, "Send HTTP Basic credentials as base64 of 'user:password' (UTF-8, at most "
                               f"{_MAX_LOGIN} bytes).")
        attempt = await self.passwords.attempt(username, password, address=conn.client.host if conn.client else None)
        if attempt.ok:
            return username
        if attempt.refused:
            raise _refused(attempt)
        raise self._refuse(conn, "The user name or password is not valid.", charge=False)

    def _limit(self, bucket: str) -> None:
        wait = self.limiter.acquire(bucket)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited",
                           f"Too many requests: the limit is {self.limiter.per_minute} a minute. "
                           f"Try again in {seconds} s.",
                           headers={"Retry-After": str(seconds), "RateLimit-Limit": str(self.limiter.per_minute)})


def _refused(attempt: Attempt) -> ApiError:
    """429 (the login rate limit) or 503 (too many checks at once), said before anything was checked."""
    status, code = (429, "rate_limited") if attempt.outcome == "limited" else (503, "busy")
    return ApiError(status, code, attempt.sentence(), headers={"Retry-After": str(attempt.wait_seconds)})


def _authorization(conn: HTTPConnection) -> tuple[str, str]:
    """(scheme in lower case, credentials) of the Authorization header; ("", "") without one."""
    scheme, _, token = conn.headers.get("authorization", "").strip().partition(" ")
    return scheme.lower(), token.strip()


def _basic_login(token: str) -> tuple[str | None, str]:
    """(user name, password) of HTTP Basic credentials; (None, "") when they are not base64 of UTF-8 ``user:password``."""
    if len(token) > _MAX_LOGIN * 4 // 3 + 4:
        return None, ""
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text are all ValueErrors
        return None, ""
    username, sep, password = decoded.partition(":")
    if not sep or len(decoded) > _MAX_LOGIN:
        return None, ""
    return username.strip(), password  # stripped as the page's login form does


@dataclass
class ApiContext:
    """What every route needs; built once by :func:`api.app.create_api`."""

    studio: Studio
    settings: Settings
    guard: Guard
    scrub: Scrubber
    #: Seconds between keep-alive comments on an idle event stream.
    keepalive: float = 15.0

    async def caller(self, request: Request, _key: None = Security(bearer), _login: None = Security(basic)) -> Caller:
        """FastAPI dependency: the checked caller of this request."""
        return await self.guard.check(request)

    def may_see(self, caller: Caller, job_owner: str | None) -> bool:
        """Keys and logins see only their own jobs; an open API shows every job."""
        return self.guard.open or caller.owner == job_owner


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes on paths under ``prefix`` but ``exempt`` ones (413, JSON)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, limit: int,
                 prefix: str = "/api/", exempt: tuple[str, ...] = ()) -> None:
        self.app = app
        self.limit = limit
        self.prefix = prefix
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(self.prefix) or path.startswith(self.exempt):
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
