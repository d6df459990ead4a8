"""X/Y/Z plot records in both job stores (diskcache and a real redis-server), and a plot run on Redis."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from comfy.errors import GridNotFound, JobNotFound
from comfy.jobs.redis_store import RedisStore
from comfy.jobs.store import JobStore
from comfy.service import Studio
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy
from tests.redis_support import RedisServer, redis_prefix, redis_server  # noqa: F401  (fixtures)
from tests.test_store_contract import clock, make_store, store  # noqa: F401  (fixtures)


async def test_a_grid_record_is_stored_whole_and_found_again(store: JobStore) -> None:  # noqa: F811
    record = {"grid_id": "0123456789abcdef", "owner": "key:a", "job_ids": ["a" * 16, "b" * 16], "image": None,
              "plan": {"shape": [2, 1, 1], "axes": {"x": {"param": "steps", "values": [1, 2]}}}}
    await store.save_grid(record)
    assert await store.get_grid(record["grid_id"]) == record
    await store.save_grid({**record, "image": "grid_0123456789abcdef/image_0.png"})
    assert (await store.get_grid(record["grid_id"]))["image"] == "grid_0123456789abcdef/image_0.png"
    with pytest.raises(GridNotFound, match="No grid") as missing:
        await store.get_grid("fedcba9876543210")
    assert isinstance(missing.value, JobNotFound)  # a 404 like a missing job
    assert await store.grid_ids() == [record["grid_id"]]
    await store.delete_grid(record["grid_id"])
    await store.delete_grid(record["grid_id"])  # none is fine
    assert await store.grid_ids() == []
    with pytest.raises(GridNotFound):
        await store.get_grid(record["grid_id"])


async def test_jobs_are_read_in_one_batch_in_order_without_the_missing(store: JobStore) -> None:  # noqa: F811
    jobs = await store.enqueue_many([{"params": {"prompt": f"p{i}"}} for i in range(3)])
    ids = [jobs[2].id, "f" * 16, jobs[0].id]
    assert [job.id for job in await store.get_many(ids)] == [jobs[2].id, jobs[0].id]


async def test_a_grid_runs_on_the_redis_store(tmp_path: Path, fake_comfy: FakeComfy, redis_server: RedisServer,  # noqa: F811
                                              redis_prefix: str) -> None:  # noqa: F811
    settings = make_settings(tmp_path, fake_comfy.url)
    studio = Studio(settings, job_store=RedisStore.from_url(redis_server.url, prefix=redis_prefix))
    studio.worker.poll_interval = 0.02
    await studio.start()
    try:
        record = await studio.submit_grid({"prompt": "a fox", "steps": 2, "seed": 3, "width": 64, "height": 64},
                                          {"x": {"param": "seed", "values": [1, 2]}}, owner="key:ann")
        for job_id in record["job_ids"]:
            await studio.wait(job_id, timeout=30)
        shown = await studio.grid(record["grid_id"], owner="key:ann", scoped=True)
        assert shown["status"] == "succeeded" and Path(studio.grid_image_path(shown)).is_file()
        with pytest.raises(GridNotFound):
            await studio.grid(record["grid_id"], owner="key:bob", scoped=True)
        await retention_keeps_the_image_with_the_record_and_removes_both_with_the_cells(studio, record)
    finally:
        await studio.aclose()


async def retention_keeps_the_image_with_the_record_and_removes_both_with_the_cells(
        studio: Studio, record: dict) -> None:
    shown = await studio.grid(record["grid_id"])
    image = Path(studio.grid_image_path(shown))
    old = time.time() - 400 * 86_400
    os.utime(image.parent, (old, old))  # the image folder looks long orphaned; its cells are recent
    report = await studio.prune(30)
    assert report.jobs == 0 and report.grids == 0 and image.is_file()
    assert (await studio.grid(record["grid_id"]))["image"] == shown["image"]
    report = await studio.prune(-1)  # every cell is old enough now
    assert report.jobs == len(record["job_ids"]) and report.grids == 1 and "1 grid(s)" in report.sentence()
    assert not image.parent.exists()
    with pytest.raises(GridNotFound, match=f"No grid with id '{record['grid_id']}'"):
        await studio.grid(record["grid_id"])
    assert record["grid_id"] not in await studio.store.grid_ids()


async def test_retention_on_the_disk_store_keeps_a_grid_while_its_cells_live(tmp_path: Path,
                                                                            fake_comfy: FakeComfy) -> None:
    studio = Studio(make_settings(tmp_path, fake_comfy.url))
    studio.worker.poll_interval = 0.02
    await studio.start()
    try:
        record = await studio.submit_grid({"prompt": "a fox", "steps": 2, "seed": 3, "width": 64, "height": 64},
                                          {"x": {"param": "seed", "values": [1, 2]}})
        for job_id in record["job_ids"]:
            await studio.wait(job_id, timeout=30)
        await retention_keeps_the_image_with_the_record_and_removes_both_with_the_cells(studio, record)
    finally:
        await studio.aclose()
