"""Queue operations called in the same turn of the event loop go to Redis together, as one function call.

Many workers (asyncio tasks) in one process each wait on a round trip per transition; on a busy machine
the round trip and the cost of each call, not the work in Redis, are what limit them. :class:`ScriptBatcher`
gathers the calls made while the loop runs other tasks and sends them as one ``FCALL`` of the library in
:mod:`comfy.jobs.redis_scripts` (loaded once with ``FUNCTION LOAD``, not sent or set up again per call):
one command to send, parse and answer for eight workers instead of eight. Each operation in it stays
atomic and gets its own reply or error. A lone caller waits for no one: its call goes out on the next
turn of the loop.

A Redis that lost the library (a restart without persistence, a failover to a fresh replica, a
``FUNCTION FLUSH``) answers "Function not found"; the library is loaded again and the batch sent again
(nothing of it ran).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from comfy.jobs.redis_scripts import BATCH_FUNCTION, LIBRARY

__all__ = ["ScriptBatcher"]

_Call = tuple[str, list[str], "asyncio.Future[Any]"]


def _not_loaded(exc: BaseException) -> bool:
    return isinstance(exc, redis.exceptions.ResponseError) and "function not found" in str(exc).lower()


class ScriptBatcher:
    """Runs the library's operations for one client, batched per event-loop turn; results and errors per call."""

    def __init__(self, client: aioredis.Redis, *, max_batch: int = 16) -> None:
        self.client = client
        #: Operations per FCALL; more wait for the next one (already on its way while this one runs).
        self.max_batch = max_batch
        self._pending: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def call(self, operation: str, args: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush_soon)
        self._pending.append((operation, args, future))
        return await future

    def _flush_soon(self) -> None:
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        for at in range(0, len(pending), self.max_batch):
            task = loop.create_task(self._flush(pending[at:at + self.max_batch]))
            self._flushes.add(task)  # a reference, so the task is not collected before it ends
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[_Call]) -> None:
        command: list[Any] = ["FCALL", BATCH_FUNCTION, 0]
        for operation, args, _future in batch:
            command += [operation, len(args), *args]
        try:
            try:
                results = await self.client.execute_command(*command)
            except redis.exceptions.ResponseError as exc:
                if not _not_loaded(exc):
                    raise
                await self.client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)
                results = await self.client.execute_command(*command)
        except (redis.exceptions.RedisError, OSError) as exc:
            for _operation, _args, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_operation, _args, future), result in zip(batch, results):
            if future.done():
                continue  # its caller was cancelled
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def aclose(self) -> None:
        """Wait for the batches already sent."""
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
