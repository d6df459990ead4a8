"""The fake ComfyUI's HTTP side against the captured protocol: every comparison is with a fixture file.

Static routes, POST /prompt answers (400 and 500 bodies as captured), queue, history and files.
Runs replayed frame by frame, and process-level faults, are in test_fake_execution.py.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from httpx_ws import aconnect_ws

from tests.fake_support import (
    WS_MAX,
    captured_frames,
    connect,
    envelope,
    png_size,
    recv,
    run,
    shape,
    submit,
    upload_test_input,
    with_seed,
)
from tests.fakes.comfyui import FIXTURES_DIR, FakeComfy, load_workflow

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def fake() -> Iterator[FakeComfy]:
    with FakeComfy() as server:
        yield server


@pytest.fixture
async def http(fake: FakeComfy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as client:
        yield client


# --------------------------------------------------------------------------- static routes

STATIC = [
    "system_stats", "features", "embeddings", "extensions", "models", "models_checkpoints", "models_loras_empty",
    "object_info_KSampler", "object_info_unknown_node", "prompt_get_idle", "queue_idle", "history_empty",
    "history_unknown_id",
]


@pytest.mark.parametrize("name", STATIC)
async def test_static_get_matches_fixture_byte_for_byte(http: httpx.AsyncClient, name: str) -> None:
    captured = envelope(name)
    response = await http.get(captured["request"]["path"])
    headers = captured["response"]["headers"]
    assert response.status_code == captured["response"]["status"]
    assert response.json() == captured["response"]["body"]
    assert response.headers["content-type"] == headers["Content-Type"]
    assert response.headers["content-length"] == headers["Content-Length"]  # same json.dumps formatting
    assert response.headers["content-security-policy"] == headers["Content-Security-Policy"]
    assert response.headers["server"] == headers["Server"]


async def test_object_info_is_served_byte_exact(http: httpx.AsyncClient) -> None:
    response = await http.get("/object_info")
    assert response.content == (FIXTURES_DIR / "object_info.json").read_bytes()
    recorded = envelope("object_info_envelope")["response"]["headers"]["Content-Length"]
    assert response.headers["content-length"] == recorded


@pytest.mark.parametrize("name", ["models_unknown_folder", "view_missing_file"])
async def test_missing_things_are_404_with_empty_body(http: httpx.AsyncClient, name: str) -> None:
    response = await http.get(envelope(name)["request"]["path"])
    assert (response.status_code, response.content) == (404, b"")


async def test_every_route_also_answers_under_api_prefix(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    captured = envelope("api_prefix_system_stats")
    response = await http.get(captured["request"]["path"])
    assert response.json().keys() == captured["response"]["body"].keys()
    assert (await http.get("/api/object_info/KSampler")).json() == envelope("object_info_KSampler")["response"]["body"]
    prompt_id = await submit(http, {"prompt": load_workflow("no_weights")})
    await fake.wait_idle_async()
    assert prompt_id in (await http.get(f"/api/history/{prompt_id}")).json()
    async with aconnect_ws(f"{fake.url}/api/ws?clientId=api", http, max_message_size_bytes=WS_MAX) as ws:
        assert (await recv(ws))["data"]["sid"] == "api"


async def test_connect_without_client_id_gets_a_uuid4_hex_sid(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    async with connect(fake, http) as ws:
        frame = await recv(ws)
    assert [shape(frame)] == captured_frames("connect_without_clientId")
    assert re.fullmatch(r"[0-9a-f]{32}", frame["data"]["sid"])


# --------------------------------------------------------------------------- POST /prompt answers

REJECTIONS = sorted(p.stem for p in (FIXTURES_DIR / "http").glob("post_prompt_400_*.json")) + [
    "post_prompt_node_without_class_type"
]


def canonical(body: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI iterates sets while validating, so the order of errors within a node is arbitrary."""
    out = json.loads(json.dumps(body))
    for node in out["node_errors"].values():
        node["errors"].sort(key=lambda e: (e["type"], e["details"]))
    return out


@pytest.mark.parametrize("name", REJECTIONS)
async def test_validation_400_body_equals_the_captured_one(http: httpx.AsyncClient, name: str) -> None:
    captured = envelope(name)
    response = await http.post("/prompt", json=captured["request"]["body"])
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert canonical(response.json()) == canonical(captured["response"]["body"])
    recorded = captured["response"]["headers"]["Content-Length"]
    if len(json.dumps(captured["response"]["body"])) == int(recorded):  # not when the capture redacted paths
        assert response.headers["content-length"] == recorded


@pytest.mark.parametrize("name", ["post_prompt_malformed_json", "post_prompt_prompt_is_a_list"])
async def test_malformed_bodies_get_aiohttps_text_500(http: httpx.AsyncClient, name: str) -> None:
    captured = envelope(name)
    body = captured["request"]["body"]
    content = body if isinstance(body, str) else json.dumps(body)
    response = await http.post("/prompt", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 500
    assert response.text == captured["response"]["body"]
    assert response.headers["content-type"] == captured["response"]["headers"]["Content-Type"]
    assert response.headers["connection"] == "close"


async def test_number_counts_every_post_and_client_prompt_id_is_kept(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.hold = True
    first = {"prompt": load_workflow("txt2img"), "client_id": "c1"}
    chosen = envelope("post_prompt_200_client_chosen_prompt_id")["request"]["body"]
    one = await http.post("/prompt", json=first)
    rejected = await http.post("/prompt", json={"client_id": "x"})
    two = await http.post("/prompt", json=chosen)
    assert rejected.status_code == 400
    assert one.json().keys() == envelope("post_prompt_200")["response"]["body"].keys()
    assert (one.json()["number"], two.json()["number"]) == (0, 2)
    assert two.json() == {"prompt_id": chosen["prompt_id"], "number": 2, "node_errors": {}}
    assert fake.prompts == [first, chosen]
    assert (await http.get("/prompt")).json() == {"exec_info": {"queue_remaining": 2}}
    fake.hold = False
    await fake.wait_idle_async()


async def test_reject_next_answers_once_with_the_fixture_body(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.reject_next = "unknown_ckpt_name"
    body = {"prompt": load_workflow("txt2img")}
    rejected = await http.post("/prompt", json=body)
    captured = envelope("post_prompt_400_unknown_ckpt_name")["response"]["body"]
    assert (rejected.status_code, rejected.json()) == (400, captured)
    assert fake.reject_next is None and fake.prompts == []
    accepted = await http.post("/prompt", json=body)
    assert (accepted.status_code, accepted.json()["number"]) == (200, 1)
    await fake.wait_idle_async()


async def test_load_image_accepts_uploads_and_rejects_unknown_files(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    prompt = load_workflow("img2img")
    before = await http.post("/prompt", json={"prompt": prompt})
    assert before.status_code == 400
    assert before.json()["node_errors"]["1"]["errors"] == [
        {"type": "custom_validation_failed", "message": "Custom validation failed for node",
         "details": "image - Invalid image file: protocol-test-input.png", "extra_info": {"input_name": "image"}}
    ]
    await upload_test_input(http, overwrite="true")
    assert (await http.post("/prompt", json={"prompt": prompt})).status_code == 200
    await fake.wait_idle_async()


# --------------------------------------------------------------------------- queue, history, files


async def test_hold_front_and_history_order(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.hold = True
    ids = [await submit(http, {"prompt": with_seed(seed)}) for seed in (1, 2)]
    ids.append(await submit(http, {"prompt": with_seed(3), "front": True}))
    queue = (await http.get("/queue")).json()
    assert queue["queue_running"] == [] and [item[1] for item in queue["queue_pending"]][0] == ids[2]
    assert all(len(item) == 5 for item in queue["queue_pending"]) and queue["queue_pending"][0][0] == -2
    with pytest.raises(TimeoutError):
        fake.wait_idle(timeout=0.05)
    fake.hold = False
    await fake.wait_idle_async()
    history = (await http.get("/history")).json()
    assert list(history) == [ids[2], ids[0], ids[1]]
    assert list((await http.get("/history", params={"max_items": 2})).json()) == [ids[0], ids[1]]
    await http.post("/history", json={"delete": [ids[0]]})
    assert list((await http.get("/history")).json()) == [ids[2], ids[1]]
    assert (await http.post("/history", json={"clear": True})).content == b""
    assert (await http.get("/history")).json() == {}


async def test_batch_and_size_follow_the_graph_and_stay_cheap(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    prompt = load_workflow("txt2img")
    prompt["5"]["inputs"].update(width=512, height=512, batch_size=4)
    prompt["9"]["inputs"]["filename_prefix"] = "big/batch"
    started = time.monotonic()
    prompt_id = await run(http, fake, {"prompt": prompt})
    assert time.monotonic() - started < 2
    images = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["outputs"]["9"]["images"]
    assert images == [{"filename": f"batch_{n:05}_.png", "subfolder": "big", "type": "output"} for n in range(1, 5)]
    files = [(await http.get("/view", params=image)).content for image in images]
    assert {png_size(data) for data in files} == {(512, 512)}
    assert len(set(files)) == 4  # batch items are distinct files, not copies


async def test_upload_naming_matches_the_captures(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    first = await upload_test_input(http, overwrite="true")
    same = await upload_test_input(http)
    different = await upload_test_input(http, data=b"\x89PNG different bytes")
    for response, name in ((first, "upload_image"), (same, "upload_image_same_name_same_bytes"),
                           (different, "upload_image_same_name_different_bytes")):
        assert (response.status_code, response.json()) == (200, envelope(name)["response"]["body"])
    assert sorted(fake.file_names("input")) == ["example.png", "protocol-test-input (1).png", "protocol-test-input.png"]
    served = await http.get("/view", params={"filename": "protocol-test-input.png", "type": "input"})
    assert served.content == (FIXTURES_DIR / "images" / "protocol-test-input.png").read_bytes()
