"""The REST API's event streams (SSE and WebSocket) and its image and artifact routes."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import httpx_ws
import pytest

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
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy

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
    Path((await api.studio.job(job_id)).outputs[0]["path"]).unlink()
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
            local = Path((await api.studio.job(done["job_id"])).outputs[0]["path"])
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


