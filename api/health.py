"""Small probes of the studio's own state, for /health, /readyz and the metrics.

None of them raises: each answers what it found, so a health page never fails for the reason it
is meant to report.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from comfy.errors import ComfyError
from comfy.service import Studio

__all__ = ["StorageState", "probe_dir", "queue_counts", "queue_writable"]


@dataclass(frozen=True)
class StorageState:
    writable: bool
    free_bytes: int | None
    total_bytes: int | None
    error: str | None = None


def probe_dir(path: Path) -> StorageState:
    """Create, write, fsync and delete a small file in ``path`` (made if missing); report free space."""
    error = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".probe-", suffix=".tmp")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        error = exc.strerror or type(exc).__name__
    try:
        usage = shutil.disk_usage(path)
        free, total = usage.free, usage.total
    except OSError:
        free = total = None
    return StorageState(error is None, free, total, error)


async def queue_counts(studio: Studio) -> dict[str, int] | None:
    """Our jobs by state, or None when the queue cannot be read."""
    try:
        return {state.value: count for state, count in (await studio.counts()).items()}
    except ComfyError:
        return None


async def queue_writable(studio: Studio) -> str | None:
    """None when the queue can be read and its folder written; otherwise why not."""
    if await queue_counts(studio) is None:
        return "The job queue cannot be read."
    state = await asyncio.to_thread(probe_dir, studio.settings.queue_dir)
    if not state.writable:
        return f"The job queue's folder cannot be written: {state.error}."
    return None

