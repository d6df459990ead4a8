"""The MCP tools under the same logins as the REST API, each tool acting as its caller.

Gradio's MCP server (``/gradio_api/mcp/...``) has no login of its own, and it runs a queued tool by
calling the page's Gradio API over HTTP (a ``gradio_client`` of its own, "the loopback"), passing on the
headers of the MCP request. :class:`McpLogins`, ASGI middleware in front of the page, makes both ends
carry the caller:

* **The MCP route.** Every request under ``/gradio_api/mcp`` needs the REST API's credentials, checked by
  the REST API's :class:`api.guard.Guard` (HTTP Basic through the one :class:`comfy.auth.PasswordChecker`,
  ``Authorization: Bearer`` for an API key), 401 with ``WWW-Authenticate`` otherwise (429/503 when the
  rate limit or the password checks turn it away). The credentials are taken out of the request and
  replaced by a caller token, random and known only to this process, for as long as the request runs
  (and a minute after: over SSE a tool call runs after its POST has been answered).
* **The loopback.** Its ``/gradio_api/queue/join`` carries that token; the middleware gives the request
  the Gradio login of the caller (a login cookie of the page's own kind, made here and never sent to
  anyone), so the endpoint's ``gr.Request.username`` is the caller: a login's user name, or an API key's
  id, the owner the REST API gives that caller's jobs. The loopback's other requests (config, its event
  stream) carry a secret of this process instead and get a login that owns nothing.

Without logins or keys the MCP route is open and the tools act as the open page does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import HTTPConnection

from api.errors import ApiError, error_response
from api.guard import Guard

__all__ = ["McpLogins", "MCP_PREFIX", "LOOPBACK_USER"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

MCP_PREFIX = "/gradio_api/mcp"
_CALLER = b"x-studio-mcp-caller"
_LOOPBACK = b"x-studio-mcp-loopback"
#: The user name of the loopback's own requests (config, event stream): no AUTH_USERS name can hold a NUL.
LOOPBACK_USER = "\x00mcp-loopback"
#: Seconds a caller token stays good after its request ended (an SSE tool call runs after its POST).
GRACE_SECONDS = 60.0


class McpLogins:
    """ASGI middleware over the mounted page: see the module docstring. ``page`` is Gradio's mounted app."""

    def __init__(self, app: ASGIApp, *, guard: Guard, page: Any, local_url: str) -> None:
        self.app = app
        self.guard = guard
        self.page = page
        self._secret = secrets.token_urlsafe(32)
        self._callers: dict[str, tuple[str | None, float]] = {}  # token -> (owner, good until; inf while running)
        self._logins: dict[str, str] = {}  # owner -> the page login token made for it
        server = page.get_blocks().mcp_server_obj
        if server is not None:
            _loopback_through(server, local_url, {_LOOPBACK.decode(): self._secret})

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and _under_mcp(scope):
            await self._mcp(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["type"] == "http" and (_CALLER in headers or _LOOPBACK in headers):
            scope = self._as_loopback(scope, headers)
        await self.app(scope, receive, send)

    async def _mcp(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                   send: Callable[[Any], Awaitable[None]]) -> None:
        try:
            owner = (await self.guard.check(HTTPConnection(scope))).owner
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, headers=exc.headers, **exc.extra)
            await response(scope, receive, send)
            return
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        self._callers = {t: v for t, v in self._callers.items() if v[1] > now}
        self._callers[token] = (owner, float("inf"))
        kept = [(k, v) for k, v in scope.get("headers") or []
                if k not in (b"authorization", b"cookie", _CALLER, _LOOPBACK)]
        try:
            await self.app({**scope, "headers": [*kept, (_CALLER, token.encode())]}, receive, send)
        finally:
            self._callers[token] = (owner, time.monotonic() + GRACE_SECONDS)

    def _as_loopback(self, scope: Scope, headers: dict[bytes, bytes]) -> Scope:
        """The loopback's request as its caller's (or the loopback's own) login; a wrong token is dropped."""
        kept = [(k, v) for k, v in scope.get("headers") or [] if k not in (_CALLER, _LOOPBACK)]
        if _CALLER in headers:  # a tool's call: its caller's, or nobody's (never the loopback's own)
            found = self._callers.get(headers[_CALLER].decode("latin-1"))
            if found is None or found[1] <= time.monotonic():
                return {**scope, "headers": kept}
            user: str | None = found[0]
        elif secrets.compare_digest(headers.get(_LOOPBACK, b""), self._secret.encode()):
            user = LOOPBACK_USER
        else:
            return {**scope, "headers": kept}
        if user is None:  # an open studio: the tools act as the open page
            return {**scope, "headers": kept}
        cookie = f"access-token-{self.page.cookie_id}={self._login(user)}".encode()
        return {**scope, "headers": [*[(k, v) for k, v in kept if k != b"cookie"], (b"cookie", cookie)]}

    def _login(self, user: str) -> str:
        """A page login token for ``user`` (made again when a logout took it away)."""
        token = self._logins.get(user)
        if token is None or self.page.tokens.get(token) != user:
            token = secrets.token_urlsafe(32)
            self.page.tokens[token] = user
            self._logins[user] = token
        return token


def _under_mcp(scope: Scope) -> bool:
    """Whether the request is for the MCP route (below the mount's root path, if any)."""
    root = scope.get("root_path") or ""
    path = scope["path"].removeprefix(root) if root else scope["path"]
    return path == MCP_PREFIX or path.startswith(MCP_PREFIX + "/")


def _loopback_through(server: Any, local_url: str, headers: dict[str, str]) -> None:
    """Have Gradio's MCP server call the page at ``local_url`` (never out through a proxy), with ``headers``."""
    from gradio_client import Client

    server._local_url = local_url

    def client() -> Client:
        if server._client_instance is None:
            server._client_instance = Client(local_url, download_files=False, verbose=False,
                                             analytics_enabled=False, ssl_verify=False, _skip_components=False,
                                             headers={"x-gradio-user": "mcp", **headers})
        return server._client_instance

    server._get_or_create_client = client
