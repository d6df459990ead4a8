"""RunPod Serverless end to end on the fake endpoint: statuses, outputs, errors, cancel, retries, limits, secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from comfy.backends.runpod import RunPodBackend, describe_failure, parse_progress
from comfy.backends.runpod_client import RunExpired, RunPodClient, RunUnconfirmed, map_errors
from comfy.backends.runpod_payload import build_run_body
from comfy.errors import ExecutionFailed, PromptRejected, ServerError, ServerUnavailable, WorkflowError
from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from comfy.service import Studio
from comfy.settings import Settings
from comfy.storage.local import METADATA_KEY
from tests.conftest import job_where, running, wait_for
from tests.fakes.comfyui import FakeComfy
from tests.fakes.runpod_server import FakeRunPod, fixture
from tests.fixtures_util import image
from tests.test_errors import _instance, _subclasses
from tests.toolbox_support import inputs_of

PARAMS = GenerationParams(prompt="a lighthouse at dawn", steps=3, seed=42, width=64, height=64,
                          checkpoint="random-sd15.safetensors")


@pytest.fixture
def runpod() -> FakeRunPod:
    with FakeRunPod(step_time=0.005) as fake:
        yield fake


def runpod_settings(tmp_path: Path, fake: FakeRunPod, **overrides: object) -> Settings:
    values: dict[str, object] = {"runpod_endpoint_id": fake.endpoint_id, "runpod_api_key": fake.api_key,
                                 "runpod_base_url": fake.url, "data_dir": tmp_path / "data", "lease_seconds": 5.0}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def serverless(studio: Studio) -> RunPodBackend:
    return next(b for b in studio.pool.backends if isinstance(b, RunPodBackend))


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


# -- the mapping, straight from the fixtures -----------------------------------------------------------


def test_failed_statuses_become_readable_errors() -> None:
    handler = describe_failure(fixture("serverless/status-failed-handler-error")["response"]["body"])
    assert isinstance(handler, ExecutionFailed) and (handler.node_id, handler.node_type) == ("5", "KSampler")
    assert str(handler) == "ComfyUI on the RunPod worker failed while running node 5 (KSampler): CUDA out of memory"
    crash = describe_failure(fixture("serverless/status-failed-exception")["response"]["body"])
    assert str(crash) == "The RunPod worker crashed: RuntimeError: raised!" and crash.exception_type == "RuntimeError"
    missing = fixture("worker-comfyui/error-missing-workflow")["response"]["handler_return"]["error"]
    assert str(describe_failure({"status": "FAILED", "error": missing})) == f"The RunPod worker failed: {missing}"
    upload = fixture("worker-comfyui/error-upload-images")["response"]["handler_return"]
    message = str(describe_failure({"status": "FAILED", "error": upload["error"], "output": {"details": upload["details"]}}))
    assert "Failed to upload one or more input images: Error decoding base64 for input_image_1.png" in message
    rejected = fixture("worker-comfyui/error-validation-400")["response"]["handler_return"]["error"]
    validation = describe_failure({"status": "FAILED", "error": rejected})
    assert isinstance(validation, PromptRejected) and "Available checkpoint models: a.safetensors" in str(validation)
    assert "without a reason" in str(describe_failure({"status": "FAILED"}))


def test_progress_in_every_shape_seen() -> None:
    documented = fixture("serverless/status-in-progress-with-progress")
    assert parse_progress(documented["response"]["body"]["output"]) == (0.4, 4, 10, None)
    assert parse_progress(documented["proposed_worker_comfyui_progress_output_pr221"]) == (0.48, 12, 25, "3")
    assert parse_progress({"progress": 55}) == (0.55, None, None, None)
    assert parse_progress({"progress": "70%"}) == (0.7, None, None, None)
    assert parse_progress({"images": []}) is None and parse_progress("starting") is None


def test_oversize_images_keep_transparency_as_png() -> None:
    rgba = Image.frombytes("RGBA", (600, 600), os.urandom(600 * 600 * 4))  # a mask in its alpha: keep it
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    graph = {"1": {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "alpha"}}}
    body, sent, notes = build_run_body(graph, {"mask.png": buf.getvalue()}, {}, limit=len(buf.getvalue()) // 2)
    payload = json.loads(body)["input"]
    assert len(body) <= len(buf.getvalue()) // 2 and payload["images"][0]["name"] == "mask.png"
    assert sent["1"]["inputs"]["image"] == "mask.png" and "as a PNG, scaled from 600×600" in notes[0]


# -- statuses, end to end ------------------------------------------------------------------------------


async def test_a_job_runs_on_runpod_and_saves_the_png_with_our_metadata(tmp_path, runpod: FakeRunPod) -> None:
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        assert [b.name for b in studio.pool.backends] == ["runpod:fakeendpoint01"]  # no COMFYUI_URL: endpoint only
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
        [status] = await studio.backends_status()
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and done.note is None
    assert done.backend == "runpod:fakeendpoint01" and runpod.status_of(done.prompt_id) == "COMPLETED"
    [run] = runpod.runs
    assert inputs_of(run["input"]["workflow"], "CLIPTextEncode")["text"] == "a lighthouse at dawn"
    assert run["policy"] == {"executionTimeout": 3_600_000, "ttl": 86_400_000}
    assert runpod.requests and all(seen.authorized for seen in runpod.requests)
    [output] = done.outputs
    data = Path(output["path"]).read_bytes()
    texts = pngmeta.read_text_chunks(data)
    meta = json.loads(texts[METADATA_KEY])
    assert meta["backend"] == "runpod:fakeendpoint01" and meta["prompt_id"] == done.prompt_id
    assert meta["params"]["seed"] == 42 and "Seed: 42" in texts["parameters"]
    assert "prompt" in texts  # ComfyUI's own chunk, as the worker's ComfyUI wrote it
    assert Image.open(io.BytesIO(data)).format == "PNG" and output["source"] == "ComfyUI_00001_.png"
    assert (status.kind, status.state, status.name, status.gpu) == ("runpod", "up", "runpod:fakeendpoint01",
                                                                     "RunPod Serverless")
    assert status.url == f"{runpod.url}/{runpod.endpoint_id}" and status.workers_idle == 4
    assert (status.jobs_in_queue, status.jobs_in_progress, status.in_flight) == (0, 0, 0)


async def test_a_cold_start_shows_waiting_for_a_gpu_worker_then_progress(tmp_path) -> None:
    with FakeRunPod(cold_start=0.3, step_time=0.05) as fake:
        async with running(runpod_settings(tmp_path, fake)) as studio:
            [job] = await studio.submit(PARAMS)
            waiting, steps = [], []
            async for event in studio.follow(job.id):
                if event.message and "GPU worker" in event.message:
                    waiting.append((event.message, event.node, (await studio.job(job.id)).note))
                if event.step is not None:
                    steps.append((event.step, event.steps))
            done = await studio.job(job.id)
    [(message, node, note)] = waiting
    assert message == node == note == "waiting for a GPU worker (cold start)"  # stored: other processes see it
    assert (1, 3) in steps or (2, 3) in steps  # the worker's progress_update("k/3")
    assert done.state is JobState.SUCCEEDED and done.note is None


async def test_an_endpoint_alone_offers_its_checkpoints_and_the_stock_samplers(tmp_path, runpod: FakeRunPod) -> None:
    settings = runpod_settings(tmp_path, runpod, runpod_checkpoints="sdxl-base.safetensors, flux-dev.safetensors")
    async with running(settings) as studio:
        models = await studio.models()
    assert models.checkpoints == ["sdxl-base.safetensors", "flux-dev.safetensors"]
    assert "euler" in models.samplers and "dpmpp_2m" in models.samplers and "karras" in models.schedulers


async def test_waiting_behind_busy_workers_is_not_a_cold_start(tmp_path) -> None:
    with FakeRunPod(workers=1, step_time=0.005) as fake:
        async with running(runpod_settings(tmp_path, fake)) as studio:
            fake.hold = True
            jobs = await studio.submit(PARAMS, count=2)
            # Both are sent at once; whichever reaches the endpoint second waits for its one worker.
            await wait_for(lambda: any_note(studio, jobs))
            notes = {(await studio.job(job.id)).note for job in jobs} - {None}  # both, if caught before the worker took one
            assert notes == {"waiting for a GPU worker"}
            fake.hold = False
            for job in jobs:
                assert (await studio.wait(job.id, timeout=30)).state is JobState.SUCCEEDED


@pytest.mark.parametrize("how", ["base64", "s3"])
async def test_outputs_as_base64_or_s3_urls_are_saved(tmp_path, runpod: FakeRunPod, how: str) -> None:
    runpod.output = how
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and len(done.outputs) == 1
    assert pngmeta.is_png(Path(done.outputs[0]["path"]).read_bytes())
    if how == "s3":  # downloaded from the presigned URL, without our API key
        assert [(g["authorization"], g["signed"]) for g in runpod.s3_gets] == [(None, True)]


async def test_a_bucket_the_worker_could_not_use_fails_readably(tmp_path, runpod: FakeRunPod) -> None:
    runpod.output = "s3_local"
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.error["code"] == "execution_failed"
    assert "BUCKET_* settings are incomplete" in done.error["message"]


@pytest.mark.parametrize(("scenario", "words"), [
    ("handler_error", "failed while running node 5 (KSampler): CUDA out of memory"),
    ("exception", "The RunPod worker crashed: RuntimeError: raised!"),
])
async def test_failed_jobs_say_why_and_are_not_retried(tmp_path, runpod: FakeRunPod, scenario, words) -> None:
    runpod.fail_next = scenario
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.attempts == 1 and len(runpod.runs) == 1
    assert done.error["code"] == "execution_failed" and words in done.error["message"]


async def test_partial_errors_and_no_images_are_noted_on_a_succeeded_job(tmp_path, runpod: FakeRunPod) -> None:
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        runpod.partial_errors_next = True
        [partial] = await studio.submit(PARAMS)
        partial = await studio.wait(partial.id, timeout=30)
        runpod.no_images_next = True
        [empty] = await studio.submit(PARAMS.with_seed(43))
        empty = await studio.wait(empty.id, timeout=30)
    assert partial.state is JobState.SUCCEEDED and len(partial.outputs) == 1
    assert "The RunPod worker reported: Error uploading ComfyUI_00002_.png to S3" in partial.note
    assert empty.state is JobState.SUCCEEDED and empty.outputs == [] and "saved no images" in empty.note


async def test_timed_out_at_runpod_fails_without_retry(tmp_path, runpod: FakeRunPod) -> None:
    runpod.time_out_next = True
    async with running(runpod_settings(tmp_path, runpod, job_timeout=90)) as studio:
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert runpod.runs[0]["policy"]["executionTimeout"] == 90_000
    assert done.state is JobState.FAILED and done.attempts == 1 and done.error["code"] == "job_timeout"


async def test_cancel_reaches_runpod(tmp_path, runpod: FakeRunPod) -> None:
    runpod.hold = True
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        async for event in studio.follow(job.id):
            if event.node == "RunPod worker":  # IN_PROGRESS at RunPod
                break
        await studio.cancel(job.id)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.CANCELLED
    assert runpod.cancels == [done.prompt_id] and runpod.status_of(done.prompt_id) == "CANCELLED"


async def test_cancel_while_waiting_for_a_worker(tmp_path) -> None:
    with FakeRunPod(cold_start=30) as fake:
        async with running(runpod_settings(tmp_path, fake)) as studio:
            [job] = await studio.submit(PARAMS)
            await job_where(studio, job.id, lambda j: j.note is not None)
            await studio.cancel(job.id)
            done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.CANCELLED and fake.cancels == [done.prompt_id]


async def test_a_job_cancelled_at_runpod_by_someone_else_fails(tmp_path, runpod: FakeRunPod) -> None:
    runpod.hold = True
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        await job_where(studio, job.id, lambda j: j.prompt_id is not None)
        run_id = (await studio.job(job.id)).prompt_id
        async with httpx.AsyncClient() as http:  # e.g. from RunPod's console
            await http.post(f"{runpod.url}/{runpod.endpoint_id}/cancel/{run_id}",
                            headers={"Authorization": f"Bearer {runpod.api_key}"})
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.error["code"] == "interrupted" and "cancelled" in done.error["message"]


async def test_expired_at_runpod_is_submitted_again_then_fails_when_out_of_attempts(tmp_path, runpod) -> None:
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        runpod.expire_next = True
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2 and len(runpod.runs) == 2
    assert 404 in runpod.statuses("/status/")
    async with running(runpod_settings(tmp_path / "b", runpod, max_attempts=1)) as studio:
        runpod.expire_next = True
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.error["code"] == "run_expired"
    assert "RunPod no longer knows job" in done.error["message"] and "expired" in done.error["message"]


async def test_a_restarted_studio_reattaches_to_the_runpod_job(tmp_path, runpod: FakeRunPod) -> None:
    settings = runpod_settings(tmp_path, runpod, lease_seconds=0.5)
    runpod.hold = True
    async with running(settings) as studio:
        [job] = await studio.submit(PARAMS)
        await job_where(studio, job.id, lambda j: runpod.status_of(j.prompt_id or "") == "IN_PROGRESS")
    runpod.hold = False
    async with running(settings) as again:
        done = await again.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and len(runpod.runs) == 1


# -- HTTP: retries, limits, keys ------------------------------------------------------------------------


async def test_429_and_5xx_are_retried_honouring_retry_after(runpod: FakeRunPod) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    api = RunPodClient(runpod.endpoint_id, SecretStr(runpod.api_key), base_url=runpod.url, sleep=sleep, backoff=0.25)
    try:
        runpod.rate_limit_next, runpod.retry_after = 2, "3"
        await api.health()
        runpod.errors_next = 2
        await api.health()
        runpod.rate_limit_next, runpod.retry_after = 1, formatdate(time.time() + 30, usegmt=True)
        await api.health()
        assert waits[:4] == [3.0, 3.0, 0.25, 0.5] and 25 < waits[4] <= 30.5
        assert runpod.statuses("/health") == [429, 429, 200, 503, 503, 200, 429, 200]
        runpod.rate_limit_next, runpod.retry_after = 10, None
        with pytest.raises(ServerUnavailable, match="rate-limited"):
            await api.health()
        assert waits[5:] == [0.25, 0.5, 1.0, 2.0, 4.0]  # no Retry-After: exponential backoff
    finally:
        runpod.rate_limit_next = 0
        await api.aclose()


@pytest.mark.parametrize(("status", "posts"), [(503, 3), (502, 1), (500, 1)])
async def test_run_is_sent_again_only_when_runpod_surely_did_not_take_it(runpod: FakeRunPod, status, posts) -> None:
    async def no_sleep(seconds: float) -> None:
        pass

    api = RunPodClient(runpod.endpoint_id, SecretStr(runpod.api_key), base_url=runpod.url, sleep=no_sleep)
    body = json.dumps({"input": {"workflow": {}}}).encode()
    try:
        runpod.errors_next, runpod.error_status = 2, status
        if posts == 1:  # a gateway's 502/500 may follow a queued job: a retry could start a second run
            with pytest.raises(RunUnconfirmed, match=f"HTTP {status}"):
                await api.run(body)
        else:
            await api.run(body)
        assert runpod.statuses("/run") == [status] * min(posts, 2) + ([200] if posts == 3 else [])
    finally:
        runpod.errors_next = 0
        await api.aclose()


async def test_a_rate_limited_submit_waits_as_told_and_runs_once(tmp_path, runpod: FakeRunPod) -> None:
    runpod.rate_limit_next, runpod.retry_after = 2, "0.2"
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and len(runpod.runs) == 1
    runs = [seen for seen in runpod.requests if seen.path.endswith("/run")]
    assert [seen.status for seen in runs] == [429, 429, 200]
    assert all(later.at - earlier.at >= 0.19 for earlier, later in zip(runs, runs[1:]))  # the fake's own clock


async def test_an_oversize_init_image_is_sent_as_jpeg_to_fit_10_mb(tmp_path, runpod: FakeRunPod) -> None:
    big = noise_png(1696)  # 8.6 MB of noise: 11.5 MB as base64 (sides multiples of 8: kept as they are)
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(GenerationParams(prompt="paint it", steps=2, seed=3, denoise=0.5,
                                                     checkpoint="random-sd15.safetensors"), image=big)
        done = await studio.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED and "sent as a JPEG" in done.note and "10 MB" in done.note
    [run] = runpod.runs
    assert len(json.dumps(run, separators=(",", ":"))) <= 10_000_000
    [sent] = run["input"]["images"]
    assert sent["name"].endswith(".jpg")
    loader = next(n for n in run["input"]["workflow"].values() if n["class_type"] == "LoadImage")
    assert loader["inputs"]["image"] == sent["name"]
    with Image.open(io.BytesIO(base64.b64decode(sent["image"]))) as jpeg:
        assert (jpeg.format, jpeg.size) == ("JPEG", (1696, 1696))  # same size: the output keeps its size


async def test_an_image_that_cannot_fit_is_refused_with_the_limit_in_words(tmp_path, runpod: FakeRunPod) -> None:
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        serverless(studio).max_request_bytes = 20_000
        [job] = await studio.submit(GenerationParams(prompt="x", steps=2, seed=3, denoise=0.5,
                                                     checkpoint="random-sd15.safetensors"), image=noise_png(400))
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.error["code"] == "invalid_request" and runpod.runs == []
    assert "too large for RunPod Serverless" in done.error["message"] and "at most 0.02 MB" in done.error["message"]
    with pytest.raises(WorkflowError):
        build_run_body({}, {"a.png": noise_png(300)}, {}, limit=10_000)


async def test_runpod_refusing_the_size_fails_the_job_readably(tmp_path, runpod: FakeRunPod) -> None:
    runpod.max_body = 50_000
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        serverless(studio).max_request_bytes = 10**9  # as if we did not know the limit
        [job] = await studio.submit(GenerationParams(prompt="x", steps=2, seed=3, denoise=0.5,
                                                     checkpoint="random-sd15.safetensors"), image=noise_png(300))
        done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.FAILED and done.error["code"] == "request_too_large" and done.attempts == 1
    assert "10 MB" in done.error["message"] and runpod.statuses("/run") == [413]


async def test_a_wrong_key_leaves_jobs_waiting_and_says_which_setting(tmp_path, runpod: FakeRunPod) -> None:
    async with running(runpod_settings(tmp_path, runpod, runpod_api_key="rp_wrong")) as studio:
        [status] = await studio.backends_status()
        assert not status.reachable and status.state == "down" and "RUNPOD_API_KEY" in status.error
        [job] = await studio.submit(PARAMS)
        await job_where(studio, job.id, lambda j: j.note is not None)
        waiting = await studio.job(job.id)
        assert waiting.state is JobState.QUEUED and waiting.attempts == 0
        assert "waiting for the backend" in waiting.note and "RUNPOD_API_KEY" in waiting.note
        assert "RUNPOD_API_KEY" in studio.worker.backend_down


async def test_the_api_key_is_never_logged_or_shown(tmp_path, runpod: FakeRunPod, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    key = runpod.api_key
    settings = runpod_settings(tmp_path, runpod)
    runpod.rate_limit_next, runpod.retry_after, runpod.fail_next = 1, "0", "handler_error"
    async with running(settings) as studio:
        [job] = await studio.submit(PARAMS)
        failed = await studio.wait(job.id, timeout=30)
        statuses = [s.to_dict() for s in await studio.backends_status()]
        shown = [repr(settings), str(settings.model_dump()), repr(studio.pool.backends), repr(serverless(studio).api),
                 json.dumps(failed.to_dict()), json.dumps(statuses)]
    async with running(runpod_settings(tmp_path / "wrong", runpod, runpod_api_key=key[::-1])) as studio:
        [status] = await studio.backends_status()
        shown.append(json.dumps(status.to_dict()))
    assert failed.state is JobState.FAILED and "429" in caplog.text  # the retry was logged
    assert all(key not in text and key[::-1] not in text for text in [caplog.text, *shown])


# -- the worker's ComfyUI behind the endpoint -----------------------------------------------------------


async def test_the_endpoint_runs_the_workflow_on_comfyui(tmp_path, fake_comfy: FakeComfy) -> None:
    with FakeRunPod(comfy=fake_comfy) as fake:
        async with running(runpod_settings(tmp_path, fake)) as studio:
            [img2img] = await studio.submit(GenerationParams(prompt="paint it", steps=2, seed=7, denoise=0.5,
                                                             checkpoint="random-sd15.safetensors"),
                                            image=image("protocol-test-input.png"))
            img2img = await studio.wait(img2img.id, timeout=30)
            [missing] = await studio.submit(PARAMS.to_dict() | {"checkpoint": "missing.safetensors"})
            missing = await studio.wait(missing.id, timeout=30)
            fake_comfy.fail_next = True
            [broken] = await studio.submit(PARAMS)
            broken = await studio.wait(broken.id, timeout=30)
    assert img2img.state is JobState.SUCCEEDED
    loader = next(n for n in fake_comfy.prompts[0]["prompt"].values() if n["class_type"] == "LoadImage")
    assert loader["inputs"]["image"].startswith("studio_")
    texts = pngmeta.read_text_chunks(Path(img2img.outputs[0]["path"]).read_bytes())
    assert inputs_of(json.loads(texts["prompt"]), "KSampler")["seed"] == 7 and METADATA_KEY in texts
    assert missing.state is JobState.FAILED and missing.error["code"] == "prompt_rejected"
    assert "refused the workflow" in missing.error["message"] and "missing.safetensors" in missing.error["message"]
    assert broken.state is JobState.FAILED and broken.error["code"] == "execution_failed"
    assert "ComfyUI on the RunPod worker failed while running node" in broken.error["message"]


def test_run_expired_is_retryable() -> None:
    assert RunExpired("x").retryable and RunExpired("x").code == "run_expired"


@pytest.mark.parametrize("cls", [*_subclasses(httpx.HTTPError), httpx.HTTPError], ids=lambda c: c.__name__)
def test_every_httpx_error_maps_to_a_server_error(cls: type) -> None:
    with pytest.raises(ServerError) as info:
        with map_errors("a test"):
            raise _instance(cls)
    assert isinstance(info.value.__cause__, cls) and "RunPod" in str(info.value)


def test_settings_read_the_runpod_contract_names(tmp_path, monkeypatch) -> None:
    from comfy.errors import ConfigError
    from comfy.settings import load_settings

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("RUNPOD_ENDPOINT_ID", "abc123xyz")
    monkeypatch.setenv("RUNPOD_BASE_URL", "http://127.0.0.1:9/v2/")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "RUNPOD_API_KEY: Value error, is required when RUNPOD_ENDPOINT_ID is set" in str(info.value)
    monkeypatch.setenv("RUNPOD_API_KEY", "rp_SECRET_from_env")
    monkeypatch.setenv("COMFYUI_URL", "http://10.0.0.1:8188, http://10.0.0.2:8188")
    settings = load_settings()
    assert (settings.runpod_endpoint_id, settings.runpod_base_url) == ("abc123xyz", "http://127.0.0.1:9/v2")
    assert settings.runpod_api_key.get_secret_value() == "rp_SECRET_from_env"
    assert settings.comfyui_urls == ["http://10.0.0.1:8188", "http://10.0.0.2:8188"]
    assert "rp_SECRET_from_env" not in repr(settings) and "rp_SECRET_from_env" not in str(settings.model_dump())
    assert load_settings(runpod_endpoint_id="").runpod_endpoint_id is None  # blank is unset
    with pytest.raises(ConfigError, match="RUNPOD_ENDPOINT_ID"):
        load_settings(runpod_endpoint_id="https://api.runpod.ai/v2/abc")


def test_a_workflow_too_big_without_images_is_refused_readably() -> None:
    graph = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "x" * 2000}}}
    with pytest.raises(WorkflowError, match="workflow is too large for RunPod") as info:
        build_run_body(graph, {}, {"ttl": 60_000}, limit=1000)
    assert info.value.field == "workflow"


async def test_a_500_to_run_is_not_resent_by_the_worker_either(tmp_path, runpod: FakeRunPod) -> None:
    runpod.errors_next, runpod.error_status = 1000, 500  # it answers, with a 500, every time
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(PARAMS)
        done = await studio.wait(job.id, timeout=30)
    runpod.errors_next = 0
    # The 500 may come after RunPod queued it: the job fails saying so, and is never sent a second time.
    assert done.state is JobState.FAILED and done.attempts == 1 and done.error["code"] == "run_unconfirmed"
    assert "HTTP 500" in done.error["message"] and "not sent again" in done.error["message"]
    assert runpod.statuses("/run") == [500]


async def any_note(studio, jobs) -> bool:
    return any([(await studio.job(job.id)).note is not None for job in jobs])
