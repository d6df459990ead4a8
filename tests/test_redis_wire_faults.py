"""The Redis store under a bad network: a reply lost after Redis ran the call, and a link that goes silent.

A proxy on loopback between the store and a real redis-server forwards every call; it can drop the
connection once a given command has gone through (redis-py then sends the call again), or hold every byte.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis

from comfy.errors import QueueError
from comfy.jobs import redis_store
from comfy.jobs.redis_store import RedisStore
from tests.redis_support import redis_prefix, redis_server  # noqa: F401 - fixtures


class Proxy:
    """Forwards to Redis; ``lose_reply_to`` (bytes of a command) cuts the connection before its answer."""

    def __init__(self, port: int) -> None:
        self.port, self.lose_reply_to, self.silent = port, None, False
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.port)
        cut = asyncio.Event()

        async def up() -> None:
            while data := await client_r.read(65536):
                while self.silent:
                    await asyncio.sleep(0.02)
                if self.lose_reply_to and self.lose_reply_to in data:
                    self.lose_reply_to = None
                    cut.set()
                redis_w.write(data)
                await redis_w.drain()

        async def down() -> None:
            while data := await redis_r.read(65536):
                while self.silent:
                    await asyncio.sleep(0.02)
                if cut.is_set():  # Redis ran it; its answer goes nowhere
                    client_w.transport.abort()
                    return
                client_w.write(data)
                await client_w.drain()

        await asyncio.gather(up(), down(), return_exceptions=True)
        with contextlib.suppress(Exception):
            redis_w.close()
            client_w.close()


@pytest.fixture
async def behind_proxy(redis_server, redis_prefix):  # noqa: F811
    proxy = Proxy(redis_server.port)
    port = await proxy.start()
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix=redis_prefix)
    direct = aioredis.Redis(port=redis_server.port, decode_responses=True)
    await store.enqueue({"prompt": "warm up"})  # the scripts are loaded: from now on calls are EVALSHA
    try:
        yield proxy, store, direct
    finally:
        proxy.silent = False
        await store.close()
        await direct.aclose()
        if proxy.server is not None:
            proxy.server.close()


async def test_an_enqueue_whose_reply_was_lost_queues_one_job(behind_proxy, redis_prefix) -> None:  # noqa: F811
    proxy, store, direct = behind_proxy
    before = await direct.zcard(f"{redis_prefix}:state:queued")
    proxy.lose_reply_to = b"EVALSHA"
    job, _ = await store.enqueue({"prompt": "once"})  # redis-py sends it again on a new connection
    assert await direct.zcard(f"{redis_prefix}:state:queued") == before + 1
    assert (await store.get(job.id)).params == {"prompt": "once"}


async def test_a_silent_link_is_said_not_waited_on_for_ever(behind_proxy, monkeypatch, redis_prefix) -> None:  # noqa: F811
    proxy, _store, _direct = behind_proxy
    monkeypatch.setattr(redis_store, "SOCKET_TIMEOUT", 0.3)  # seconds, not the 5 of a real deployment
    port = proxy.server.sockets[0].getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", prefix=redis_prefix)
    try:
        await store.counts()
        proxy.silent = True  # packets dropped without a word, as a partition does
        with pytest.raises(QueueError):
            await asyncio.wait_for(store.counts(), 30)  # the guard: without a socket timeout it never answers
    finally:
        proxy.silent = False
        await store.close()


async def test_a_record_lost_by_an_evicting_redis_leaves_the_listing_working(redis_server, redis_prefix,  # noqa: F811
                                                                            caplog) -> None:
    store = RedisStore.from_url(redis_server.url, prefix=redis_prefix)
    direct = aioredis.Redis(port=redis_server.port, decode_responses=True)
    try:
        kept, _ = await store.enqueue({"prompt": "kept"})
        lost, _ = await store.enqueue({"prompt": "evicted"})
        await direct.delete(f"{redis_prefix}:job:{lost.id}")  # what maxmemory-policy allkeys-lru does
        with caplog.at_level("WARNING"):
            page = await store.list()
        assert [job.id for job in page.jobs] == [kept.id]  # the page and /api/v1/jobs still answer
        assert "noeviction" in caplog.text
    finally:
        await store.close()
        await direct.aclose()
