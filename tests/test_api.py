"""The REST API for real: health, models and metrics, generation, jobs (uvicorn on loopback, the fake ComfyUI behind it)."""

from __future__ import annotations

import base64
import io

from PIL import Image

from comfy.jobs.records import JobState
from tests.api_support import (  # noqa: F401
    ALPHA,
    BETA,
    SMALL,
    Api,
    error_of,
    events_of,
    running_api,
    serve,
    sse,
    submit,
    until,
)
from tests.conftest import job_where
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import image, workflow
from tests.toolbox_support import inputs_of

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


async def test_batch_is_checked_before_any_job_exists(api: Api, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True  # the worker may take the first item before the second is refused: it waits there
    response = await api.http.post("/api/v1/generate/batch", json=[SMALL, {**SMALL, "steps": 1000}])
    assert response.status_code == 400 and error_of(response)["field"] == "[1].steps"
    response = await api.http.post("/api/v1/generate/batch", json=[SMALL, {**SMALL, "sampler": "nope"}])
    assert response.status_code == 400 and error_of(response)["field"] == "[1].sampler"
    jobs = (await api.http.get("/api/v1/jobs")).json()["jobs"]
    for listed in jobs:  # the first item was withdrawn (a running one is stopped on ComfyUI)
        assert (await job_where(api.studio, listed["job_id"], lambda j: j.state.is_final)).state is JobState.CANCELLED
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
        stored = await api.studio.job(a.json()["job_id"])
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
    assert fake_comfy.deleted == [(await api.studio.job(ids[1])).prompt_id]
    fake_comfy.hold = False
    assert (await events_of(api.http, ids[0]))[-1]["type"] == "succeeded"
    assert {inputs_of(p["prompt"], "KSampler")["seed"] for p in fake_comfy.prompts} == {1, 2}
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
    assert fake_comfy.interrupts[-1] == {"prompt_id": (await api.studio.job(job_id)).prompt_id}


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


