"""Small probes of the studio's own state, for /health, /readyz and the metrics.

None of them raises: each answers what it found, so a health page never fails for the reason it
is meant to report.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy.errors import ComfyError
from comfy.service import Studio

__all__ = ["StorageState", "probe_dir", "queue_counts", "queue_writable", "store_health"]


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


async def store_health(studio: Studio) -> dict[str, Any]:
    """The job store: ``diskcache`` or ``redis``, reachable or not, its latency, and (Redis) the replicas and
    workers whose heartbeat is alive. Process ids and host names only: no prompts, no user data."""
    if studio.link is not None:
        return await studio.link.health()
    start = time.perf_counter()
    reachable = await queue_counts(studio) is not None
    return {"store": "diskcache", "reachable": reachable,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2) if reachable else None,
            "error": None if reachable else "The job queue cannot be read.", "replicas": [], "workers": []}


async def queue_writable(studio: Studio) -> str | None:
    """None when the queue can be read and its folder written; otherwise why not."""
    if studio.link is not None:  # Redis: nothing of the queue is on this disk
        reachable = await studio.link.health()
        return None if reachable["reachable"] else f"The job queue is unavailable. {reachable['error']}"
    if await queue_counts(studio) is None:
        return "The job queue cannot be read."
    state = await asyncio.to_thread(probe_dir, studio.settings.queue_dir)
    if not state.writable:
        return f"The job queue's folder cannot be written: {state.error}."
    return None

