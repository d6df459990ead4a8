"""Saved images reach the browser only for their owner.

Gradio serves files in ``allowed_paths`` at ``/gradio_api/file=<path>`` to anyone logged in. Outputs
live at ``<outputs>/<job id>/image_<n>.png``, so with logins on :class:`OwnedFiles` lets a request for
a file under the outputs folder through only when the job's owner is the logged-in user (404 otherwise,
as for a job id that does not exist), and refuses kept init images (nothing on the page links to them;
the page shows Gradio's own copies). Without logins the studio is one shared workspace.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

from comfy import ComfyError, Studio

__all__ = ["OwnedFiles", "page_user"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
_FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")


class OwnedFiles:
    """ASGI middleware over the mounted page; ``user_of`` names the logged-in user of a request (or None)."""

    def __init__(self, app: ASGIApp, *, studio: Studio, user_of: Callable[[HTTPConnection], str | None]) -> None:
        self.app = app
        self.studio = studio
        self.user_of = user_of
        self.outputs = _both(Path(studio.files.outputs_dir))
        self.inputs = _both(Path(studio.files.inputs_dir))

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http":
            path, root = scope["path"], scope.get("root_path") or ""
            path = path[len(root):] if root and path.startswith(root) else path
            for prefix in _FILE_ROUTES:
                if path.startswith(prefix) and not await self._may_fetch(path[len(prefix):], HTTPConnection(scope)):
                    await PlainTextResponse("Not found.", status_code=404)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _may_fetch(self, wanted: str, conn: HTTPConnection) -> bool:
        where = _both(Path(wanted))
        if _inside(where, self.inputs):
            return False
        for outputs in self.outputs:
            for candidate in where:
                if candidate.is_relative_to(outputs) and candidate != outputs:
                    return await self._owns(candidate.relative_to(outputs).parts[0], conn)
        return True  # Gradio's own cache and uploads: Gradio decides

    async def _owns(self, job_id: str, conn: HTTPConnection) -> bool:
        user = self.user_of(conn)
        if user is None:
            return False
        try:
            return (await self.studio.job(job_id)).owner == user
        except ComfyError:
            return False


def page_user(page: Any) -> Callable[[HTTPConnection], str | None]:
    """Who a request is logged in as on the mounted Gradio ``page`` (its login cookie), or None."""
    def user(conn: HTTPConnection) -> str | None:
        token = (conn.cookies.get(f"access-token-{page.cookie_id}")
                 or conn.cookies.get(f"access-token-unsecure-{page.cookie_id}"))
        return page.tokens.get(token) if token else None
    return user


def _both(path: Path) -> tuple[Path, ...]:
    """The path as written (made absolute) and with symlinks resolved: a file is inside if either is."""
    return (Path(os.path.abspath(path)), path.resolve())


def _inside(paths: tuple[Path, ...], folders: tuple[Path, ...]) -> bool:
    return any(p.is_relative_to(f) for p in paths for f in folders)
