"""The REST API for real: uvicorn on a free loopback port, httpx against it, the fake ComfyUI behind it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx_ws
import pytest
import uvicorn
from PIL import Image

from comfy.api import create_api
from comfy.service import Studio
from comfy.settings import Settings
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import image, workflow

SMALL = {"prompt": "a lighthouse at dawn", "steps": 3, "seed": 42, "width": 64, "height": 64}
ALPHA, BETA = "alpha-key-0123456789", "beta-key-9876543210"


# -- harness ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in this event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn.run gets
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, ws="wsproto", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Api:
    url: str
    studio: Studio
    settings: Settings
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def running_api(settings: Settings, *, manage_studio: bool = False, keepalive: float = 15.0,
                      headers: dict[str, str] | None = None) -> AsyncIterator[Api]:
    studio = Studio(settings)
    studio.client.idle_check = 0.5
    studio.worker.poll_interval = 0.02
    if not manage_studio:
        await studio.start()
    try:
        app = create_api(studio, settings, manage_studio=manage_studio, keepalive=keepalive)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
            yield Api(url, studio, settings, http)
    finally:
        if not manage_studio:
            await studio.aclose()


@pytest.fixture
def make_api(tmp_path: Path, fake_comfy: FakeComfy):
    counter = iter(range(100))

    def make(*, manage_studio: bool = False, keepalive: float = 15.0, headers: dict[str, str] | None = None,
             **overrides: Any) -> contextlib.AbstractAsyncContextManager[Api]:
        settings = make_settings(tmp_path / f"api{next(counter)}", fake_comfy.url, **overrides)
        return running_api(settings, manage_studio=manage_studio, keepalive=keepalive, headers=headers)

    return make


@pytest.fixture
async def api(make_api) -> AsyncIterator[Api]:
    async with make_api() as running:
        yield running


async def sse(http: httpx.AsyncClient, path: str, *, timeout: float = 30, **params: Any) -> AsyncIterator[dict]:
    """The messages of an event stream (``{"event", "data", "comment"}``) until the server ends it."""
    async with asyncio.timeout(timeout), http.stream("GET", path, params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                yield {"comment": line[1:].strip()}
            elif line.startswith("event:"):
                event["event"] = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                event["data"] = json.loads(line.split(":", 1)[1])
            elif not line and "data" in event:
                yield event
                event = {}


async def events_of(http: httpx.AsyncClient, job_id: str, **params: Any) -> list[dict]:
    return [m["data"] for m in [m async for m in sse(http, f"/api/v1/jobs/{job_id}/events", **params)] if "data" in m]


async def submit(http: httpx.AsyncClient, body: dict | None = None, **headers: str) -> str:
    response = await http.post("/api/v1/jobs", json=body or SMALL, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def until(predicate: Any, timeout: float = 15.0) -> None:
    """Wait for a condition on the fake's own records (it has no events to wait on)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]


# -- health, models, metrics ------------------------------------------------------------------------


async def test_health_routes(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    ready = await api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    health = (await api.http.get("/health")).json()
    assert health["status"] == "ok" and health["worker"]["running"] is True
    assert health["backend"]["reachable"] and health["backend"]["gpu"] and health["backend"]["queue_remaining"] == 0
    assert health["backend"]["url"] == api.settings.comfyui_url
    assert set(health["queue"]) == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert health["storage"]["writable"] and health["storage"]["free_bytes"] > 0


async def test_readyz_is_503_when_comfyui_is_down(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.stop()
    ready = await api.http.get("/readyz")
    assert ready.status_code == 503 and error_of(ready)["code"] == "backend_unavailable"
    assert "does not answer" in error_of(ready)["message"]
    health = await api.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["backend"]["reachable"] is False
    assert (await api.http.get("/healthz")).status_code == 200  # liveness touches nothing


async def test_health_and_readyz_show_every_backend_of_a_pool(make_api, fake_comfy: FakeComfy) -> None:
    second = FakeComfy(step_time=0.005, node_time=0.001).start()
    try:
        async with make_api(comfyui_url=f"{fake_comfy.url},{second.url}", failover_seconds=1.0) as api:
            health = (await api.http.get("/health")).json()
            assert [b["url"] for b in health["backends"]] == [fake_comfy.url, second.url]
            assert all(b["state"] == "up" and b["kind"] == "comfyui" and b["gpu"] for b in health["backends"])
            assert health["backends"][0]["max_in_flight"] == api.settings.max_in_flight
            assert health["backend"] == health["backends"][0] and health["status"] == "ok"
            second.stop()
            health = (await api.http.get("/health")).json()
            assert health["status"] == "degraded" and [b["reachable"] for b in health["backends"]] == [True, False]
            ready = await api.http.get("/readyz")  # one backend still takes jobs: ready
            assert ready.status_code == 200 and ready.json()["backends_up"] == 1
            assert ready.json()["backends_total"] == 2 and ready.json()["backend"] == fake_comfy.url
            fake_comfy.stop()
            ready = await api.http.get("/readyz")
            assert ready.status_code == 503 and error_of(ready)["code"] == "backend_unavailable"
            assert fake_comfy.url in error_of(ready)["message"] and second.url in error_of(ready)["message"]
    finally:
        second.stop()


async def test_health_hides_backend_credentials(make_api, fake_comfy: FakeComfy) -> None:
    url = fake_comfy.url.replace("http://", "http://user:hunter2pw@") + "?token=tok3n"
    async with make_api(comfyui_url=url, comfyui_headers='{"Authorization": "Bearer backend-s3cret"}') as api:
        text = (await api.http.get("/health")).text + (await api.http.get("/readyz")).text
    assert "hunter2pw" not in text and "tok3n" not in text and "backend-s3cret" not in text
    assert f'"url":"{fake_comfy.url}"' in text


async def test_models(api: Api) -> None:
    models = (await api.http.get("/models")).json()
    assert models["checkpoints"] == ["random-sd15.safetensors"]
    assert "euler" in models["samplers"] and "normal" in models["schedulers"]
    assert (await api.http.get("/models", params={"refresh": "true"})).status_code == 200


async def test_metrics(api: Api, fake_comfy: FakeComfy) -> None:
    await events_of(api.http, await submit(api.http))
    fake_comfy.fail_next = True
    await events_of(api.http, await submit(api.http, {**SMALL, "seed": 7}))
    response = await api.http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'comfy_studio_jobs{state="succeeded"} 1.0' in text and 'comfy_studio_jobs{state="failed"} 1.0' in text
    assert "comfy_studio_job_execution_seconds_count 1.0" in text
    assert "comfy_studio_job_queue_wait_seconds_count 1.0" in text
    assert "comfy_studio_job_download_seconds_count 1.0" in text
    assert 'comfy_studio_backend_errors_total{code="execution_failed"} 1.0' in text
    assert "comfy_studio_prompts_in_flight 0.0" in text and "comfy_studio_worker_up 1.0" in text
    assert 'comfy_studio_http_requests_total{method="POST",route="/api/v1/jobs",status="202"} 2.0' in text


async def test_two_apps_have_their_own_metrics(make_api) -> None:
    async with make_api() as first, make_api() as second:
        await events_of(first.http, await submit(first.http))
        assert 'comfy_studio_jobs{state="succeeded"} 1.0' in (await first.http.get("/metrics")).text
        assert 'comfy_studio_jobs{state="succeeded"} 0.0' in (await second.http.get("/metrics")).text


async def test_the_app_can_start_and_stop_its_studio(make_api) -> None:
    async with make_api(manage_studio=True) as api:
        assert (await api.http.get("/health")).json()["worker"]["running"] is True
        response = await api.http.post("/api/v1/generate/", json=SMALL)
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
    assert api.studio._worker_task is None  # closed by the lifespan


# -- synchronous generation -------------------------------------------------------------------------


async def test_generate_waits_and_returns_the_images(api: Api) -> None:
    response = await api.http.post("/api/v1/generate/", json={**SMALL, "cfg_scale": 6.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded" and len(body["job_id"]) == 16
    [img] = body["images"]
    assert img["url"] == f"/api/v1/jobs/{body['job_id']}/images/0" and (img["width"], img["height"]) == (64, 64)
    meta = body["metadata"]
    assert meta["seed"] == 42 and meta["cfg_scale"] == 6.5 and meta["checkpoint"] == "random-sd15.safetensors"
    assert meta["generation_time"] > 0 and meta["execution_time"] > 0 and "queue_wait" in meta
    png = await api.http.get(img["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)
    again = await api.http.post("/api/v1/generate", json={**SMALL, "seed": 43})  # no trailing slash either
    assert again.status_code == 200 and again.json()["metadata"]["seed"] == 43


async def test_generate_answers_202_when_the_wait_is_too_long(make_api, fake_comfy: FakeComfy) -> None:
    async with make_api(sync_wait_seconds=0.3) as api:
        fake_comfy.hold = True
        response = await api.http.post("/api/v1/generate/", json=SMALL)
        assert response.status_code == 202, response.text
        body = response.json()
        assert response.headers["location"] == body["location"] == f"/api/v1/jobs/{body['job_id']}"
        assert body["status"] in ("queued", "running")
        fake_comfy.hold = False
        events = await events_of(api.http, body["job_id"])
        assert events[-1]["type"] == "succeeded"
        polled = (await api.http.get(body["location"])).json()
        assert polled["status"] == "succeeded" and polled["images"][0]["url"].endswith("/images/0")


async def test_generate_is_503_when_comfyui_is_down(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.stop()
    response = await api.http.post("/api/v1/generate/", json=SMALL)
    assert response.status_code == 503 and error_of(response)["code"] == "backend_unavailable"
    assert response.headers["retry-after"]
    jobs = (await api.http.get("/api/v1/jobs")).json()["jobs"]
    assert [j["status"] for j in jobs] == ["cancelled"]  # nothing left to run by surprise later
    again = await api.http.post("/api/v1/generate/", json=SMALL)
    assert again.status_code == 503
    assert (await api.http.get("/api/v1/jobs")).json()["total"] == 1  # refused before queueing


async def test_generate_reports_a_failed_job(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.fail_next = True
    response = await api.http.post("/api/v1/generate/", json=SMALL)
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "execution_failed" and error["job_id"] and "RuntimeError" in error["message"]


async def test_batch_results_in_order(api: Api, fake_comfy: FakeComfy) -> None:
    response = await api.http.post("/api/v1/generate/batch", json=[{**SMALL, "seed": 5}, {**SMALL, "seed": 6}])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["metadata"]["seed"] for r in results] == [5, 6]
    assert all(r["status"] == "succeeded" and len(r["images"]) == 1 for r in results)


async def test_batch_is_checked_before_any_job_exists(api: Api) -> None:
    response = await api.http.post("/api/v1/generate/batch", json=[SMALL, {**SMALL, "steps": 1000}])
    assert response.status_code == 400 and error_of(response)["field"] == "[1].steps"
    response = await api.http.post("/api/v1/generate/batch", json=[SMALL, {**SMALL, "sampler": "nope"}])
    assert response.status_code == 400 and error_of(response)["field"] == "[1].sampler"
    jobs = (await api.http.get("/api/v1/jobs")).json()["jobs"]
    assert all(j["status"] == "cancelled" for j in jobs)  # the first item was withdrawn
    response = await api.http.post("/api/v1/generate/batch", json=[{**SMALL, "width": 100}])
    assert response.status_code == 422 and error_of(response)["field"] == "[0].width"
    assert (await api.http.post("/api/v1/generate/batch", json=[])).status_code == 422


# -- jobs ---------------------------------------------------------------------------------------------


async def test_job_lifecycle_and_listing(api: Api) -> None:
    response = await api.http.post("/api/v1/jobs", json=SMALL)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status"] == "queued" and response.headers["location"] == accepted["location"]
    await events_of(api.http, accepted["job_id"])
    job = (await api.http.get(accepted["location"])).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["kind"] == "generate"
    assert job["queued_at"] <= job["started_at"] <= job["finished_at"] and job["queued_at"].endswith("Z")
    assert job["error"] is None and job["images"][0]["content_type"] == "image/png"
    assert job["params"]["seed"] == 42 and "cfg" not in job["params"]
    second = await submit(api.http, {**SMALL, "seed": 1})
    await events_of(api.http, second)
    listed = (await api.http.get("/api/v1/jobs")).json()
    assert [j["job_id"] for j in listed["jobs"]] == [second, accepted["job_id"]] and listed["total"] == 2
    page = (await api.http.get("/api/v1/jobs", params={"limit": 1})).json()
    assert [j["job_id"] for j in page["jobs"]] == [second] and page["next_cursor"] is not None
    rest = (await api.http.get("/api/v1/jobs", params={"limit": 1, "cursor": page["next_cursor"]})).json()
    assert [j["job_id"] for j in rest["jobs"]] == [accepted["job_id"]] and rest["next_cursor"] is None
    none = (await api.http.get("/api/v1/jobs", params={"state": "failed"})).json()
    assert none == {"jobs": [], "next_cursor": None, "total": 0}
    both = (await api.http.get("/api/v1/jobs", params=[("state", "failed"), ("state", "succeeded")])).json()
    assert both["total"] == 2


async def test_idempotency_key(api: Api) -> None:
    first = await api.http.post("/api/v1/jobs", json=SMALL, headers={"Idempotency-Key": "k1"})
    again = await api.http.post("/api/v1/jobs", json=SMALL, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202 and first.json()["job_id"] == again.json()["job_id"]
    other = await api.http.post("/api/v1/jobs", json={**SMALL, "seed": 7}, headers={"Idempotency-Key": "k1"})
    assert other.status_code == 409
    assert error_of(other)["code"] == "idempotency_conflict" and error_of(other)["job_id"] == first.json()["job_id"]
    random_seed = {**SMALL, "seed": -1}  # a random seed, retried: still the same request
    one = await api.http.post("/api/v1/jobs", json=random_seed, headers={"Idempotency-Key": "k2"})
    two = await api.http.post("/api/v1/jobs", json=random_seed, headers={"Idempotency-Key": "k2"})
    assert one.status_code == two.status_code == 202 and one.json()["job_id"] == two.json()["job_id"]
    assert (await api.http.get("/api/v1/jobs")).json()["total"] == 2


async def test_idempotency_keys_are_per_api_key(make_api) -> None:
    async with make_api(api_keys=f"{ALPHA},{BETA}") as api:
        alpha, beta = {"Authorization": f"Bearer {ALPHA}"}, {"Authorization": f"Bearer {BETA}"}
        a = await api.http.post("/api/v1/jobs", json=SMALL, headers={**alpha, "Idempotency-Key": "same"})
        b = await api.http.post("/api/v1/jobs", json={**SMALL, "seed": 9}, headers={**beta, "Idempotency-Key": "same"})
        assert a.status_code == b.status_code == 202 and a.json()["job_id"] != b.json()["job_id"]
        # Each key sees only its own jobs.
        assert (await api.http.get(a.json()["location"], headers=beta)).status_code == 404
        assert (await api.http.delete(a.json()["location"], headers=beta)).status_code == 404
        listed = (await api.http.get("/api/v1/jobs", headers=beta)).json()
        assert [j["job_id"] for j in listed["jobs"]] == [b.json()["job_id"]]
        stored = api.studio.job(a.json()["job_id"])
        assert stored.owner and stored.owner.startswith("key:") and ALPHA not in stored.owner


async def test_cancel_a_queued_job(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    ids = [await submit(api.http, {**SMALL, "seed": seed}) for seed in (1, 2, 3)]
    await until(lambda: len(fake_comfy.prompts) == 2)  # two on ComfyUI, the third in our queue
    queued = (await api.http.get(f"/api/v1/jobs/{ids[2]}")).json()
    assert queued["status"] == "queued" and queued["position"] == 0
    response = await api.http.delete(f"/api/v1/jobs/{ids[2]}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert (await api.http.delete(f"/api/v1/jobs/{ids[2]}")).status_code == 200  # again: no change
    # The second is pending on ComfyUI itself: cancelling it removes it there.
    assert (await api.http.delete(f"/api/v1/jobs/{ids[1]}")).status_code == 202
    assert (await events_of(api.http, ids[1]))[-1]["type"] == "cancelled"
    assert fake_comfy.deleted == [api.studio.job(ids[1]).prompt_id]
    fake_comfy.hold = False
    assert (await events_of(api.http, ids[0]))[-1]["type"] == "succeeded"
    assert {p["prompt"]["3"]["inputs"]["seed"] for p in fake_comfy.prompts} == {1, 2}
    finished = await api.http.delete(f"/api/v1/jobs/{ids[0]}")
    assert finished.status_code == 409 and error_of(finished)["code"] == "already_finished"


async def test_cancel_a_running_job_interrupts_comfyui(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.05
    job_id = await submit(api.http, {**SMALL, "steps": 60})
    async for message in sse(api.http, f"/api/v1/jobs/{job_id}/events", previews="none"):
        if message.get("data", {}).get("step"):
            break
    response = await api.http.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    events = await events_of(api.http, job_id)
    assert events[-1]["type"] == "cancelled" and events[-1]["status"] == "cancelled"
    assert fake_comfy.interrupts[-1] == {"prompt_id": api.studio.job(job_id).prompt_id}


async def test_workflow_job_with_values_inputs_and_images(api: Api, fake_comfy: FakeComfy) -> None:
    body = {"workflow": workflow("txt2img_api"), "values": {"prompt": "a fox", "seed": 9, "cfg_scale": 5.0},
            "inputs": {"3": {"steps": 2}}}
    response = await api.http.post("/api/v1/workflows/jobs", json=body)
    assert response.status_code == 202, response.text
    assert (await events_of(api.http, response.json()["job_id"]))[-1]["type"] == "succeeded"
    graph = fake_comfy.prompts[-1]["prompt"]
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["3"]["inputs"]["seed"] == 9
    assert graph["3"]["inputs"]["steps"] == 2 and graph["3"]["inputs"]["cfg"] == 5.0
    job = (await api.http.get(response.json()["location"])).json()
    assert job["kind"] == "workflow" and job["params"]["prompt"] == "a fox"

    png = base64.b64encode(image("protocol-test-input.png")).decode()
    body = {"workflow": workflow("img2img_api"), "images": {"1": png}}
    response = await api.http.post("/api/v1/workflows/jobs", json=body)
    assert response.status_code == 202, response.text
    assert (await events_of(api.http, response.json()["job_id"]))[-1]["type"] == "succeeded"
    assert fake_comfy.prompts[-1]["prompt"]["1"]["inputs"]["image"].startswith("studio_")


async def test_img2img_with_a_base64_init_image(api: Api, fake_comfy: FakeComfy) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(image("protocol-test-input.png")).decode()
    body = {"prompt": "paint it", "steps": 2, "seed": 3, "init_image": data_url, "denoise": 0.5}  # size: the image's
    response = await api.http.post("/api/v1/generate/", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["init_image"] is True  # never the server's file path
    sampler = fake_comfy.prompts[-1]["prompt"]
    assert any(n["class_type"] == "LoadImage" for n in sampler.values())


# -- events -------------------------------------------------------------------------------------------


async def test_event_stream_current_state_first_then_progress_to_the_end(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    blocker = await submit(api.http, {**SMALL, "seed": 1})
    second = await submit(api.http, {**SMALL, "seed": 2})
    third = await submit(api.http, {**SMALL, "seed": 3})
    await until(lambda: len(fake_comfy.prompts) == 2)
    messages: list[dict] = []
    async for message in sse(api.http, f"/api/v1/jobs/{third}/events"):
        messages.append(message)
        if len(messages) == 1:
            fake_comfy.hold = False
    data = [m["data"] for m in messages if "data" in m]
    assert data[0]["type"] == "queued" and data[0]["position"] == 0 and data[0]["job"]["status"] == "queued"
    kinds = [d["type"] for d in data]
    assert "started" in kinds and "progress" in kinds and kinds[-1] == "succeeded"
    preview = next(d for d in data if d["type"] == "preview")["preview"]
    assert preview["mime"] == "image/jpeg" and base64.b64decode(preview["data"])[:2] == b"\xff\xd8"
    assert any(d.get("step") == 3 and d.get("steps") == 3 for d in data)
    final = data[-1]
    assert final["images"][0]["url"] == f"/api/v1/jobs/{third}/images/0" and final["timings"]["execution_s"] > 0
    # A late subscriber gets the final state at once, and the stream ends.
    late = await events_of(api.http, third)
    assert [d["type"] for d in late] == ["succeeded"] and late[0]["job"]["images"]
    for job_id in (blocker, second):
        await events_of(api.http, job_id)


async def test_previews_as_urls_and_the_preview_route(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.05
    job_id = await submit(api.http, {**SMALL, "steps": 20})
    fetched = None
    async for message in sse(api.http, f"/api/v1/jobs/{job_id}/events", previews="url"):
        data = message.get("data", {})
        assert "preview" not in data
        if data.get("type") == "preview" and fetched is None:
            fetched = await api.http.get(data["preview_url"])
    assert fetched is not None and fetched.status_code == 200 and fetched.headers["content-type"] == "image/jpeg"
    gone = await api.http.get(f"/api/v1/jobs/{job_id}/preview")
    assert gone.status_code == 404 and error_of(gone)["code"] == "not_found"
    none = await events_of(api.http, await submit(api.http, {**SMALL, "seed": 5}), previews="none")
    assert "preview" not in [d["type"] for d in none]


async def test_event_stream_keep_alive(make_api, fake_comfy: FakeComfy) -> None:
    async with make_api(keepalive=0.05) as api:
        fake_comfy.hold = True
        job_id = await submit(api.http)
        comments = 0
        async for message in sse(api.http, f"/api/v1/jobs/{job_id}/events"):
            if message.get("comment") == "keep-alive":
                comments += 1
                if comments == 2:
                    fake_comfy.hold = False
        assert comments >= 2


async def test_websocket_sends_the_same_messages(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    job_id = await submit(api.http)
    ws_url = f"{api.url.replace('http', 'ws')}/ws/jobs/{job_id}"
    received = []
    async with httpx.AsyncClient() as client, httpx_ws.aconnect_ws(ws_url, client) as ws:
        first = json.loads(await ws.receive_text())
        assert first["type"] in ("queued", "started", "progress") and first["job"]["job_id"] == job_id
        fake_comfy.hold = False
        with pytest.raises(httpx_ws.WebSocketDisconnect) as closed:
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.receive_text(), 15)))
        assert closed.value.code == 1000
    assert received[-1]["type"] == "succeeded" and received[-1]["images"]
    async with httpx.AsyncClient() as client, httpx_ws.aconnect_ws(ws_url, client) as ws:  # late
        assert json.loads(await ws.receive_text())["type"] == "succeeded"
    with pytest.raises(httpx_ws.WebSocketUpgradeError) as refused:
        async with httpx.AsyncClient() as client, httpx_ws.aconnect_ws(f"{api.url}/ws/jobs/0123456789abcdef", client):
            pass
    assert refused.value.response.status_code == 404


# -- artifacts -----------------------------------------------------------------------------------------


async def test_artifacts_and_path_traversal(api: Api) -> None:
    outside = api.settings.data_dir / "secret.txt"
    outside.write_text("TOPSECRET")
    done = (await api.http.post("/api/v1/generate/", json=SMALL)).json()
    job_id = done["job_id"]
    by_name = await api.http.get(f"/api/v1/jobs/{job_id}/artifacts/image_0.png")
    assert by_name.status_code == 200 and by_name.headers["content-type"] == "image/png"
    attempts = [
        f"/api/v1/jobs/{job_id}/artifacts/..%2F..%2Fsecret.txt",
        f"/api/v1/jobs/{job_id}/artifacts/%2e%2e%2f%2e%2e%2fsecret.txt",
        f"/api/v1/jobs/{job_id}/artifacts/secret.txt",
        f"/api/v1/jobs/{job_id}/artifacts/%2Fetc%2Fpasswd",
        "/api/v1/jobs/..%2F..%2Fsecret.txt/images/0",
        "/api/v1/jobs/%2Fetc%2Fpasswd/images/0",
        "/api/v1/jobs/..%2Foutputs/images/0",
        "/api/v1/jobs/0123456789abcdef/images/0",
        "/api/v1/jobs/ZZZZ/images/0",
        f"/api/v1/jobs/{job_id}/images/99",
        f"/api/v1/jobs/{job_id}/images/-1",
        f"/api/v1/jobs/{job_id}/images/..%2F..%2Fsecret.txt",
    ]
    for path in attempts:
        response = await api.http.get(path)
        assert response.status_code in (400, 404, 422), (path, response.status_code)
        assert "TOPSECRET" not in response.text and error_of(response)["code"]
    assert error_of(await api.http.get("/api/v1/jobs/ZZZZ"))["code"] == "not_found"
    Path(api.studio.job(job_id).outputs[0]["path"]).unlink()
    missing = await api.http.get(f"/api/v1/jobs/{job_id}/images/0")
    assert missing.status_code == 404 and error_of(missing)["code"] == "artifact_missing"


async def test_images_only_in_s3_redirect_to_a_presigned_url(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    pytest.importorskip("moto")
    from tests.fakes.s3_server import REGION, MotoS3

    server = MotoS3().start()
    try:
        server.admin().create_bucket(Bucket="api-art")
        settings = make_settings(tmp_path / "s3", fake_comfy.url, s3_bucket="api-art", s3_endpoint_url=server.url,
                                 s3_region=REGION, s3_access_key_id="AKIAAPITEST000000001",
                                 s3_secret_access_key="api-s3-secret-never-shown", s3_keep_local=False)
        async with running_api(settings) as api:
            done = (await api.http.post("/api/v1/generate/", json=SMALL)).json()
            assert api.studio.uploader is not None
            await api.studio.uploader.wait_uploaded(done["job_id"], timeout=20)
            local = Path(api.studio.job(done["job_id"]).outputs[0]["path"])
            await until(lambda: not local.exists())
            moved = await api.http.get(done["images"][0]["url"])
            assert moved.status_code == 307 and moved.headers["location"].startswith(f"{server.url}/api-art/")
            assert "api-s3-secret-never-shown" not in moved.text + moved.headers["location"]
            assert (await api.http.get(moved.headers["location"])).content[:8] == b"\x89PNG\r\n\x1a\n"
            health = await api.http.get("/health")
            assert health.status_code == 200 and health.json()["objects"]["storage"] == "s3"
            assert "api-s3-secret-never-shown" not in health.text and "AKIAAPITEST000000001" not in health.text
    finally:
        server.stop()


# -- auth and limits -------------------------------------------------------------------------------------


async def test_api_keys(make_api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts = []
    async with make_api(api_keys=f"{ALPHA}, {BETA}") as api:
        for path in ("/api/v1/jobs", "/models", "/api/v1/jobs/0123456789abcdef"):
            missing = await api.http.get(path)
            assert missing.status_code == 401 and error_of(missing)["code"] == "unauthorized"
            assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = await api.http.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong-key-guess-42"})
        assert wrong.status_code == 401 and "not valid" in error_of(wrong)["message"]
        basic = await api.http.get("/api/v1/jobs", headers={"Authorization": f"Basic {ALPHA}"})
        assert basic.status_code == 401
        posted = await api.http.post("/api/v1/jobs", json=SMALL)
        assert posted.status_code == 401
        for path in ("/healthz", "/readyz", "/health", "/metrics", "/docs", "/openapi.json"):
            response = await api.http.get(path)
            assert response.status_code == 200, path  # open: probes and scrapers carry no key
            texts.append(response.text)
        auth = {"Authorization": f"Bearer {ALPHA}"}
        ok = await api.http.post("/api/v1/generate/", json=SMALL, headers=auth)
        assert ok.status_code == 200
        texts += [ok.text, (await api.http.get("/api/v1/jobs", headers=auth)).text, wrong.text, missing.text]
        assert (await api.http.get(ok.json()["images"][0]["url"], headers=auth)).status_code == 200
        assert (await api.http.get(ok.json()["images"][0]["url"])).status_code == 401
        ws_url = f"{api.url.replace('http', 'ws')}/ws/jobs/{ok.json()['job_id']}"
        with pytest.raises(httpx_ws.WebSocketUpgradeError) as refused:
            async with httpx.AsyncClient() as client, httpx_ws.aconnect_ws(ws_url, client):
                pass
        assert refused.value.response.status_code == 401
        async with httpx.AsyncClient(headers=auth) as client, httpx_ws.aconnect_ws(ws_url, client) as ws:
            assert json.loads(await ws.receive_text())["type"] == "succeeded"
    for secret in (ALPHA, BETA, "wrong-key-guess-42"):
        assert all(secret not in text for text in texts)
        assert secret not in caplog.text
    assert '"WebSocket /ws/jobs/' in caplog.text  # the server's log lines were captured


async def test_rate_limit(make_api) -> None:
    async with make_api(api_keys=f"{ALPHA},{BETA}", rate_limit_per_minute=3) as api:
        alpha, beta = {"Authorization": f"Bearer {ALPHA}"}, {"Authorization": f"Bearer {BETA}"}
        for _ in range(3):
            assert (await api.http.get("/api/v1/jobs", headers=alpha)).status_code == 200
        limited = await api.http.get("/api/v1/jobs", headers=alpha)
        assert limited.status_code == 429 and error_of(limited)["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 20
        assert (await api.http.get("/api/v1/jobs", headers=beta)).status_code == 200  # its own bucket
        for _ in range(5):
            assert (await api.http.get("/healthz")).status_code == 200  # probes are never limited
    async with make_api(rate_limit_per_minute=2) as api:  # open API: per client IP
        assert [(await api.http.get("/models")).status_code for _ in range(3)] == [200, 200, 429]
    async with make_api(rate_limit_per_minute=0) as api:  # off
        assert {(await api.http.get("/api/v1/jobs")).status_code for _ in range(10)} == {200}


async def test_oversized_bodies_are_refused(make_api) -> None:
    async with make_api(max_request_bytes=2048) as api:
        response = await api.http.post("/api/v1/jobs", json={**SMALL, "prompt": "x" * 5000})
        assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'

        streamed = await api.http.post("/api/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and error_of(streamed)["code"] == "payload_too_large"
        assert (await api.http.post("/api/v1/jobs", json=SMALL)).status_code == 202
        assert (await api.http.get("/api/v1/jobs")).json()["total"] == 1


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "field", "words"),
    [
        ({**SMALL, "steps": "abc"}, 422, "steps", "integer"),
        ({**SMALL, "steps": 2.5}, 422, "steps", "integer"),
        ({**SMALL, "surprise": 1}, 422, "surprise", "not permitted"),
        ({"steps": 3}, 422, "prompt", "required"),
        ({**SMALL, "width": 100}, 422, "width", "multiple of 8"),
        ({**SMALL, "cfg_scale": 1000}, 422, "cfg_scale", "less than or equal"),
        ({**SMALL, "steps": 1000}, 400, "steps", "between 1 and 150"),
        ({**SMALL, "width": 4096}, 400, "width", "between"),
        ({**SMALL, "sampler": "no_such_sampler"}, 400, "sampler", "no_such_sampler"),
        ({**SMALL, "checkpoint": "missing.safetensors"}, 400, "checkpoint", "not on the server"),
        ({**SMALL, "prompt": "   "}, 400, "prompt", "empty"),
        ({**SMALL, "init_image": "not base64!!"}, 400, "init_image", "base64"),
        ({**SMALL, "init_image": base64.b64encode(b"hello").decode()}, 400, "init_image", "not an image"),
    ],
)
async def test_bad_input_names_the_field(api: Api, body: dict, status: int, field: str, words: str) -> None:
    response = await api.http.post("/api/v1/jobs", json=body)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["field"] == field and words in error["message"], error
    assert (await api.http.get("/api/v1/jobs")).json()["total"] == 0


async def test_bad_requests_of_other_kinds(api: Api) -> None:
    broken = await api.http.post("/api/v1/jobs", content=b'{"prompt": ', headers={"Content-Type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in error_of(broken)["message"]
    graph = workflow("txt2img_api")
    graph["3"]["class_type"] = "NoSuchSampler"
    refused = await api.http.post("/api/v1/workflows/jobs", json={"workflow": graph})
    assert refused.status_code == 400 and "not installed" in error_of(refused)["message"]
    ui_format = await api.http.post("/api/v1/workflows/jobs", json={"workflow": {"nodes": [], "links": []}})
    assert ui_format.status_code == 400 and error_of(ui_format)["code"] == "invalid_request"
    unknown_value = await api.http.post("/api/v1/workflows/jobs",
                                        json={"workflow": workflow("txt2img_api"), "values": {"colour": "red"}})
    assert unknown_value.status_code == 400 and error_of(unknown_value)["field"] == "values.colour"
    no_node = await api.http.post("/api/v1/workflows/jobs",
                                  json={"workflow": workflow("txt2img_api"), "inputs": {"99": {"seed": 1}}})
    assert no_node.status_code == 400
    bad_limit = await api.http.get("/api/v1/jobs", params={"limit": 0})
    assert bad_limit.status_code == 422 and error_of(bad_limit)["field"] == "limit"
    bad_state = await api.http.get("/api/v1/jobs", params={"state": "sleeping"})
    assert bad_state.status_code == 422 and error_of(bad_state)["field"] == "state[0]"
    nowhere = await api.http.get("/api/v1/nothing/here")
    assert nowhere.status_code == 404 and error_of(nowhere)["code"] == "not_found"
    wrong_method = await api.http.put("/api/v1/jobs")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.headers["allow"]
    unknown_job = await api.http.get("/api/v1/jobs/0123456789abcdef")
    assert unknown_job.status_code == 404 and error_of(unknown_job)["code"] == "not_found"
    long_key = await api.http.post("/api/v1/jobs", json=SMALL, headers={"Idempotency-Key": "k" * 500})
    assert long_key.status_code == 422 and error_of(long_key)["field"] == "Idempotency-Key"


async def test_unexpected_errors_are_500_json_without_details(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(**_: Any) -> None:
        raise RuntimeError("internal detail that must stay in the log")

    api.studio.models = broken  # type: ignore[method-assign]
    response = await api.http.get("/models")
    assert response.status_code == 500 and error_of(response)["code"] == "internal_error"
    assert "internal detail" not in response.text and "Traceback" not in response.text
    assert "internal detail" in caplog.text


async def test_openapi_documents_the_routes(api: Api) -> None:
    spec = (await api.http.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in ("/healthz", "/readyz", "/health", "/models", "/metrics", "/api/v1/generate/", "/api/v1/generate/batch",
                 "/api/v1/jobs", "/api/v1/workflows/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events",
                 "/api/v1/jobs/{job_id}/images/{index}", "/api/v1/jobs/{job_id}/artifacts/{filename}"):
        assert path in paths, path
    assert set(paths["/api/v1/jobs"]["post"]["responses"]) >= {"202", "400", "401", "409", "413", "422", "429"}
    assert set(paths["/api/v1/generate/"]["post"]["responses"]) >= {"200", "202", "503", "504"}
    assert paths["/api/v1/jobs"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ErrorResponse")
    assert "ApiKey" in spec["components"]["securitySchemes"]
    assert "security" not in paths["/healthz"]["get"] and paths["/api/v1/jobs"]["get"]["security"]
    assert "/" not in paths  # the UI owns /
    docs = await api.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
