"""Where X/Y/Z plot records live: beside the jobs, in the diskcache queue or in Redis.

A record is plain JSON (see :mod:`comfy.grids`): its id, owner, the jobs of its cells row-major, what
to plan it again from, and, once every cell ended, the key of the labelled grid image. Records are
written whole; the store's own lock (diskcache's transaction, Redis's single command) keeps them whole.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from comfy.errors import GridNotFound

if TYPE_CHECKING:
    from comfy.jobs.queue import JobQueue
    from comfy.jobs.redis_store import RedisStore

__all__ = ["GRID_KEY", "disk_save", "disk_get", "redis_save", "redis_get"]

#: The diskcache key of a plot's record.
GRID_KEY = "grid:{}"


def disk_save(queue: JobQueue, record: dict[str, Any]) -> None:
    from comfy.jobs.queue import _map_errors

    with _map_errors():
        queue._cache.set(GRID_KEY.format(record["grid_id"]), json.dumps(record))


def disk_get(queue: JobQueue, grid_id: str) -> dict[str, Any]:
    from comfy.jobs.queue import _map_errors

    with _map_errors():
        text = queue._cache.get(GRID_KEY.format(grid_id))
    if text is None:
        raise GridNotFound(grid_id)
    return json.loads(text)


async def redis_save(store: RedisStore, record: dict[str, Any]) -> None:
    from comfy.jobs.redis_store import map_redis_errors

    with map_redis_errors():
        await store.client.set(store.key("grid", record["grid_id"]), json.dumps(record))


async def redis_get(store: RedisStore, grid_id: str) -> dict[str, Any]:
    from comfy.jobs.redis_store import map_redis_errors

    with map_redis_errors():
        text = await store.client.get(store.key("grid", grid_id))
    if text is None:
        raise GridNotFound(grid_id)
    return json.loads(text)
