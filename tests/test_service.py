"""The studio end to end on the fake ComfyUI: queue → worker → ComfyUI → PNG on disk."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image

from comfy.errors import IdempotencyConflict, WorkflowError
from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from comfy.service import Studio, redact_url
from comfy.settings import Settings
from comfy.storage.local import METADATA_KEY
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import image, workflow
from tests.toolbox_support import inputs_of

LIGHTHOUSE = GenerationParams(prompt="a lighthouse at dawn", steps=3, seed=42, width=64, height=64)


async def test_generate_saves_the_comfy_png_with_settings(settings: Settings) -> None:
    # The worker starts only once the follower has read the queued state: the store's reads are awaited, so a
    # running worker could claim the job before follow()'s first read, and follow() would rightly begin there.
    studio = Studio(settings)
    studio.worker.poll_interval = 0.02
    try:
        [job] = await studio.submit(LIGHTHOUSE)
        stream = studio.follow(job.id)
        events = [await anext(stream)]
        await studio.start()
        async for event in stream:
            events.append(event)
        done = await studio.job(job.id)
    finally:
        await studio.aclose()
    assert done.state is JobState.SUCCEEDED and done.progress == 1.0
    assert done.prompt_id and done.finished_at and done.started_at
    kinds = [e.kind for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded"
    assert "preview" in kinds and any(e.kind == "progress" and e.step == 3 and e.steps == 3 for e in events)
    [output] = done.outputs
    data = open(output["path"], "rb").read()
    texts = pngmeta.read_text_chunks(data)
    meta = json.loads(texts[METADATA_KEY])
    assert meta["params"]["seed"] == 42 and meta["params"]["checkpoint"] == "random-sd15.safetensors"
    assert inputs_of(json.loads(texts["prompt"]), "KSampler")["seed"] == 42  # ComfyUI's own chunk is kept
    assert "Seed: 42" in texts["parameters"]
    assert Image.open(io.BytesIO(data)).size == (64, 64)


async def test_random_seed_is_recorded(studio: Studio) -> None:
    [job] = await studio.submit(GenerationParams(prompt="x", steps=2, width=64, height=64))
    assert job.params["seed"] >= 0
    done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED


async def test_count_makes_jobs_with_seeds_counting_up(studio: Studio) -> None:
    jobs = await studio.submit(LIGHTHOUSE, count=3)
    assert [j.params["seed"] for j in jobs] == [42, 43, 44]
    for job in jobs:
        assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"sampler": "no_such_sampler"}, "sampler", "no_such_sampler"),
        ({"scheduler": "sideways"}, "scheduler", "sideways"),
        ({"checkpoint": "missing.safetensors"}, "checkpoint", "not on the server"),
        ({"steps": 0}, "steps", "between 1 and"),
        ({"width": 100}, "width", "multiple of 8"),
        ({"prompt": "  "}, "prompt", "empty"),
        ({"cfg": 1000.0}, "cfg", "between"),
    ],
)
async def test_bad_requests_are_refused_before_a_job_exists(studio: Studio, change, field, words) -> None:
    with pytest.raises(WorkflowError) as info:
        await studio.submit({**LIGHTHOUSE.to_dict(), **change})
    assert info.value.field == field and words in str(info.value)
    assert (await studio.jobs()).jobs == []


async def test_idempotency_key(studio: Studio) -> None:
    [first] = await studio.submit(LIGHTHOUSE, idempotency_key="k1")
    [again] = await studio.submit(LIGHTHOUSE, idempotency_key="k1")
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await studio.submit(LIGHTHOUSE.with_seed(7), idempotency_key="k1")
    await studio.wait(first.id, timeout=30)
    assert len((await studio.jobs()).jobs) == 1


async def test_a_random_seed_under_an_idempotency_key_is_the_same_request(studio: Studio) -> None:
    random = LIGHTHOUSE.with_seed(-1)
    [first] = await studio.submit(random, idempotency_key="r1")
    [again] = await studio.submit(random, idempotency_key="r1")
    [other] = await studio.submit(random, idempotency_key="r2")
    assert again.id == first.id and first.params["seed"] != -1
    assert other.id != first.id and other.params["seed"] != first.params["seed"]  # another key, another seed
    graph = json.dumps(workflow("txt2img_api"))
    [bound] = await studio.submit_params_to_workflow(graph, {"prompt": "a fox", "seed": -1}, idempotency_key="w1")
    [bound_again] = await studio.submit_params_to_workflow(graph, {"prompt": "a fox", "seed": -1},
                                                           idempotency_key="w1")
    assert bound_again.id == bound.id
    for job in (first, other, bound):
        await studio.wait(job.id, timeout=30)


async def test_keeps_the_backend_busy_two_prompts_in_flight(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    jobs = await studio.submit(LIGHTHOUSE, count=3)
    for _ in range(200):
        if len(fake_comfy.prompts) >= 2:
            break
        await asyncio.sleep(0.02)
    assert len(fake_comfy.prompts) == 2  # the next prompt waits on ComfyUI, the third in our queue
    assert (await studio.position(jobs[2].id)) == 0
    fake_comfy.hold = False
    for job in jobs:
        assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED


async def test_cancel_a_queued_job_never_runs(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    jobs = await studio.submit(LIGHTHOUSE, count=3)
    cancelled = await studio.cancel(jobs[2].id)
    assert cancelled.state is JobState.CANCELLED
    fake_comfy.hold = False
    for job in jobs[:2]:
        await studio.wait(job.id, timeout=30)
    seeds = [inputs_of(body["prompt"], "KSampler")["seed"] for body in fake_comfy.prompts]
    assert 44 not in seeds and (await studio.job(jobs[2].id)).state is JobState.CANCELLED


async def test_cancel_a_running_job_interrupts_the_backend(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.05
    [job] = await studio.submit(GenerationParams(prompt="slow", steps=60, seed=1, width=64, height=64))
    async for event in studio.follow(job.id):
        if event.kind == "progress" and event.step:
            break
    await studio.cancel(job.id)
    done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.CANCELLED
    assert fake_comfy.interrupts and fake_comfy.interrupts[-1] == {"prompt_id": done.prompt_id}


async def test_cancel_a_job_pending_on_comfyui_removes_it_there(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    jobs = await studio.submit(LIGHTHOUSE, count=2)
    while len(fake_comfy.prompts) < 2:
        await asyncio.sleep(0.02)
    await studio.cancel(jobs[1].id)
    assert (await studio.wait(jobs[1].id, timeout=30)).state is JobState.CANCELLED
    assert fake_comfy.deleted == [fake_comfy.prompts[1]["prompt_id"]]
    fake_comfy.hold = False
    assert (await studio.wait(jobs[0].id, timeout=30)).state is JobState.SUCCEEDED


async def test_execution_error_fails_the_job_with_a_readable_message(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.fail_next = True
    [job] = await studio.submit(LIGHTHOUSE)
    done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.attempts == 1  # not retried: it would fail again
    assert done.error["code"] == "execution_failed" and "RuntimeError" in done.error["message"]


async def test_backend_restart_mid_job_resubmits(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.05
    [job] = await studio.submit(GenerationParams(prompt="x", steps=20, seed=5, width=64, height=64))
    async for event in studio.follow(job.id):
        if event.kind == "progress" and event.step:
            break
    await asyncio.to_thread(fake_comfy.restart)
    fake_comfy.step_time = 0.001
    done = await studio.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2
    assert len(done.outputs) == 1


async def test_jobs_wait_for_an_unreachable_backend(tmp_path) -> None:
    server = FakeComfy(step_time=0.001)
    server.start()
    url = server.url
    server.stop()
    settings = make_settings(tmp_path, url)
    async with Studio(settings) as studio:
        studio.worker.poll_interval = 0.02
        status = await studio.backend_status()
        assert not status.reachable and "Cannot reach" in status.error
        [job] = await studio.submit(LIGHTHOUSE)  # validated later: the server was never seen
        await studio.start()
        await asyncio.sleep(0.3)
        waiting = await studio.job(job.id)
        assert waiting.state is JobState.QUEUED and waiting.attempts == 0
        assert "waiting for the backend" in (waiting.note or "")
        server.start()  # same port
        try:
            assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED
        finally:
            server.stop()


async def test_img2img_uploads_the_init_image(studio: Studio, fake_comfy: FakeComfy) -> None:
    [job] = await studio.submit(GenerationParams(prompt="paint it", steps=2, seed=3, denoise=0.5),
                                image=image("protocol-test-input.png"))
    done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED
    graph = fake_comfy.prompts[-1]["prompt"]
    loader = next(n for n in graph.values() if n["class_type"] == "LoadImage")
    assert loader["inputs"]["image"].startswith("studio_")
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["denoise"] == 0.5


async def test_not_an_image_is_refused(studio: Studio) -> None:
    with pytest.raises(WorkflowError, match="not an image"):
        await studio.submit(LIGHTHOUSE, image=b"hello")


async def test_any_workflow_with_bound_values(studio: Studio, fake_comfy: FakeComfy) -> None:
    jobs = await studio.submit_params_to_workflow(json.dumps(workflow("txt2img_api")), {"prompt": "a fox", "seed": 9},
                                                 count=2)
    for job in jobs:
        assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED
    prompts = [b["prompt"] for b in fake_comfy.prompts]
    assert [p["6"]["inputs"]["text"] for p in prompts] == ["a fox", "a fox"]
    assert [p["3"]["inputs"]["seed"] for p in prompts] == [9, 10]
    assert all(p["3"]["inputs"]["steps"] == 3 for p in prompts)  # the workflow keeps its own steps


async def test_workflow_from_a_comfy_png(studio: Studio) -> None:
    [job] = await studio.submit_params_to_workflow(image("txt2img_output.png"), {"seed": 77})
    assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED


async def test_workflow_that_cannot_run_is_refused(studio: Studio) -> None:
    graph = workflow("txt2img_api")
    graph["3"]["class_type"] = "NoSuchSampler"
    with pytest.raises(WorkflowError, match="not installed"):
        await studio.submit_workflow(graph)
    assert (await studio.jobs()).jobs == []


async def test_models_and_status(studio: Studio) -> None:
    models = await studio.models()
    assert models.checkpoints == ["random-sd15.safetensors"] and "euler" in models.samplers
    status = await studio.backend_status()
    assert status.reachable and status.comfyui_version == "0.8.0" and status.gpu


def test_redact_url() -> None:
    assert redact_url("https://user:pw@abc-8188.proxy.runpod.net/x?token=1") == "https://abc-8188.proxy.runpod.net/x"


async def test_a_job_past_its_time_limit_is_stopped_and_not_retried(tmp_path, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.1
    settings = make_settings(tmp_path, fake_comfy.url, job_timeout=0.5)
    async with Studio(settings) as studio:
        studio.client.idle_check = 0.2
        await studio.start()
        [job] = await studio.submit(GenerationParams(prompt="long", steps=50, seed=1, width=64, height=64))
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.attempts == 1
    assert done.error["code"] == "job_timeout" and "STUDIO_JOB_TIMEOUT" in done.error["message"]
    assert fake_comfy.interrupts  # stopped on the server too
