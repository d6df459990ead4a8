"""The page's login form, limited like HTTP Basic on the REST API: paid for before it is checked.

Gradio's ``POST /login`` calls the auth function with the user name and password only. :class:`PageLogins`
(ASGI middleware in front of the page) notes each login request's client address, and :func:`page_auth`
is the function Gradio calls: it settles the attempt with :meth:`comfy.auth.PasswordChecker.attempt` (a
token of the address's and of the user name's budget taken before the password is looked at, given back
when it was right), so a flood of wrong logins on the page is slowed as on the API. An attempt turned away
unchecked answers 429 (rate limited) or 503 (too many checks at once) with ``Retry-After`` and a sentence.
Gradio's login form shows only its own "incorrect credentials" (for a 400), and its login page carries no
custom ``head``, so the middleware adds :data:`LOGIN_MESSAGE_JS` to the page's HTML: it shows that sentence
on the form.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

from comfy.auth import PasswordChecker

__all__ = ["PageLogins", "page_auth", "LOGIN_MESSAGE_JS"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("login_address", default=None)
_LOGIN_PATHS = ("/login", "/login/")


class PageLogins:
    """Notes the client address of a ``POST /login`` for :func:`page_auth`; adds the login note's script."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path") or ""
        path = path[len(root):] if root and path.startswith(root) else path
        if scope.get("method") == "POST" and path in _LOGIN_PATHS:
            client = scope.get("client")
            token = _address.set(client[0] if client else "unknown")
            try:
                await self.app(scope, receive, send)
            finally:
                _address.reset(token)
        elif scope.get("method") == "GET" and path in ("", "/"):
            await self.app(scope, receive, _with_script(send))
        else:
            await self.app(scope, receive, send)


def _with_script(send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """``send`` for the page's HTML: the login note's script goes in before ``</head>``."""
    start: dict[str, Any] | None = None
    body = bytearray()

    async def patched(message: Any) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if not headers.get(b"content-type", b"").startswith(b"text/html"):
                await send(message)
                return
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        body.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        html = bytes(body).replace(b"</head>", LOGIN_MESSAGE_JS.encode() + b"</head>", 1)
        headers = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(html)).encode())]})
        await send({"type": "http.response.body", "body": html})

    return patched


def page_auth(checker: PasswordChecker) -> Callable[[str, str], Awaitable[bool]]:
    """The auth function for ``gr.mount_gradio_app``: True or False, or a 429/503 when turned away unchecked."""
    async def auth(username: str, password: str) -> bool:
        attempt = await checker.attempt(username, password, address=_address.get())
        if attempt.refused:
            raise HTTPException(429 if attempt.outcome == "limited" else 503, detail=attempt.sentence(),
                                headers={"Retry-After": str(attempt.wait_seconds)})
        return attempt.ok
    return auth


#: Shows the sentence of a refused login (429, 503) on Gradio's login form, which shows only a 400 itself.
LOGIN_MESSAGE_JS = """
<script>
(() => {
  const fetch0 = window.fetch;
  const show = (text) => {
    const creds = document.querySelector('p.creds');  // Gradio's "Incorrect Credentials" of the last try
    let note = document.getElementById('studio-login-note');
    if (text === null) {
      if (note) note.remove();
      if (creds) creds.style.display = '';
      return;
    }
    const form = document.querySelector('input[type=password]')?.closest('.form');
    if (!form) return;
    if (!note) {
      note = document.createElement('p');
      note.id = 'studio-login-note';
      note.setAttribute('role', 'alert');
      note.style.cssText = 'color:var(--error-text-color,#b91c1c);font-weight:var(--weight-semibold,600);' +
                           'margin:var(--spacing-lg,8px) 0;width:0;min-width:100%';  // wraps, never widens the form
    }
    form.before(note);
    note.textContent = text;
    if (creds) creds.style.display = 'none';
  };
  window.fetch = async (...args) => {
    const response = await fetch0(...args);
    const url = String(args[0] && args[0].url || args[0]);
    if (/\\/login\\/?$/.test(new URL(url, location.href).pathname)) {
      let text = null;
      if (response.status === 429 || response.status === 503) {
        text = 'Try again in a moment.';
        try { text = (await response.clone().json()).detail || text; } catch (e) {}
      }
      show(text);
    }
    return response;
  };
})();
</script>
"""
