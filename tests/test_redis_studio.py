"""The studio on a real Redis (``REDIS_URL``), in this process: the store it opens, S3 uploads noted in Redis and
signed by another replica, retention of Redis records and local files, cancels across studios, and what
start-up says about images when nothing shares them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from comfy.jobs.redis_store import RedisStore
from comfy.service import Studio
from comfy.settings import Settings
from comfy.storage.sharing import outputs_sharing
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy
from tests.redis_support import redis_prefix, redis_server  # noqa: F401 - fixtures
from tests.test_s3 import BUCKET, KEY_ID, REGION, SECRET, admin, bucket, fast_client, moto, moto_server  # noqa: F401

PARAMS = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64}


def redis_settings(tmp_path: Path, url: str, server: Any, prefix: str, name: str = "a", **more: Any) -> Settings:
    return make_settings(tmp_path / name, url, redis_url=server.url, redis_prefix=prefix, **more)


async def test_redis_url_opens_the_redis_store_and_joins_the_others(
        tmp_path, fake_comfy: FakeComfy, redis_server, redis_prefix) -> None:  # noqa: F811
    async with Studio(redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix)) as studio:
        assert isinstance(studio.store, RedisStore) and studio.link is not None
        assert not (tmp_path / "a" / "data" / "queue").exists()  # nothing of the queue on this disk
        studio.worker.poll_interval = 0.02
        await studio.start()
        [job] = await studio.submit(GenerationParams(seed=5, **PARAMS))
        assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED

        async def me() -> dict[str, Any] | None:
            health = await studio.link.health()
            return health if health["workers"] else None

        health = None
        for _ in range(100):
            if health := await me():
                break
            await asyncio.sleep(0.05)
        assert health is not None and health["store"] == "redis" and health["reachable"] is True
        assert [m["id"] for m in health["workers"]] == [studio.worker.id] == [m["id"] for m in health["replicas"]]
        assert health["workers"][0]["role"] == "replica+worker"


async def test_a_cancel_on_one_studio_stops_the_job_another_runs(tmp_path, redis_server, redis_prefix) -> None:  # noqa: F811
    with FakeComfy(step_time=0.05, node_time=0.001) as fake:
        runner = Studio(redis_settings(tmp_path, fake.url, redis_server, redis_prefix, "a"))
        asker = Studio(redis_settings(tmp_path, fake.url, redis_server, redis_prefix, "b"))
        runner.worker.poll_interval = 5.0  # the store is read rarely: the cancel must come over pub/sub
        try:
            await runner.start()
            await asker.start(worker=False)
            [job] = await asker.submit(GenerationParams(seed=9, **{**PARAMS, "steps": 150}))
            runner.worker.wake()
            for _ in range(400):
                if (await asker.job(job.id)).step:
                    break
                await asyncio.sleep(0.02)
            asked = await asker.cancel(job.id)
            assert asked.cancel_requested and not asked.state.is_final
            done = await asker.wait(job.id, timeout=5)  # well inside the runner's 10 s store polls
            assert done.state is JobState.CANCELLED
            assert fake.interrupts
        finally:
            await asker.aclose()
            await runner.aclose()


async def test_s3_uploads_are_noted_in_redis_and_another_replica_signs_them(
        tmp_path, moto, admin, bucket, fake_comfy: FakeComfy, redis_server, redis_prefix) -> None:  # noqa: F811
    s3 = {"s3_bucket": BUCKET, "s3_endpoint_url": moto.url, "s3_region": REGION, "s3_access_key_id": KEY_ID,
          "s3_secret_access_key": SECRET, "s3_keep_local": False}
    settings_a = redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix, "a", **s3)
    settings_b = redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix, "b", **s3)
    async with Studio(settings_a, s3_client=fast_client(settings_a)) as a, \
            Studio(settings_b, s3_client=fast_client(settings_b)) as b:
        a.worker.poll_interval = 0.02
        await a.start()
        await b.start(worker=False)
        [job] = await a.submit(GenerationParams(seed=7, **PARAMS))
        assert (await a.wait(job.id, timeout=30)).state is JobState.SUCCEEDED
        assert a.uploader is not None
        await a.uploader.wait_uploaded(job.id, timeout=20)
        for _ in range(200):  # the note is written through the store from the uploader's thread
            seen = await b.job(job.id)
            if all(o.get("s3_key") for o in seen.outputs) and not Path(seen.outputs[0]["path"]).exists():
                break
            await asyncio.sleep(0.02)
        assert [o["s3_key"] for o in seen.outputs] == [f"jobs/{job.id}/image_0.png"]
        [url] = await b.image_urls(job.id)  # B has no backlog record and no local copy: it signs the key
        async with httpx.AsyncClient() as http:
            assert (await http.get(url)).content[:8] == b"\x89PNG\r\n\x1a\n"


async def test_retention_on_redis_removes_old_records_and_their_files(
        tmp_path, fake_comfy: FakeComfy, redis_server, redis_prefix) -> None:  # noqa: F811
    async with Studio(redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix)) as studio:
        studio.worker.poll_interval = 0.02
        await studio.start()
        [old] = await studio.submit(GenerationParams(seed=11, **PARAMS))
        assert (await studio.wait(old.id, timeout=30)).state is JobState.SUCCEEDED
        folder = studio.files.outputs_dir / old.id
        assert folder.is_dir()
        await studio.aclose()  # no worker now: the next job stays queued
    async with Studio(redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix)) as studio:
        queued, _ = await studio.store.enqueue(GenerationParams(seed=12, **PARAMS).to_dict())
        report = await studio.prune(-1)  # the cut-off is tomorrow: every finished job is old
        assert report.jobs == 1 and report.files >= 1 and not folder.exists()
        assert (await studio.job(queued.id)).state is JobState.QUEUED
        assert [j.id for j in (await studio.jobs()).jobs] == [queued.id]


@pytest.mark.parametrize(("extra", "fine", "words"), [
    ({}, False, "neither S3_BUCKET nor a shared data folder"),
    ({"shared_data": True}, True, "STUDIO_SHARED_DATA=1"),
    ({"s3_bucket": "art"}, True, "S3 bucket art"),
])
def test_start_up_says_how_images_reach_every_replica(tmp_path, extra: dict[str, Any], fine: bool, words: str) -> None:
    settings = make_settings(tmp_path, "http://127.0.0.1:9", redis_url="redis://127.0.0.1:6379/0", **extra)
    ok, sentence = outputs_sharing(settings)
    assert ok is fine and words in sentence


async def test_the_page_says_the_queue_is_unavailable_while_redis_is_away(tmp_path, fake_comfy: FakeComfy) -> None:
    from tests.replica_support import free_port
    from ui.handlers import Handlers

    settings = make_settings(tmp_path, fake_comfy.url, redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nobody there
    async with Studio(settings) as studio:
        line = await Handlers(studio).status()
    assert "Job queue unavailable" in line and "REDIS_URL" in line and "Running jobs keep running" in line


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0", "unix:///tmp/redis.sock"])
def test_hiredis_packing_sends_the_same_bytes_on_every_kind_of_connection(url: str) -> None:
    import redis.asyncio as aioredis

    from comfy.jobs.redis_wire import use_hiredis_packing

    plain = aioredis.Redis.from_url(url).connection_pool.make_connection()
    fast_pool = use_hiredis_packing(aioredis.Redis.from_url(url)).connection_pool
    fast = fast_pool.make_connection()
    assert isinstance(fast, type(plain)) and type(fast) is not type(plain)
    for command in (("EVALSHA", "ab12", 0, "studio", "\u00e9t\u00e9", "null", b"\x00bytes"), ("CLIENT SETINFO", "LIB-NAME", "x"),
                    ("SET", "k", "v", "PX", 10000)):
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))


async def test_an_uploaded_image_needs_a_data_folder_every_worker_shares(
        tmp_path, fake_comfy: FakeComfy, redis_server, redis_prefix) -> None:  # noqa: F811
    from comfy.errors import WorkflowError
    from tests.toolbox_support import png_bytes

    init = GenerationParams(prompt="paint it", steps=2, seed=3, width=64, height=64, denoise=0.5)
    async with Studio(redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix)) as studio:
        with pytest.raises(WorkflowError, match="STUDIO_SHARED_DATA=1") as refused:
            await studio.submit(init, image=png_bytes(64, 64))  # a worker elsewhere could not read it
        assert refused.value.field == "image"
        assert sum((await studio.store.counts()).values()) == 0
    shared = redis_settings(tmp_path, fake_comfy.url, redis_server, redis_prefix, name="b", shared_data=True)
    async with Studio(shared) as studio:
        studio.worker.poll_interval = 0.02
        await studio.start()
        [job] = await studio.submit(init, image=png_bytes(64, 64))
        assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED


async def test_members_are_read_from_the_heartbeat_index_not_by_scanning(redis_server, redis_prefix) -> None:  # noqa: F811
    from comfy.jobs.presence import Presence, members

    store = RedisStore.from_url(redis_server.url, prefix=redis_prefix)
    try:
        for n in range(3):
            await store.enqueue({"prompt": f"job {n}"})  # keys a SCAN would walk through
        replica = Presence(store.client, prefix=redis_prefix, member_id="replica-1", role="replica")
        worker = Presence(store.client, prefix=redis_prefix, member_id="worker-1", role="worker", ttl=0.2)
        await replica.beat()
        await worker.beat()

        def no_scan(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("members() scanned the keyspace")

        store.client.scan_iter = no_scan  # type: ignore[method-assign]
        assert {m["id"] for m in await members(store.client, redis_prefix)} == {"replica-1", "worker-1"}
        await asyncio.sleep(0.3)  # the worker's heartbeat expired (as after kill -9)
        assert [m["id"] for m in await members(store.client, redis_prefix)] == ["replica-1"]
        await replica.leave()
        assert await members(store.client, redis_prefix) == []
    finally:
        await store.close()
