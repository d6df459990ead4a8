"""One process joined to the others on the same Redis (``REDIS_URL``): its events, cancels and heartbeat.

:class:`RedisLink` puts together, for a studio whose store is a :class:`~comfy.jobs.redis_store.RedisStore`:

- an :class:`~comfy.jobs.redis_events.EventBridge`, so progress, previews and state changes published on this
  process's bus reach pages and streams on every replica, and theirs reach ours;
- a relay of cancels: a cancel asked on any replica is handed to this process's worker, which stops the job
  on its backend if it runs it (the store's ``cancel_requested`` stays the truth; this makes it prompt);
- a :class:`~comfy.jobs.presence.Presence` heartbeat, so ``/health`` lists the replicas and workers alive;
- :meth:`health`: whether Redis answers, its latency, and who is alive.

It uses the store's own connection pool: no second pool to configure or close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.exceptions

from comfy.errors import ComfyError
from comfy.jobs.events import EventBus
from comfy.jobs.presence import Presence, members, ping
from comfy.jobs.redis_events import EventBridge
from comfy.jobs.redis_store import RedisStore

__all__ = ["RedisLink"]

log = logging.getLogger(__name__)


class RedisLink:
    """The bridge, the cancel relay and the heartbeat of one process; ``start()`` in its loop, ``aclose()`` after."""

    def __init__(self, store: RedisStore, bus: EventBus, *, member_id: str) -> None:
        self.store = store
        self.bridge = EventBridge(bus, store.client, prefix=store.prefix, replica_id=member_id)
        self.member_id = member_id
        self.presence: Presence | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    async def start(self, *, role: str, on_cancel: Callable[[str], None] | None = None) -> None:
        """Join: listen for events and cancels, and beat. A Redis that is down now is said, and retried."""
        if self._started:
            return
        self._started = True
        self._stop = asyncio.Event()
        self.presence = Presence(self.store.client, prefix=self.store.prefix, member_id=self.member_id, role=role)
        self._tasks.append(asyncio.create_task(self.presence.run(self._stop), name="redis-presence"))
        self._tasks.append(asyncio.create_task(self._join(on_cancel), name="redis-bridge"))

    async def _join(self, on_cancel: Callable[[str], None] | None) -> None:
        delay = 0.5
        while True:  # Redis may be down at start-up: the page says so, and the bridge joins when it is back
            try:
                await self.bridge.start()
                break
            except (ComfyError, redis.exceptions.RedisError, OSError) as exc:
                log.warning("Cannot join the other replicas' events yet (retrying): %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        if on_cancel is None:
            return
        requests = self.bridge.cancel_requests()
        try:
            async for job_id in requests:
                on_cancel(job_id)
        finally:
            requests.close()

    async def request_cancel(self, job_id: str) -> None:
        """Tell every process (the worker running ``job_id`` among them); a Redis outage is logged: the
        worker also reads the request from the store."""
        try:
            await self.bridge.request_cancel(job_id)
        except ComfyError as exc:
            log.warning("Could not announce the cancel of job %s (its worker sees it in the store): %s", job_id, exc)

    async def health(self) -> dict[str, Any]:
        """For ``/health``: the store, reachable or not and its latency, and the processes alive. Never raises."""
        reachable, latency, error = await ping(self.store.client)
        alive: list[dict[str, Any]] = []
        if reachable:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                alive = await members(self.store.client, self.store.prefix)
        return {
            "store": "redis", "reachable": reachable, "latency_ms": latency, "error": error,
            "prefix": self.store.prefix, "this": self.member_id,
            "replicas": [m for m in alive if "replica" in (m.get("role") or "")],
            "workers": [m for m in alive if "worker" in (m.get("role") or "")],
        }

    async def aclose(self) -> None:
        self._stop.set()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.bridge.aclose()
        self._started = False
