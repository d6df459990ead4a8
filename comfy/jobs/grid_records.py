"""Where X/Y/Z plot records live: beside the jobs, in the diskcache queue or in Redis.

A record is plain JSON (see :mod:`comfy.grids`): its id, owner, the jobs of its cells row-major, what
to plan it again from, and, once every cell ended, the key of the labelled grid image. Records are
written whole; the store's own lock (diskcache's transaction, Redis's MULTI) keeps them whole. An index
of every grid's id (diskcache: one key; Redis: a set) lets retention find the grids whose cells are gone.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from comfy.errors import GridNotFound

if TYPE_CHECKING:
    from comfy.jobs.queue import JobQueue
    from comfy.jobs.redis_store import RedisStore

__all__ = ["GRID_KEY", "GRID_INDEX_KEY", "disk_save", "disk_get", "disk_delete", "disk_ids", "redis_save",
           "redis_get", "redis_delete", "redis_ids"]

#: The diskcache key of a plot's record.
GRID_KEY = "grid:{}"
#: The diskcache key of the index of every plot's id.
GRID_INDEX_KEY = "grids"


def disk_save(queue: JobQueue, record: dict[str, Any]) -> None:
    from comfy.jobs.queue import _map_errors

    with _map_errors(), queue._cache.transact():
        queue._cache.set(GRID_KEY.format(record["grid_id"]), json.dumps(record))
        index = set(queue._cache.get(GRID_INDEX_KEY) or ())
        if record["grid_id"] not in index:
            queue._cache.set(GRID_INDEX_KEY, sorted(index | {record["grid_id"]}))


def disk_delete(queue: JobQueue, grid_id: str) -> None:
    """Forget a plot's record (none is fine)."""
    from comfy.jobs.queue import _map_errors

    with _map_errors(), queue._cache.transact():
        queue._cache.delete(GRID_KEY.format(grid_id))
        index = list(queue._cache.get(GRID_INDEX_KEY) or ())
        if grid_id in index:
            index.remove(grid_id)
            queue._cache.set(GRID_INDEX_KEY, index)


def disk_ids(queue: JobQueue) -> list[str]:
    """Every plot's id."""
    from comfy.jobs.queue import _map_errors

    with _map_errors():
        return list(queue._cache.get(GRID_INDEX_KEY) or ())


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
        async with store.client.pipeline(transaction=True) as pipe:
            pipe.set(store.key("grid", record["grid_id"]), json.dumps(record))
            pipe.sadd(store.key("grids"), record["grid_id"])
            await pipe.execute()


async def redis_delete(store: RedisStore, grid_id: str) -> None:
    from comfy.jobs.redis_store import map_redis_errors

    with map_redis_errors():
        async with store.client.pipeline(transaction=True) as pipe:
            pipe.delete(store.key("grid", grid_id))
            pipe.srem(store.key("grids"), grid_id)
            await pipe.execute()


async def redis_ids(store: RedisStore) -> list[str]:
    from comfy.jobs.redis_store import map_redis_errors

    with map_redis_errors():
        return sorted(await store.client.smembers(store.key("grids")))


async def redis_get(store: RedisStore, grid_id: str) -> dict[str, Any]:
    from comfy.jobs.redis_store import map_redis_errors

    with map_redis_errors():
        text = await store.client.get(store.key("grid", grid_id))
    if text is None:
        raise GridNotFound(grid_id)
    return json.loads(text)
