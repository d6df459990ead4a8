"""Script calls made in the same turn of the event loop go to Redis together, in one pipeline.

Many workers (asyncio tasks) in one process each wait on a round trip per transition; on a busy machine
the round trip, not Redis, is what limits them. :class:`ScriptBatcher` gathers the calls made while the
loop runs other tasks and sends them as one pipeline (no MULTI: each EVALSHA is atomic on its own), so
eight workers share one round trip instead of taking eight. A lone caller waits for no one: its call
goes out on the next turn of the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.commands.core import AsyncScript

__all__ = ["ScriptBatcher"]


class ScriptBatcher:
    """Runs registered scripts for one client, batched per event-loop turn; results and errors per call."""

    def __init__(self, client: aioredis.Redis, *, max_batch: int = 4) -> None:
        self.client = client
        #: Calls per pipeline. Several smaller pipelines in flight beat one large one: Redis runs one while
        #: this process reads the answer of the one before (on two cores, neither waits for the other).
        self.max_batch = max_batch
        self._pending: list[tuple[AsyncScript, list[str], asyncio.Future[Any]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def call(self, script: AsyncScript, args: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush_soon)
        self._pending.append((script, args, future))
        return await future

    def _flush_soon(self) -> None:
        pending, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        for at in range(0, len(pending), self.max_batch):
            task = loop.create_task(self._flush(pending[at:at + self.max_batch]))
            self._flushes.add(task)  # a reference, so the task is not collected before it ends
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[AsyncScript, list[str], asyncio.Future[Any]]]) -> None:
        if len(batch) == 1:  # nothing to share: the plain call (it loads the script if Redis lost it)
            script, args, future = batch[0]
            await self._settle(future, self._one(script, args))
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for script, args, _future in batch:
                    pipe.evalsha(script.sha, 0, *args)
                results = await pipe.execute(raise_on_error=False)
        except (redis.exceptions.RedisError, OSError) as exc:
            for _script, _args, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (script, args, future), result in zip(batch, results):
            if isinstance(result, redis.exceptions.NoScriptError):  # Redis restarted or flushed its scripts
                await self._settle(future, self._one(script, args))
            elif future.done():
                continue  # its caller was cancelled
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _one(self, script: AsyncScript, args: list[str]) -> Any:
        return await script(args=args)

    @staticmethod
    async def _settle(future: asyncio.Future[Any], call: Any) -> None:
        try:
            result = await call
        except Exception as exc:  # handed to the caller, which maps it
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def aclose(self) -> None:
        """Wait for the batches already sent."""
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
