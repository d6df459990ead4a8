"""Who is alive on one Redis: each replica and worker writes a heartbeat key with a time to live.

``<prefix>:presence:<id>`` holds a small JSON record (role, host, pid, when it started, when it last beat),
written every ``interval`` seconds with a TTL of ``ttl``: a process that dies (``kill -9``) drops out by
itself once its key expires, one that stops cleanly deletes it. :func:`members` reads them all for
``/health``, through ``<prefix>:presence`` (a sorted set of the ids by when their heartbeat expires), never
by scanning the keyspace (a SCAN walks every job's key: 0.6 s at 100,000 jobs, on every readiness probe);
:func:`ping` says whether Redis answers and how fast. Nothing here holds a prompt or user data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from comfy.jobs.redis_scripts import KEYS

__all__ = ["Presence", "members", "ping"]

log = logging.getLogger(__name__)

#: Seconds between heartbeats, and how long a silent process still counts as alive.
INTERVAL, TTL = 3.0, 10.0


class Presence:
    """One process's heartbeat; ``role`` is ``replica`` (serves the page and the API), ``worker`` or both."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, member_id: str, role: str,
                 interval: float = INTERVAL, ttl: float = TTL) -> None:
        self.client = client
        self.key = prefix + KEYS["presence"] + member_id
        self.index = _index(prefix)
        self.member_id = member_id
        self.interval = interval
        self.ttl = ttl
        self.record = {"id": member_id, "role": role, "host": socket.gethostname(), "pid": os.getpid(),
                       "started_at": time.time()}
        #: The last error writing the heartbeat (None while it works): what /health says is wrong.
        self.error: str | None = None

    async def beat(self) -> None:
        """Write the heartbeat once; raises the Redis error."""
        now = time.time()
        record = {**self.record, "seen_at": now}
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.key, json.dumps(record), px=int(self.ttl * 1000))
            pipe.zadd(self.index, {self.member_id: now + self.ttl})
            await pipe.execute()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop`` is set, then leave. A Redis outage is logged once, and once when it ends."""
        while not stop.is_set():
            try:
                await self.beat()
                if self.error is not None:
                    log.warning("Redis answers again: heartbeat %s restored", self.record["id"])
                self.error = None
            except (redis.exceptions.RedisError, OSError) as exc:
                if self.error is None:
                    log.warning("Cannot write the heartbeat to Redis (REDIS_URL): %s", exc)
                self.error = str(exc)
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
        await self.leave()

    async def leave(self) -> None:
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(self.key)
                pipe.zrem(self.index, self.member_id)
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError):
            pass  # it expires by itself


async def members(client: aioredis.Redis, prefix: str) -> list[dict[str, Any]]:
    """The replicas and workers whose heartbeat is alive, oldest first (raises the Redis error)."""
    now = time.time()
    await client.zremrangebyscore(_index(prefix), "-inf", now)  # heartbeats that expired: their keys are gone
    ids = await client.zrangebyscore(_index(prefix), now, "+inf")
    values = await client.mget([prefix + KEYS["presence"] + member for member in ids]) if ids else []
    alive = []
    for value in values:
        try:
            record = json.loads(value) if value else None
        except ValueError:
            continue
        if isinstance(record, dict):
            alive.append({name: record.get(name) for name in ("id", "role", "host", "pid", "started_at", "seen_at")})
    return sorted(alive, key=lambda record: record.get("started_at") or 0.0)


def _index(prefix: str) -> str:
    return prefix + KEYS["presence"].rstrip(":")


async def ping(client: aioredis.Redis, *, timeout: float = 2.0) -> tuple[bool, float | None, str | None]:
    """(reachable, round trip in ms, why not) for one PING."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return False, None, (f"Redis (REDIS_URL) does not answer: {exc}" if str(exc)
                             else "Redis (REDIS_URL) does not answer within 2 s.")
    return True, round((time.perf_counter() - start) * 1000, 2), None
