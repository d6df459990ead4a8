"""The REST API's gate: keys, rate limits, body limits, bad input with a sentence, the OpenAPI document."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

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
from tests.fixtures_util import image, workflow

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


#: Authorization headers FastAPI's HTTPBasic would answer 401 to even on an open API (or that we must not 500 on).
ODD_AUTHORIZATION = [b"Basic \xe9t\xe9", b"Basic " + base64.b64encode(b"no-colon"), b"Basic !!not base64!!",
                     b"Basic", b"Basic " + base64.b64encode(b"\xff\xfe:pw"), b"Bearer", b"Bearer \xe9\xe9",
                     b"Digest username=ann", b"\xe9", b"Basic " + base64.b64encode(b"ann:" + b"x" * 5000)]


async def test_an_open_api_ignores_authorization_a_protected_one_explains_malformed_ones(make_api) -> None:
    async with make_api() as api:  # nothing required: whatever a proxy or a client sends is not read
        for value in ODD_AUTHORIZATION:
            response = await api.http.get("/api/v1/jobs", headers={"Authorization": value})
            assert response.status_code == 200, (value, response.text)
    async with make_api(api_keys=ALPHA, auth_users="ann:pw1") as api:
        for value in ODD_AUTHORIZATION:
            response = await api.http.get("/api/v1/jobs", headers={"Authorization": value})
            assert response.status_code == 401, (value, response.text)
            error = error_of(response)
            assert error["code"] == "unauthorized" and error["message"].endswith("."), (value, error)
        assert (await api.http.get("/api/v1/jobs", headers={"Authorization": f"Bearer {ALPHA}"})).status_code == 200


async def test_base64_images_are_decoded_off_the_event_loop(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 25 MB body is a lot of base64: its decoding must not stall every other request."""
    decoded_on: list[int] = []
    real = base64.b64decode

    def noted(data: Any, *args: Any, **kwargs: Any) -> bytes:
        decoded_on.append(threading.get_ident())
        return real(data, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", noted)
    png = base64.b64encode(image("protocol-test-input.png")).decode()
    assert (await api.http.post("/api/v1/jobs", json={**SMALL, "init_image": png})).status_code == 202
    graph = {"workflow": workflow("img2img_api"), "images": {"1": png}}
    response = await api.http.post("/api/v1/workflows/jobs", json=graph)
    assert response.status_code == 202, response.text
    assert len(decoded_on) >= 2 and threading.get_ident() not in decoded_on


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
        ({**SMALL, "cfg": 5, "cfg_scale": 6}, 422, "cfg", "send one of them"),
        ({**SMALL, "cfg": "x"}, 422, "cfg_scale", "valid number"),
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

