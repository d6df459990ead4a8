"""One queue contract, two stores: :class:`JobStore` is what the studio needs from a job store, async.

:class:`DiskStore` is the embedded default: the diskcache :class:`~comfy.jobs.queue.JobQueue` on one machine,
each call run in a thread. :class:`~comfy.jobs.redis_store.RedisStore` keeps the same records in Redis for
several replicas and workers on several machines. Both keep the promises that tests/test_store_contract.py
checks against each: every job claimed once, leases and take-over, idempotency per owner, cancel, run
order and move to front, newest-first paging with filters and totals, counts, retention.

:func:`open_store` picks one from the settings: ``REDIS_URL`` set means Redis, unset means diskcache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from comfy.jobs import grid_records
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import Job, JobPage, JobState

if TYPE_CHECKING:
    from comfy.settings import Settings

__all__ = ["JobStore", "DiskStore", "open_store"]


@runtime_checkable
class JobStore(Protocol):
    """The job queue's transitions and reads, async; see :class:`~comfy.jobs.queue.JobQueue` for each rule.

    Raises :class:`~comfy.errors.JobNotFound`, :class:`~comfy.errors.IdempotencyConflict` and
    :class:`~comfy.errors.QueueError` exactly as JobQueue does, whatever the engine underneath.
    """

    max_attempts: int

    async def enqueue(self, params: dict[str, Any], *, kind: str = "generate", workflow: dict[str, Any] | None = None,
                      idempotency_key: str | None = None, owner: str | None = None,
                      note: str | None = None) -> tuple[Job, bool]: ...

    async def enqueue_many(self, requests: list[dict[str, Any]], *, owner: str | None = None) -> list[Job]: ...

    async def get(self, job_id: str) -> Job: ...

    async def get_many(self, job_ids: list[str]) -> list[Job]: ...

    async def list(self, *, states: Collection[JobState] | None = None, owner: str | None = None, limit: int = 50,
                   cursor: int | None = None, unowned: bool = False) -> JobPage: ...

    async def counts(self) -> dict[JobState, int]: ...

    async def position(self, job_id: str) -> int | None: ...

    async def pending_ids(self) -> list[str]: ...

    async def expired(self) -> list[Job]: ...

    async def claim(self, worker_id: str, *, lease_seconds: float) -> Job | None: ...

    async def claim_matching(self, worker_id: str, *, lease_seconds: float, accept: Callable[[Job], bool],
                             scan: int = 64) -> Job | None: ...

    async def renew(self, job_id: str, worker_id: str, *, lease_seconds: float) -> bool: ...

    async def update(self, job_id: str, worker_id: str | None = None, **fields: Any) -> Job: ...

    async def finish(self, job_id: str, worker_id: str | None, *, outputs: list[dict[str, Any]]) -> Job: ...

    async def annotate(self, job_id: str, *, outputs: list[dict[str, Any]] | None = None,
                       note: str | None = None) -> Job: ...

    async def fail(self, job_id: str, worker_id: str | None, *, code: str, message: str,
                   retry: bool = False) -> Job: ...

    async def requeue(self, job_id: str, worker_id: str, reason: str) -> Job: ...

    async def release(self, job_id: str, worker_id: str | None, reason: str, *, keep_handle: bool = False) -> Job: ...

    async def cancel(self, job_id: str) -> Job: ...

    async def mark_cancelled(self, job_id: str, worker_id: str | None = None) -> Job: ...

    async def move(self, job_id: str, *, to_index: int) -> None: ...

    async def take_over(self, job_id: str, worker_id: str, *, lease_seconds: float,
                        force: bool = False) -> Job | None: ...

    async def prune(self, *, older_than: float, batch: int = 256) -> int: ...

    async def save_grid(self, record: dict[str, Any]) -> None: ...

    async def get_grid(self, grid_id: str) -> dict[str, Any]: ...

    async def delete_grid(self, grid_id: str) -> None: ...

    async def grid_ids(self) -> list[str]: ...

    async def close(self) -> None: ...


class DiskStore:
    """:class:`JobQueue` behind the async contract: each call runs in a worker thread (diskcache blocks).

    ``queue`` stays available for the synchronous callers of today (the worker, the CLI).
    """

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    @classmethod
    def open(cls, directory: str | Path, **kwargs: Any) -> DiskStore:
        return cls(JobQueue(directory, **kwargs))

    @property
    def max_attempts(self) -> int:
        return self.queue.max_attempts

    async def enqueue(self, params: dict[str, Any], *, kind: str = "generate", workflow: dict[str, Any] | None = None,
                      idempotency_key: str | None = None, owner: str | None = None,
                      note: str | None = None) -> tuple[Job, bool]:
        return await asyncio.to_thread(self.queue.enqueue, params, kind=kind, workflow=workflow,
                                       idempotency_key=idempotency_key, owner=owner, note=note)

    async def enqueue_many(self, requests: list[dict[str, Any]], *, owner: str | None = None) -> list[Job]:
        return await asyncio.to_thread(self.queue.enqueue_many, requests, owner=owner)

    async def get(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.queue.get, job_id)

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        """The jobs of ``job_ids`` still there, in order, read in one thread hop."""
        return await asyncio.to_thread(self.queue.get_many, job_ids)

    async def list(self, *, states: Collection[JobState] | None = None, owner: str | None = None, limit: int = 50,
                   cursor: int | None = None, unowned: bool = False) -> JobPage:
        return await asyncio.to_thread(self.queue.list, states=states, owner=owner, limit=limit, cursor=cursor,
                                       unowned=unowned)

    async def counts(self) -> dict[JobState, int]:
        return await asyncio.to_thread(self.queue.counts)

    async def position(self, job_id: str) -> int | None:
        return await asyncio.to_thread(self.queue.position, job_id)

    async def pending_ids(self) -> list[str]:
        return await asyncio.to_thread(self.queue.pending_ids)

    async def expired(self) -> list[Job]:
        return await asyncio.to_thread(self.queue.expired)

    async def claim(self, worker_id: str, *, lease_seconds: float) -> Job | None:
        return await asyncio.to_thread(self.queue.claim, worker_id, lease_seconds=lease_seconds)

    async def claim_matching(self, worker_id: str, *, lease_seconds: float, accept: Callable[[Job], bool],
                             scan: int = 64) -> Job | None:
        return await asyncio.to_thread(self.queue.claim_matching, worker_id, lease_seconds=lease_seconds,
                                       accept=accept, scan=scan)

    async def renew(self, job_id: str, worker_id: str, *, lease_seconds: float) -> bool:
        return await asyncio.to_thread(self.queue.renew, job_id, worker_id, lease_seconds=lease_seconds)

    async def update(self, job_id: str, worker_id: str | None = None, **fields: Any) -> Job:
        return await asyncio.to_thread(self.queue.update, job_id, worker_id, **fields)

    async def finish(self, job_id: str, worker_id: str | None, *, outputs: list[dict[str, Any]]) -> Job:
        return await asyncio.to_thread(self.queue.finish, job_id, worker_id, outputs=outputs)

    async def annotate(self, job_id: str, *, outputs: list[dict[str, Any]] | None = None,
                       note: str | None = None) -> Job:
        return await asyncio.to_thread(self.queue.annotate, job_id, outputs=outputs, note=note)

    async def fail(self, job_id: str, worker_id: str | None, *, code: str, message: str,
                   retry: bool = False) -> Job:
        return await asyncio.to_thread(self.queue.fail, job_id, worker_id, code=code, message=message, retry=retry)

    async def requeue(self, job_id: str, worker_id: str, reason: str) -> Job:
        return await asyncio.to_thread(self.queue.requeue, job_id, worker_id, reason)

    async def release(self, job_id: str, worker_id: str | None, reason: str, *, keep_handle: bool = False) -> Job:
        return await asyncio.to_thread(self.queue.release, job_id, worker_id, reason, keep_handle=keep_handle)

    async def cancel(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.queue.cancel, job_id)

    async def mark_cancelled(self, job_id: str, worker_id: str | None = None) -> Job:
        return await asyncio.to_thread(self.queue.mark_cancelled, job_id, worker_id)

    async def move(self, job_id: str, *, to_index: int) -> None:
        await asyncio.to_thread(self.queue.move, job_id, to_index=to_index)

    async def take_over(self, job_id: str, worker_id: str, *, lease_seconds: float,
                        force: bool = False) -> Job | None:
        return await asyncio.to_thread(self.queue.take_over, job_id, worker_id, lease_seconds=lease_seconds,
                                       force=force)

    async def prune(self, *, older_than: float, batch: int = 256) -> int:
        return await asyncio.to_thread(self.queue.prune, older_than=older_than, batch=batch)

    async def save_grid(self, record: dict[str, Any]) -> None:
        """Store an X/Y/Z plot's record (see :mod:`comfy.grids`); raises :class:`QueueError`."""
        await asyncio.to_thread(grid_records.disk_save, self.queue, record)

    async def get_grid(self, grid_id: str) -> dict[str, Any]:
        """A plot's record; :class:`GridNotFound` if there is none."""
        return await asyncio.to_thread(grid_records.disk_get, self.queue, grid_id)

    async def delete_grid(self, grid_id: str) -> None:
        """Forget a plot's record (none is fine)."""
        await asyncio.to_thread(grid_records.disk_delete, self.queue, grid_id)

    async def grid_ids(self) -> list[str]:
        """Every plot's id."""
        return await asyncio.to_thread(grid_records.disk_ids, self.queue)

    async def close(self) -> None:
        await asyncio.to_thread(self.queue.close)


def open_store(settings: Settings, **kwargs: Any) -> JobStore:
    """Redis when ``REDIS_URL`` is set (under ``REDIS_PREFIX``), else diskcache in ``STUDIO_DATA_DIR/queue``.

    ``kwargs`` (``now``, ...) go to the store. Call from the event loop that will use the store.
    """
    if settings.redis_url is not None:
        from comfy.jobs.redis_store import RedisStore  # only a Redis deployment needs redis-py loaded

        return RedisStore.from_url(settings.redis_url.get_secret_value(), prefix=settings.redis_prefix,
                                   max_attempts=settings.max_attempts, **kwargs)
    return DiskStore.open(settings.queue_dir, max_attempts=settings.max_attempts, **kwargs)
