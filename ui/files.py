"""Saved images reach the browser only for their owner, and so do the page's copies of them.

Gradio serves files in ``allowed_paths`` and its own cache at ``/gradio_api/file=<path>`` to anyone who
may see the page. Outputs live at ``<outputs>/<job id>/image_<n>.png``, so :class:`OwnedFiles` lets a
request for a file under the outputs folder through only when the job's owner is the page's owner of the
request (404 otherwise, as for a job id that does not exist), and refuses kept init images (nothing on the
page links to them). The page's owner is the logged-in user with ``AUTH_USERS``; without logins but with
``API_KEYS`` it is nobody (``None``): the open page then shows and serves only the jobs made on it, never
an API key's.

Gradio copies every file a handler returns into its cache, under a folder named after a hash of the
content, and serves that copy to anyone who has the URL. :class:`PageCopies` makes the copy itself, in a
folder named after the job (``studio-<job id>-<tag>``, the tag a keyed hash so that nobody can name
another job's copy as an input), and Gradio hands that out as it is (a file already in its cache is not
copied again), so :class:`OwnedFiles` can gate the copies by their job's owner too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse

from comfy import ComfyError, Studio

__all__ = ["OwnedFiles", "PageCopies", "page_user"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
_FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
_COPY_FOLDER = re.compile(r"studio-([0-9a-f]{16})-[0-9a-f]{16}")


class PageCopies:
    """The page's copies of result images in Gradio's cache folder ``cache_dir``, one folder per job."""

    def __init__(self, cache_dir: str | Path, secret: str) -> None:
        self.cache_dir = Path(os.path.abspath(cache_dir))
        self._secret = secret.encode()

    def folder(self, job_id: str) -> Path:
        tag = hmac.new(self._secret, f"page-copy:{job_id}".encode(), hashlib.sha256).hexdigest()[:16]
        return self.cache_dir / f"studio-{job_id}-{tag}"

    def copy(self, job_id: str, path: str) -> str:
        """The copy of ``path`` (a job's saved image) to hand to Gradio, made once (a hard link if it can)."""
        target = self.folder(job_id) / Path(path).name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.{secrets.token_hex(6)}")
            try:
                try:
                    os.link(path, staging)
                except OSError:  # another filesystem (a network mount): copy the bytes
                    shutil.copyfile(path, staging)
                os.replace(staging, target)  # whole or not at all, even with two pages at once
            finally:
                if os.path.lexists(staging):
                    os.unlink(staging)
        return str(target)

    def remove(self, job_id: str) -> None:
        """Remove a job's copies (its record and outputs are being pruned)."""
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def jobs(self) -> list[str]:
        """The jobs that have copies here."""
        try:
            names = [entry.name for entry in os.scandir(self.cache_dir) if entry.is_dir()]
        except OSError:
            return []
        return [found.group(1) for name in names if (found := _COPY_FOLDER.fullmatch(name))]

    def job_of(self, paths: tuple[Path, ...]) -> str | None:
        """The job whose copy ``paths`` (one file, as written and resolved) names, or None."""
        for path in paths:
            if path.is_relative_to(self.cache_dir) and path != self.cache_dir:
                found = _COPY_FOLDER.fullmatch(path.relative_to(self.cache_dir).parts[0])
                if found:
                    return found.group(1)
        return None


class OwnedFiles:
    """ASGI middleware over the mounted page; ``user_of`` names the logged-in user of a request (or None).

    With ``logins`` a request without a login is refused every saved image; without, the page's owner is
    None and it is served those of the jobs nobody owns (the page's own).
    """

    def __init__(self, app: ASGIApp, *, studio: Studio, user_of: Callable[[HTTPConnection], str | None],
                 logins: bool = True, copies: PageCopies | None = None) -> None:
        self.app = app
        self.studio = studio
        self.user_of = user_of
        self.logins = logins
        self.copies = copies
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
        try:
            where = _both(Path(wanted))
        except (ValueError, OSError):  # a NUL byte, a name too long: no such file
            return False
        if _inside(where, self.inputs):
            return False
        copied = self.copies.job_of(where) if self.copies is not None else None
        if copied is not None:
            return await self._owns(copied, conn)
        for outputs in self.outputs:
            for candidate in where:
                if candidate.is_relative_to(outputs) and candidate != outputs:
                    return await self._owns(candidate.relative_to(outputs).parts[0], conn)
        return True  # Gradio's own cache and uploads: Gradio decides

    async def _owns(self, job_id: str, conn: HTTPConnection) -> bool:
        user = self.user_of(conn)
        if user is None and self.logins:
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
