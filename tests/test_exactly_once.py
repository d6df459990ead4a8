"""Exactly once on the GPU: a lost reply, an outage, a refused socket, a dead task, RunPod's unsure answers.

Against the fake ComfyUI and the fake RunPod over real sockets; each test counts what reached the backend.
"""

from __future__ import annotations

import asyncio

import pytest

from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from comfy.service import Studio
from tests.conftest import job_where, make_settings, quick, running, wait_for
from tests.fakes.comfyui import FakeComfy
from tests.fakes.runpod_server import FakeRunPod

SMALL = GenerationParams(prompt="a lighthouse at dawn", steps=3, seed=42, width=64, height=64)


async def finished(studio: Studio, job_id: str, timeout: float = 30):
    """The job once final; a job that never ends fails the test instead of hanging it."""
    return await asyncio.wait_for(studio.wait(job_id, timeout=timeout), timeout + 5)


async def test_a_reply_lost_after_comfyui_queued_the_prompt_is_followed_not_resent(
        studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.lose_first_replies = True  # every prompt's POST is reset after it was queued
    jobs = await studio.submit(SMALL, count=3)
    done = [await finished(studio, job.id) for job in jobs]
    assert [job.state for job in done] == [JobState.SUCCEEDED] * 3
    assert len(fake_comfy.lost_replies) == 3  # each answer was lost...
    assert len(fake_comfy.prompts) == 3  # ...and each prompt still ran once, and was followed
    assert [job.prompt_id for job in done] == fake_comfy.lost_replies
    assert all(job.attempts == 1 and len(job.outputs) == 1 for job in done)


async def test_a_post_prompt_that_times_out_after_comfyui_queued_it_is_followed_not_resent(
        tmp_path, fake_comfy: FakeComfy) -> None:
    fake_comfy.prompt_answer_delay = 1.5  # the answer comes after the client's read timeout, every time
    async with running(make_settings(tmp_path, fake_comfy.url, request_timeout=0.5)) as studio:
        [job] = await studio.submit(SMALL)
        done = await finished(studio, job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1
    assert len(fake_comfy.prompts) == 1 and done.prompt_id == fake_comfy.prompts[0]["prompt_id"]


# 502/504: a proxy gave up waiting; 200: a proxy's own page. ComfyUI, still validating, queues it 0.3 s later.
@pytest.mark.parametrize("status", [502, 504, 200])
async def test_a_proxy_answer_before_comfyui_queued_the_prompt_is_followed_not_resent(
        studio: Studio, fake_comfy: FakeComfy, status: int) -> None:
    fake_comfy.gateway_next = (status, 0.3)
    [job] = await studio.submit(SMALL)
    done = await finished(studio, job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and len(done.outputs) == 1
    assert fake_comfy.late_prompts == [done.prompt_id]  # the late one is the one followed...
    assert len(fake_comfy.prompts) == 1  # ...and nothing else was sent


async def test_a_prompt_that_shows_up_after_it_was_sent_again_is_stopped(
        studio: Studio, fake_comfy: FakeComfy, monkeypatch) -> None:
    from comfy.backends import comfyui

    monkeypatch.setattr(comfyui, "LATE_PROMPT_LOOKS", (0.0, 0.1))  # give up looking before it arrives
    studio.pool.refresh_interval = 0.1
    fake_comfy.step_time = 0.1
    fake_comfy.gateway_next = (504, 0.6)
    [job] = await studio.submit(GenerationParams(prompt="a lighthouse", steps=12, seed=4, width=64, height=64))
    done = await finished(studio, job.id)
    assert done.state is JobState.SUCCEEDED and done.attempts == 2 and len(done.outputs) == 1
    [late] = fake_comfy.late_prompts
    assert late != done.prompt_id
    # The late one was deleted from ComfyUI's queue (or interrupted) rather than run to its end.
    await wait_for(lambda: late in fake_comfy.deleted or any(
        (body or {}).get("prompt_id") == late for body in fake_comfy.interrupts))
    history = await studio.client.history(late)
    assert history is None or history.status != "success"


async def test_a_prompt_id_is_stored_on_the_job_before_it_is_submitted(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    [job] = await studio.submit(SMALL)
    await wait_for(lambda: fake_comfy.prompts)
    assert (await studio.job(job.id)).prompt_id == fake_comfy.prompts[0]["prompt_id"]
    fake_comfy.hold = False
    assert (await finished(studio, job.id)).state is JobState.SUCCEEDED


async def test_after_a_long_outage_the_run_is_found_again_not_resubmitted(studio: Studio, fake_comfy: FakeComfy) -> None:
    studio.client.reconnect_window = 0.2  # the outage outlasts the socket's reconnection window
    fake_comfy.step_time = 0.05
    [job] = await studio.submit(GenerationParams(prompt="x", steps=10, seed=5, width=64, height=64))
    await job_where(studio, job.id, lambda j: (j.step or 0) >= 1)
    await asyncio.to_thread(fake_comfy.outage, 1.5)  # ComfyUI finishes the prompt meanwhile
    done = await finished(studio, job.id)
    assert done.state is JobState.SUCCEEDED and len(done.outputs) == 1
    assert len(fake_comfy.prompts) == 1 and done.prompt_id == fake_comfy.prompts[0]["prompt_id"]
    assert done.attempts == 1  # waiting for the backend used none


async def test_a_proxy_that_refuses_the_websocket_fails_the_job_after_its_attempts(
        tmp_path, fake_comfy: FakeComfy) -> None:
    fake_comfy.refuse_websocket = True
    async with running(make_settings(tmp_path, fake_comfy.url, max_attempts=3)) as studio:
        [job] = await studio.submit(SMALL)
        done = await finished(studio, job.id)
    assert done.state is JobState.FAILED and done.attempts == 3
    assert "WebSocket" in done.error["message"] and "403" in done.error["message"]
    assert fake_comfy.prompts == []  # nothing was ever submitted without its event socket


async def test_a_running_job_left_without_its_task_is_taken_up_again(tmp_path, fake_comfy: FakeComfy) -> None:
    studio = quick(Studio(make_settings(tmp_path, fake_comfy.url)))
    try:
        [job] = await studio.submit(SMALL)
        # What a task that died in finish/fail/release leaves: RUNNING, leased to this very worker, no task.
        claimed = await studio.store.claim(studio.worker.id, lease_seconds=0.05)
        assert claimed is not None and claimed.id == job.id
        await asyncio.sleep(0.1)  # its lease has expired
        await studio.start()
        done = await finished(studio, job.id)
        assert done.state is JobState.SUCCEEDED and len(fake_comfy.prompts) == 1
    finally:
        await studio.aclose()


async def test_the_queue_lock_timeout_is_shorter_than_the_lease(tmp_path, fake_comfy: FakeComfy) -> None:
    async with Studio(make_settings(tmp_path, fake_comfy.url, lease_seconds=5.0)) as studio:
        assert 0 < studio.store.queue.lock_timeout < studio.settings.lease_seconds / 2 + 0.01


async def test_wait_honours_its_timeout_while_no_event_arrives(tmp_path, fake_comfy: FakeComfy) -> None:
    async with Studio(make_settings(tmp_path, fake_comfy.url)) as studio:  # no worker: nothing ever happens
        [job] = await studio.submit(SMALL)
        with pytest.raises(TimeoutError, match="did not finish in 0.3 s"):
            await asyncio.wait_for(studio.wait(job.id, timeout=0.3), 10)
        assert (await studio.job(job.id)).state is JobState.QUEUED


# -- RunPod: a /run answered 5xx may have been queued there ---------------------------------------------


@pytest.fixture
def runpod() -> FakeRunPod:
    with FakeRunPod(step_time=0.005) as fake:
        yield fake


def runpod_settings(tmp_path, fake: FakeRunPod, **overrides: object):
    from tests.test_runpod import runpod_settings as settings_for

    return settings_for(tmp_path, fake, **overrides)


# 200 and 302: a proxy's page or redirect in front of RunPod, the job already taken, no id we can read.
@pytest.mark.parametrize("status", [500, 502, 504, 200, 302])
async def test_a_run_answered_5xx_after_runpod_took_it_is_never_sent_twice(tmp_path, runpod: FakeRunPod,
                                                                           status: int) -> None:
    runpod.lose_run_reply_next = status
    async with running(runpod_settings(tmp_path, runpod)) as studio:
        [job] = await studio.submit(SMALL.with_seed(7))
        done = await finished(studio, job.id)
    assert len(runpod.runs) == 1  # one run at RunPod, paid once
    assert done.state is JobState.FAILED and done.attempts == 1
    assert done.error["code"] == "run_unconfirmed"
    assert f"HTTP {status}" in done.error["message"] and "not sent again" in done.error["message"]


# -- idempotency survives a 503 -------------------------------------------------------------------------


async def test_a_sync_generate_retried_with_its_key_after_a_503_reaches_a_job_that_can_succeed(
        api, fake_comfy: FakeComfy) -> None:
    from tests.api_support import SMALL as BODY, error_of

    headers = {"Idempotency-Key": "retry-me-0001"}
    fake_comfy.stop()
    down = await api.http.post("/api/v1/generate/", json=BODY, headers=headers)
    assert down.status_code == 503 and down.headers["retry-after"]
    error = error_of(down)
    assert error["code"] == "backend_unavailable" and "same Idempotency-Key" in error["message"]
    job_id = down.json()["error"]["job_id"]
    assert (await api.studio.job(job_id)).state is JobState.QUEUED  # kept for the retry, not cancelled
    fake_comfy.start()  # the same port
    await wait_for(lambda: api.studio.worker.backend_down is None)
    again = await api.http.post("/api/v1/generate/", json=BODY, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == job_id and len(fake_comfy.prompts) == 1


async def test_a_keyed_retry_while_comfyui_is_still_down_names_the_same_queued_job(api, fake_comfy: FakeComfy) -> None:
    from tests.api_support import SMALL as BODY, error_of

    headers = {"Idempotency-Key": "still-down-0001"}
    fake_comfy.stop()
    first = await api.http.post("/api/v1/generate/", json=BODY, headers=headers)
    await wait_for(lambda: api.studio.worker.backend_down is not None)
    again = await api.http.post("/api/v1/generate/", json=BODY, headers=headers)  # still down
    assert first.status_code == again.status_code == 503
    assert again.json()["error"]["job_id"] == first.json()["error"]["job_id"]  # not "nothing was queued"
    assert "stays queued" in error_of(again)["message"]
    fresh = await api.http.post("/api/v1/generate/", json=BODY, headers={"Idempotency-Key": "first-while-down"})
    assert fresh.status_code == 503 and fresh.json()["error"]["job_id"]  # a first keyed try waits too
    assert (await api.studio.job(fresh.json()["error"]["job_id"])).state is JobState.QUEUED


async def test_a_keyed_batch_with_a_bad_item_keeps_the_items_before_it_for_the_retry(api, fake_comfy: FakeComfy) -> None:
    from tests.api_support import SMALL as BODY, error_of

    headers = {"Idempotency-Key": "batch-0001"}
    bad = {**BODY, "loras": [{"name": "no-such-lora"}]}
    refused = await api.http.post("/api/v1/generate/batch", json=[BODY, bad], headers=headers)
    assert refused.status_code == 400 and "fix item 1" in error_of(refused)["message"]
    retried = await api.http.post("/api/v1/generate/batch", json=[BODY, {**BODY, "seed": 9}], headers=headers)
    assert retried.status_code == 200, retried.text  # item 0 is the job kept from the first try, not a 409
    assert len(fake_comfy.prompts) == 2


async def test_a_sync_generate_without_a_key_still_cancels_its_job_on_a_503(api, fake_comfy: FakeComfy) -> None:
    from tests.api_support import SMALL as BODY

    fake_comfy.stop()
    down = await api.http.post("/api/v1/generate/", json=BODY)
    assert down.status_code == 503
    assert (await api.studio.job(down.json()["error"]["job_id"])).state is JobState.CANCELLED  # nothing runs by surprise


# -- cancel is immediate ----------------------------------------------------------------------------------


async def test_a_prompt_waiting_in_comfyuis_queue_shows_so_and_is_cancelled_at_once(
        studio: Studio, fake_comfy: FakeComfy) -> None:
    from comfy.backends.comfyui import WAITING_ON_BACKEND

    studio.client.idle_check = 60.0  # a deleted prompt sends nothing: the cancel must not wait for that silence
    fake_comfy.step_time = 0.2  # the job ahead runs for 20 s unless stopped
    ahead, behind = await studio.submit(GenerationParams(prompt="slow", steps=100, seed=1, width=64, height=64),
                                        count=2)
    await wait_for(lambda: len(fake_comfy.prompts) == 2)
    await job_where(studio, ahead.id, lambda j: (j.step or 0) >= 1)
    await job_where(studio, behind.id, lambda j: j.note == WAITING_ON_BACKEND)
    assert (await studio.job(ahead.id)).note is None  # the one that runs is not "waiting"
    started = asyncio.get_running_loop().time()
    await studio.cancel(behind.id)
    done = await finished(studio, behind.id)
    took = asyncio.get_running_loop().time() - started
    print(f"\ncancel of a prompt pending on ComfyUI: cancelled after {took:.2f} s")
    assert done.state is JobState.CANCELLED
    assert fake_comfy.deleted == [fake_comfy.prompts[1]["prompt_id"]] == [done.prompt_id]
    assert (await studio.job(ahead.id)).state is JobState.RUNNING  # cancelled while the job ahead still runs
    await studio.cancel(ahead.id)
    assert (await finished(studio, ahead.id)).state is JobState.CANCELLED


# -- bounded hand-backs: waiting for a backend backs off ----------------------------------------------------


async def test_a_backend_that_fails_jobs_right_after_each_probe_is_waited_for_longer_each_time(
        fake_comfy: FakeComfy) -> None:
    from comfy.backends.client import ComfyClient
    from comfy.backends.comfyui import ComfyBackend
    from comfy.backends.pool import BackendState, Pool

    now = [1000.0]
    backend = ComfyBackend(ComfyClient(fake_comfy.url))
    pool = Pool([backend], probe_min=0.5, probe_max=8.0, clock=lambda: now[0])
    waits = []
    try:
        for _ in range(6):  # the probe passes (HTTP answers), then the next job fails at once again
            pool.mark_down(backend, "ComfyUI (or a proxy in front of it) refused the event WebSocket")
            waits.append(pool.next_check_in())
            now[0] += waits[-1]
            pool.tick(lambda: None)
            await wait_for(lambda: pool.state(backend) is BackendState.UP)
        assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
        now[0] += 60  # it stayed up a while: a new failure starts from the shortest wait again
        pool.mark_down(backend, "gone")
        assert pool.next_check_in() == 0.5
    finally:
        await pool.aclose()
        await backend.aclose()


async def test_a_job_cancelled_while_it_waits_out_an_outage_has_its_run_stopped_when_the_backend_is_back(
        studio: Studio, fake_comfy: FakeComfy) -> None:
    studio.client.reconnect_window = 0.2
    fake_comfy.step_time = 0.05  # 4 s of steps: still running when the network comes back
    [job] = await studio.submit(GenerationParams(prompt="x", steps=80, seed=6, width=64, height=64))
    await job_where(studio, job.id, lambda j: (j.step or 0) >= 1)
    prompt_id = (await studio.job(job.id)).prompt_id
    outage = asyncio.create_task(asyncio.to_thread(fake_comfy.outage, 1.5))
    await job_where(studio, job.id, lambda j: j.state is JobState.QUEUED)  # it waits, keeping its run's handle
    assert (await studio.job(job.id)).prompt_id == prompt_id
    assert (await studio.cancel(job.id)).state is JobState.CANCELLED
    await outage
    await wait_for(lambda: {"prompt_id": prompt_id} in fake_comfy.interrupts)  # stopped once it answers again
    assert len(fake_comfy.prompts) == 1


async def test_a_run_whose_answer_times_out_is_not_sent_again(runpod: FakeRunPod) -> None:
    import httpx
    from pydantic import SecretStr

    from comfy.backends.runpod_client import RunPodClient, RunUnconfirmed

    runpod.run_answer_delay = 1.0  # RunPod queued it; the answer comes after our read timeout
    api = RunPodClient(runpod.endpoint_id, SecretStr(runpod.api_key), base_url=runpod.url,
                       timeout=httpx.Timeout(0.2, connect=5.0))
    try:
        with pytest.raises(RunUnconfirmed, match="did not answer"):
            await api.run(b'{"input": {"workflow": {}}}')
    finally:
        await api.aclose()
    assert len(runpod.runs) == 1
