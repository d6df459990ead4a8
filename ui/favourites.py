"""Favourites in the history's lightbox: marked per image in the browser, downloaded together as a zip.

A favourite is ``"<job id>#<image index>"``; the zip, made again whenever they change (so that one
press of "Download selected" downloads it), holds only images of jobs the caller may see
(another user's id, or one since removed, is skipped), as the saved PNGs with their metadata.
"""

from __future__ import annotations

import asyncio
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gradio as gr

from comfy import ComfyError
from ui.errors import friendly

__all__ = ["favourite_key", "toggle", "favourites_label", "Favourites"]

MAX_FAVOURITES = 500


def favourite_key(caption: str) -> str | None:
    """The key of a history image from its caption ("<job id> · 2 of 4 · …"), or None.

    >>> favourite_key("0123456789abcdef · 2 of 4 · succeeded · a cat")
    '0123456789abcdef#1'
    """
    parts = caption.split(" · ")
    if len(parts) < 2 or " of " not in parts[1]:
        return None
    index = parts[1].split(" of ", 1)[0]
    return f"{parts[0]}#{int(index) - 1}" if index.isdigit() and int(index) > 0 else None


def toggle(favourites: list[str] | None, key: str | None) -> list[str]:
    """``favourites`` with ``key`` added, or taken out when it was there.

    >>> toggle(["a#0"], "b#1"), toggle(["a#0", "b#1"], "a#0")
    (['a#0', 'b#1'], ['b#1'])
    """
    kept = [k for k in (favourites or []) if isinstance(k, str)]
    if not key:
        return kept
    return [k for k in kept if k != key] if key in kept else (kept + [key])[-MAX_FAVOURITES:]


def favourites_label(favourites: list[str] | None, current: str | None) -> str:
    count = len(favourites or [])
    mark = "★ a favourite" if current and current in (favourites or []) else "☆ not a favourite"
    shown = f"This image: {mark}. " if current else "Open an image above (←/→ walk through them). "
    return shown + f"{count} favourite(s) marked."


class Favourites:
    """The zip of favourites, bound to the page's handlers (their owner checks and image paths)."""

    def __init__(self, handlers: Any) -> None:
        self.h = handlers

    @friendly
    async def zip(self, favourites: list[str] | None, request: gr.Request) -> Any:
        """The zip behind "Download selected", made afresh whenever the favourites change (None: no file)."""
        keys = [k for k in (favourites or []) if isinstance(k, str)][:MAX_FAVOURITES]
        if not keys:
            return None
        files: list[tuple[str, str]] = []
        for key in keys:
            job_id, _, index = key.partition("#")
            try:
                job = await self.h._resolve(job_id, request)
                urls = await self.h.studio.image_urls(job)
            except ComfyError:
                continue  # another user's job, or one removed since: not theirs to download
            i = int(index) if index.isdigit() else -1
            if 0 <= i < len(urls) and not urls[i].startswith(("http://", "https://")) and Path(urls[i]).is_file():
                files.append((f"{job.id[:8]}_{i + 1}{Path(urls[i]).suffix}", urls[i]))
        if not files:
            return None
        folder = Path(tempfile.mkdtemp(dir=gr.utils.get_upload_folder()))
        target = folder / "favourites.zip"

        def write() -> None:
            with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
                for name, path in files:
                    archive.write(path, name)

        await asyncio.to_thread(write)
        return str(target)
