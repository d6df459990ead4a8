"""A blocking face on an async :class:`~comfy.jobs.store.JobStore`, for code that runs in threads.

The upload backlog and retention read and note jobs from worker threads (they also read files and the
backlog's own diskcache). With diskcache they call the :class:`~comfy.jobs.queue.JobQueue` directly; with
Redis they call this, which runs each call on the event loop that owns the Redis connections and waits.
Called on that loop's own thread (where waiting would hang it), :meth:`annotate` is sent as a task and the
reads raise :class:`QueueError`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Collection, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from comfy.errors import ComfyError, QueueError
from comfy.jobs.records import Job, JobPage, JobState

if TYPE_CHECKING:
    from comfy.jobs.store import JobStore

__all__ = ["BlockingStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class BlockingStore:
    """``get``, ``list``, ``annotate`` and ``prune_records`` of ``store``, blocking; :meth:`bind` to a loop first."""

    def __init__(self, store: JobStore, *, timeout: float = 30.0) -> None:
        self.store = store
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run calls on ``loop`` (call this from that loop's thread)."""
        self._loop, self._thread = loop, threading.get_ident()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or self._loop.is_closed():
            coro.close()
            raise QueueError("The job store is not running yet (the studio has not started).")
        if threading.get_ident() == self._thread:
            coro.close()
            raise QueueError("A blocking store call was made on the event loop's own thread.")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    def get(self, job_id: str) -> Job:
        return self._call(self.store.get(job_id))

    def list(self, *, states: Collection[JobState] | None = None, owner: str | None = None, limit: int = 50,
             cursor: int | None = None, unowned: bool = False) -> JobPage:
        return self._call(self.store.list(states=states, owner=owner, limit=limit, cursor=cursor, unowned=unowned))

    def annotate(self, job_id: str, *, outputs: list[dict[str, Any]] | None = None, note: str | None = None) -> Job | None:
        if self._loop is not None and threading.get_ident() == self._thread:  # from the loop: do not wait
            task = self._loop.create_task(self._annotate_later(job_id, outputs, note))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return None
        return self._call(self.store.annotate(job_id, outputs=outputs, note=note))

    async def _annotate_later(self, job_id: str, outputs: list[dict[str, Any]] | None, note: str | None) -> None:
        try:
            await self.store.annotate(job_id, outputs=outputs, note=note)
        except ComfyError as exc:
            log.debug("Could not annotate job %s: %s", job_id, exc)

    def prune_records(self, *, older_than: float, skip: Collection[str] = (), batch: int = 256) -> list[dict[str, Any]]:
        return self._call(self.store.prune_records(older_than=older_than, skip=skip, batch=batch))  # type: ignore[attr-defined]

    def get_grid(self, grid_id: str) -> dict[str, Any]:
        return self._call(self.store.get_grid(grid_id))

    def delete_grid(self, grid_id: str) -> None:
        self._call(self.store.delete_grid(grid_id))

    def grid_ids(self) -> list[str]:
        return self._call(self.store.grid_ids())
