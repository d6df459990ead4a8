"""The REST API behind the page's logins (AUTH_USERS as HTTP Basic): 401 without, each user their own jobs."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

import httpx
import httpx_ws
import pytest

from comfy.auth import hash_password
from tests.api_support import ALPHA, SMALL, error_of, submit
from tests.conftest import job_where
from ui.handlers import FORM_FIELDS, Handlers

USERS = f"ann:pw1,bob:{hash_password('pw2', iterations=1000)}"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ANN, BOB = basic("ann", "pw1"), basic("bob", "pw2")


async def test_logins_guard_every_rest_route_but_the_probes(make_api) -> None:
    async with make_api(auth_users=USERS) as api:
        for path in ("/api/v1/jobs", "/models", "/api/v1/jobs/0123456789abcdef",
                     "/api/v1/jobs/0123456789abcdef/events"):
            missing = await api.http.get(path)
            assert missing.status_code == 401 and error_of(missing)["code"] == "unauthorized", path
            assert missing.headers["www-authenticate"].startswith("Basic")
            assert "HTTP Basic" in error_of(missing)["message"]
        for headers in (basic("ann", "pw2"), basic("nobody", "pw1"), {"Authorization": "Basic not-base64!"},
                        {"Authorization": "Bearer pw1"}, basic("ann", "x" * 5000)):
            wrong = await api.http.get("/api/v1/jobs", headers=headers)
            assert wrong.status_code == 401, headers
        assert (await api.http.post("/api/v1/jobs", json=SMALL)).status_code == 401
        for path in ("/healthz", "/readyz"):
            assert (await api.http.get(path)).status_code == 200, path
        assert (await api.http.get("/models", headers=BOB)).status_code == 200  # a hashed password works too
        ws_url = f"{api.url.replace('http', 'ws')}/ws/jobs/0123456789abcdef"
        with pytest.raises(httpx_ws.WebSocketUpgradeError) as refused:
            async with httpx.AsyncClient() as client, httpx_ws.aconnect_ws(ws_url, client):
                pass
        assert refused.value.response.status_code == 401


async def test_each_login_sees_only_its_own_jobs(make_api) -> None:
    async with make_api(auth_users=USERS) as api:
        job_id = await submit(api.http, SMALL, **ANN)
        done = await api.http.get(f"/api/v1/jobs/{job_id}/events", headers=ANN)  # follow it to the end
        assert done.status_code == 200 and "event: succeeded" in done.text
        assert (await api.http.get(f"/api/v1/jobs/{job_id}", headers=ANN)).json()["status"] == "succeeded"
        assert [j["job_id"] for j in (await api.http.get("/api/v1/jobs", headers=ANN)).json()["jobs"]] == [job_id]
        assert (await api.http.get("/api/v1/jobs", headers=BOB)).json()["total"] == 0
        for method, path in [("GET", f"/api/v1/jobs/{job_id}"), ("DELETE", f"/api/v1/jobs/{job_id}"),
                             ("GET", f"/api/v1/jobs/{job_id}/events"), ("GET", f"/api/v1/jobs/{job_id}/images/0"),
                             ("GET", f"/api/v1/jobs/{job_id}/preview")]:
            other = await api.http.request(method, path, headers=BOB)
            assert other.status_code == 404 and error_of(other)["code"] == "not_found", path
        assert (await api.http.get(f"/api/v1/jobs/{job_id}/images/0", headers=ANN)).status_code == 200
        ws_url = f"{api.url.replace('http', 'ws')}/ws/jobs/{job_id}"
        with pytest.raises(httpx_ws.WebSocketUpgradeError) as refused:
            async with httpx.AsyncClient(headers=BOB) as client, httpx_ws.aconnect_ws(ws_url, client):
                pass
        assert refused.value.response.status_code == 404
        async with httpx.AsyncClient(headers=ANN) as client, httpx_ws.aconnect_ws(ws_url, client) as ws:
            assert json.loads(await ws.receive_text())["type"] == "succeeded"


async def test_keys_keep_working_beside_logins(make_api) -> None:
    async with make_api(auth_users=USERS, api_keys=ALPHA) as api:
        key = {"Authorization": f"Bearer {ALPHA}"}
        by_key = await submit(api.http, SMALL, **key)
        by_ann = await submit(api.http, SMALL, **ANN)
        assert (await api.http.get("/api/v1/jobs")).headers.get("www-authenticate", "").startswith("Bearer")
        assert (await api.http.get(f"/api/v1/jobs/{by_key}", headers=key)).status_code == 200
        assert (await api.http.get(f"/api/v1/jobs/{by_ann}", headers=key)).status_code == 404
        assert (await api.http.get(f"/api/v1/jobs/{by_key}", headers=ANN)).status_code == 404
        wrong = await api.http.get("/api/v1/jobs", headers={"Authorization": "Bearer not-a-key"})
        assert wrong.status_code == 401 and "not valid" in error_of(wrong)["message"]


async def test_a_login_sees_on_the_api_the_jobs_it_made_on_the_page(make_api) -> None:
    async with make_api(auth_users=USERS) as api:
        page = Handlers(api.studio, auth_on=True)
        form = {**SMALL, "negative_prompt": "", "checkpoint": None, "sampler": "euler", "scheduler": "normal",
                "cfg": 7.0, "batch_size": 1, "batch_count": 1, "denoise": 0.6}
        watched, _seed = await page.generate("txt2img", None, *[form[name] for name in FORM_FIELDS],
                                             request=SimpleNamespace(username="ann", session_hash="s1"))
        assert (await api.http.get(f"/api/v1/jobs/{watched[0]}", headers=ANN)).status_code == 200
        assert (await api.http.get(f"/api/v1/jobs/{watched[0]}", headers=BOB)).status_code == 404
        rest_job = await submit(api.http, SMALL, **ANN)
        assert set((await page.history("all", None, SimpleNamespace(username="ann")))[3]) == {watched[0], rest_job}


async def test_health_and_metrics_carry_no_prompts_and_no_user_data(make_api) -> None:
    async with make_api(auth_users=USERS) as api:
        secret_prompt = "a portrait of ann's secret project zebra-quartz"
        job_id = await submit(api.http, {**SMALL, "prompt": secret_prompt}, **ANN)
        await job_where(api.studio, job_id, lambda job: job.state.is_final)
        for path in ("/health", "/metrics"):
            response = await api.http.get(path)
            assert response.status_code == 200, path
            for private in ("zebra-quartz", "ann", job_id, "pw1"):
                assert private not in response.text, (path, private)
