"""A pool of backends on real loopback servers: routing, checkpoints, failover, probing, mixing in RunPod."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comfy.backends.client import ComfyClient
from comfy.backends.comfyui import ComfyBackend
from comfy.backends.pool import BackendState, Pool, merge_object_info
from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from comfy.service import BackendStatus, Studio
from comfy.settings import Settings
from tests.conftest import job_where, running, wait_for
from tests.fakes.comfyui import FIXTURES_DIR, FakeComfy, load_workflow
from tests.fakes.runpod_server import FakeRunPod

CKPT = "random-sd15.safetensors"
OTHER = "other-sdxl.safetensors"


def params(seed: int, *, steps: int = 2, checkpoint: str | None = CKPT) -> GenerationParams:
    return GenerationParams(prompt="a lighthouse", steps=steps, seed=seed, width=64, height=64, checkpoint=checkpoint)


@contextlib.contextmanager
def fakes(count: int, **knobs: object) -> Iterator[list[FakeComfy]]:
    servers = [FakeComfy(step_time=0.005, node_time=0.001, **knobs).start() for _ in range(count)]  # type: ignore[arg-type]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def pool_settings(tmp_path: Path, urls: list[str], **overrides: object) -> Settings:
    values: dict[str, object] = {"comfyui_url": ",".join(urls), "data_dir": tmp_path / "data", "lease_seconds": 5.0,
                                 "failover_seconds": 1.0}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def ours(server: FakeComfy, prompt_ids: set[str]) -> list[str]:
    return [p["prompt_id"] for p in server.prompts if p["prompt_id"] in prompt_ids]


def other_checkpoint_info(tmp_path: Path) -> Path:
    """A copy of the captured object_info whose server has a different checkpoint."""
    info = json.loads((FIXTURES_DIR / "object_info.json").read_text())
    for node in info.values():
        required = (node.get("input") or {}).get("required") or {}
        if "ckpt_name" in required and isinstance(required["ckpt_name"][0], list):
            required["ckpt_name"][0] = [OTHER]
    path = tmp_path / "object_info_other.json"
    path.write_text(json.dumps(info))
    return path


# -- building the pool from settings ------------------------------------------------------------------


def test_settings_make_the_pool(tmp_path) -> None:
    urls = ["http://10.0.0.1:8188", "https://abc-8188.proxy.runpod.net", "http://10.0.0.1:8188"]
    studio = Studio(pool_settings(tmp_path, urls))
    assert [b.name for b in studio.pool.backends] == urls[:2]  # in order, once each
    assert all(b.client.reconnect_window == 1.0 for b in studio.pool.backends)  # failover_seconds
    mixed = Studio(pool_settings(tmp_path / "m", urls, runpod_endpoint_id="ep1", runpod_api_key="k",
                                 runpod_checkpoints="a.safetensors, b.safetensors"))
    assert [b.kind for b in mixed.pool.backends] == ["comfyui", "comfyui", "runpod"]
    assert mixed.pool.backends[-1].checkpoints == ["a.safetensors", "b.safetensors"]
    alone = Studio(Settings(_env_file=None, runpod_endpoint_id="ep1", runpod_api_key="k",  # type: ignore[call-arg]
                            data_dir=tmp_path / "a"))
    assert [b.name for b in alone.pool.backends] == ["runpod:ep1"]
    single = Studio(pool_settings(tmp_path / "s", urls[:1]))
    assert single.pool.single and single.client.reconnect_window == 120.0  # as before pools


# -- routing ----------------------------------------------------------------------------------------


async def test_jobs_go_to_the_backend_with_the_least_work(tmp_path) -> None:
    with fakes(3) as (a, b, c):
        for server in (a, b, c):
            server.hold = True
        async with httpx.AsyncClient() as http:  # someone else's work queued on b
            for seed in range(3):
                graph = load_workflow("txt2img")
                graph["3"]["inputs"]["seed"] = 1000 + seed
                await http.post(f"{b.url}/prompt", json={"prompt": graph, "client_id": "someone-else"})
        async with running(pool_settings(tmp_path, [a.url, b.url, c.url])) as studio:
            jobs = [job for seed in range(4) for job in await studio.submit(params(seed))]
            await wait_for(lambda: len(a.prompts) + len(c.prompts) == 4)
            assert (len(a.prompts), len(b.prompts), len(c.prompts)) == (2, 3, 2)  # b was busiest: skipped
            statuses = await studio.backends_status()
            assert [(s.in_flight, s.load) for s in statuses] == [(2, 2), (0, 3), (2, 2)]
            [fifth] = await studio.submit(params(9))  # a and c are full: b has a free slot, so it waits there
            await wait_for(lambda: len(b.prompts) == 4)
            for server in (a, b, c):
                server.hold = False
            done = [await studio.wait(job.id, timeout=30) for job in [*jobs, fifth]]
    assert all(job.state is JobState.SUCCEEDED and job.attempts == 1 for job in done)
    assert [job.backend for job in done].count(b.url) == 1


async def test_a_backend_without_the_checkpoint_never_gets_the_job(tmp_path) -> None:
    with FakeComfy(step_time=0.005, object_info_path=other_checkpoint_info(tmp_path)) as lacking, \
            FakeComfy(step_time=0.005) as having:
        async with running(pool_settings(tmp_path, [lacking.url, having.url])) as studio:
            models = await studio.models()
            assert set(models.checkpoints) == {CKPT, OTHER}  # the pool offers both
            jobs = [job for seed in range(4) for job in await studio.submit(params(seed))]
            [other] = await studio.submit(params(99, checkpoint=OTHER))
            done = [await studio.wait(job.id, timeout=30) for job in [*jobs, other]]
            assert all(job.state is JobState.SUCCEEDED for job in done)
            assert [job.backend for job in done] == [having.url] * 4 + [lacking.url]
            assert len(lacking.prompts) == 1 and len(having.prompts) == 4

            having.stop()  # the only backend with CKPT is down: its jobs wait, they do not go to `lacking`
            [waiting] = await studio.submit(params(5))
            # (It may first be claimed for `having` and given back, if the pool has not noticed yet.)
            await job_where(studio, waiting.id, lambda j: (j.note or "").startswith("waiting for a backend with"))
            job = await studio.job(waiting.id)
            assert job.state is JobState.QUEUED and job.attempts == 0
            assert job.note == f"waiting for a backend with {CKPT}: {having.url} does not answer"
            assert studio.worker.backend_down is None  # the pool as a whole still works
            having.start()
            done = await studio.wait(waiting.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.backend == having.url and len(lacking.prompts) == 1


async def test_a_backend_that_dies_mid_job_fails_over_and_comes_back(tmp_path) -> None:
    with fakes(2) as (a, b):
        a.step_time = b.step_time = 0.05
        async with running(pool_settings(tmp_path, [a.url, b.url])) as studio:
            [job] = await studio.submit(params(1, steps=40))
            async for event in studio.follow(job.id):
                if event.kind == "progress" and event.step:
                    break
            first = await studio.job(job.id)
            dead, alive = (a, b) if first.backend == a.url else (b, a)
            alive.step_time = 0.001
            dead.stop()
            done = await studio.wait(job.id, timeout=30)
            [down, up] = sorted(await studio.backends_status(), key=lambda s: s.url != dead.url)
            assert (down.state, down.reachable, up.state) == ("down", False, "up")
            dead.start()  # a fresh process on the same port: probed, then used again
            await wait_for(lambda: studio.pool.state(studio.pool.find(dead.url)) is BackendState.UP)
            dead.step_time = alive.step_time = 0.001
            dead.hold = alive.hold = True
            assert [p["prompt_id"] for p in dead.prompts] == [first.prompt_id]
            await wait_for(lambda: all(view.load == 0 for view in studio.pool.views()))  # a fresh look at both
            more = [job for seed in range(4) for job in await studio.submit(params(10 + seed))]
            await wait_for(lambda: len(dead.prompts) == 3 and len(alive.prompts) == 3)
            dead.hold = alive.hold = False
            assert [(await studio.wait(j.id, timeout=30)).state for j in more] == [JobState.SUCCEEDED] * 4
    assert done.state is JobState.SUCCEEDED and done.attempts == 2 and done.backend == alive.url
    # The job's first prompt reached the dead server; then exactly one other run, and one set of outputs.
    assert done.prompt_id != first.prompt_id
    assert [p["prompt_id"] for p in alive.prompts][:1] == [done.prompt_id]
    assert sorted(os.listdir(tmp_path / "data" / "outputs" / job.id)) == ["image_0.png"]
    assert len(done.outputs) == 1


async def test_a_short_blip_reattaches_on_the_same_backend(tmp_path) -> None:
    with fakes(2) as (a, b):
        a.step_time = b.step_time = 0.02
        async with running(pool_settings(tmp_path, [a.url, b.url], failover_seconds=10.0)) as studio:
            [job] = await studio.submit(params(1, steps=30))
            async for event in studio.follow(job.id):
                if event.kind == "progress" and event.step:
                    break
            where = a if (await studio.job(job.id)).backend == a.url else b
            await asyncio.to_thread(where.restart, lose_queue=False)  # a proxy bounce: the prompt keeps running
            done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and done.backend == where.url
    assert len(a.prompts) + len(b.prompts) == 1


async def test_jobs_wait_when_every_backend_is_down(tmp_path) -> None:
    with fakes(2) as (a, b):
        a.stop()
        b.stop()
        async with running(pool_settings(tmp_path, [a.url, b.url])) as studio:
            [job] = await studio.submit(params(1))
            await job_where(studio, job.id, lambda j: j.note is not None)
            waiting = await studio.job(job.id)
            assert waiting.state is JobState.QUEUED and waiting.attempts == 0
            assert waiting.note.startswith("waiting for the backend: no backend answers")
            assert studio.worker.backend_down and a.url in studio.worker.backend_down
            statuses = await studio.backends_status()
            assert [s.state for s in statuses] == ["down", "down"] and not any(s.reachable for s in statuses)
            b.start()
            done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.backend == b.url and done.attempts == 1


async def test_a_pool_mixing_a_pod_and_runpod_serverless(tmp_path) -> None:
    with FakeComfy(step_time=0.005) as pod, FakeRunPod(step_time=0.005) as serverless:
        pod.hold = serverless.hold = True
        settings = pool_settings(tmp_path, [pod.url], runpod_endpoint_id=serverless.endpoint_id,
                                 runpod_api_key=serverless.api_key, runpod_base_url=serverless.url)
        async with running(settings) as studio:
            jobs = [job for seed in range(4) for job in await studio.submit(params(seed))]
            await wait_for(lambda: len(pod.prompts) == 2 and len(serverless.runs) == 2)
            statuses = await studio.backends_status()
            assert [(s.kind, s.in_flight) for s in statuses] == [("comfyui", 2), ("runpod", 2)]
            pod.hold = serverless.hold = False
            done = [await studio.wait(job.id, timeout=30) for job in jobs]
    assert all(job.state is JobState.SUCCEEDED for job in done)
    assert sorted(job.backend for job in done) == sorted([pod.url] * 2 + [f"runpod:{serverless.endpoint_id}"] * 2)


# -- the pool on its own ------------------------------------------------------------------------------


async def test_an_orphan_run_is_stopped_before_its_backend_gets_new_work() -> None:
    with FakeComfy() as server:
        server.hold = True
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{server.url}/prompt", json={"prompt": load_workflow("txt2img"), "client_id": "x"})
        left_behind = answer.json()["prompt_id"]
        async with ComfyClient(server.url) as client:
            backend = ComfyBackend(client)
            pool = Pool([backend, ComfyBackend(ComfyClient("http://127.0.0.1:9"))])
            pool.mark_down(backend, "it stopped answering")
            pool.add_orphan(backend, left_behind)
            await pool.check_all()
            assert pool.state(backend) is BackendState.UP and server.deleted == [left_behind]
            await pool.aclose()


async def test_probes_back_off_while_a_backend_stays_down() -> None:
    now = [0.0]
    backend = ComfyBackend(ComfyClient("http://127.0.0.1:9"))  # nothing listens on port 9
    pool = Pool([backend, ComfyBackend(ComfyClient("http://127.0.0.1:7"))], probe_min=1.0, probe_max=8.0,
                clock=lambda: now[0])
    delays = []
    for _ in range(5):
        await pool.check_all()
        delays.append(pool.next_check_in())
        now[0] += delays[-1]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert pool.down_reason().startswith("no backend answers") and "Cannot reach" in pool.down_reason()
    await backend.client.aclose()


def test_merged_catalogue_unites_choices() -> None:
    from comfy.graph.object_info import ObjectInfo

    first = ObjectInfo({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a"], {}]}}},
                        "KSampler": {"input": {"required": {"sampler_name": [["euler"], {}]}}}})
    second = ObjectInfo({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["b", "a"], {}]}}},
                         "Custom": {"input": {}}})
    merged = merge_object_info([first, second], extra_checkpoints=["c"])
    assert merged.checkpoints == ["a", "b", "c"] and merged.samplers == ["euler"] and "Custom" in merged.raw
    assert first.checkpoints == ["a"]  # the servers' own catalogues are untouched


def test_backend_status_keeps_its_old_shape() -> None:
    status = BackendStatus("http://x:8188", True, gpu="RTX")
    assert status.to_dict()["url"] == "http://x:8188" and (status.state, status.kind, status.name) == (
        "up", "comfyui", "http://x:8188")
    assert BackendStatus("http://x:8188", False).state == "down"


@pytest.mark.parametrize("count", [1, 3])
async def test_the_worker_keeps_max_in_flight_per_backend(tmp_path, count: int) -> None:
    with fakes(count) as servers:
        for server in servers:
            server.hold = True
        async with running(pool_settings(tmp_path, [s.url for s in servers])) as studio:
            jobs = await studio.submit(params(1), count=2 * count + 1)
            await wait_for(lambda: sum(len(s.prompts) for s in servers) == 2 * count)
            await asyncio.sleep(0.1)
            assert [len(s.prompts) for s in servers] == [2] * count and (await studio.position(jobs[-1].id)) == 0
            for server in servers:
                server.hold = False
            assert [(await studio.wait(j.id, timeout=30)).state for j in jobs] == [JobState.SUCCEEDED] * len(jobs)


async def test_an_orphan_on_the_only_backend_is_stopped_while_it_stays_up() -> None:
    now = [0.0]
    with FakeComfy() as server:
        server.hold = True
        async with httpx.AsyncClient() as http:
            answer = await http.post(f"{server.url}/prompt", json={"prompt": load_workflow("txt2img"), "client_id": "x"})
        left_behind = answer.json()["prompt_id"]
        async with ComfyClient(server.url) as client:
            backend = ComfyBackend(client)
            pool = Pool([backend], clock=lambda: now[0])
            await pool.check_all()
            assert pool.state(backend) is BackendState.UP
            pool.add_orphan(backend, left_behind)  # a cancel that timed out; the backend never went down
            now[0] += pool.next_check_in()
            pool.tick(lambda: None)
            for _ in range(100):
                if server.deleted:
                    break
                await asyncio.sleep(0.02)
            assert server.deleted == [left_behind] and pool.state(backend) is BackendState.UP
            await pool.aclose()
