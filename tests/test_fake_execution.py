"""The fake ComfyUI against the captured protocol: every comparison is with a fixture file.

The fake is only useful if it is faithful, so these tests replay the requests the capture made and
compare what comes back, frame by frame, with what the real ComfyUI 0.8.0 sent (prompt ids,
timestamps and the socket id are normalised; nothing else is). Real sockets, httpx + httpx_ws.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketNetworkError, aconnect_ws
from wsproto.events import TextMessage

from tests.fakes.comfy_server import FIXTURES_DIR, FakeComfy, load_workflow

pytestmark = pytest.mark.timeout(30)

WS_MAX = 16 * 1024 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_COUNTER = re.compile(r"_\d{5}_\.png$")
_TEMP = re.compile(r"ComfyUI_temp_[a-z]{5}_")

Frame = dict[str, Any] | bytes


# --------------------------------------------------------------------------- fixture access


def envelope(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES_DIR / "http" / f"{name}.json").read_text(encoding="utf-8"))


def transcript(name: str) -> list[dict[str, Any]]:
    lines = (FIXTURES_DIR / "ws" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def captured_requests(name: str) -> list[dict[str, Any]]:
    """The POST /prompt bodies a transcript annotates, in order."""
    return [
        r["request_body"]
        for r in transcript(name)
        if r["dir"] == "http" and r["method"] == "POST" and r["path"] == "/prompt"
    ]


def captured_frames(name: str, *, counters: bool = False) -> list[Any]:
    """What the real server sent on that socket, normalised like ``shape``."""
    frames: list[Any] = []
    for record in transcript(name):
        if record["dir"] == "recv":
            raw = record["msg"] if record["kind"] == "text" else base64.b64decode(record["b64"])
            frames.append(shape(raw, counters=counters))
    return frames


def chunks_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES_DIR / "images" / f"{name}.chunks.json").read_text(encoding="utf-8"))


def texts_of(name: str) -> dict[str, str]:
    return {chunk["keyword"]: chunk["text"] for chunk in chunks_fixture(name)["text_chunks"]}


# --------------------------------------------------------------------------- normalisation


def norm(obj: Any, *, counters: bool = False) -> Any:
    """Blank what differs between runs: ids, timestamps, the sid, temp names (and file counters if asked)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key in ("timestamp", "create_time"):
                out[key] = 0
            elif key == "sid":
                out[key] = "<sid>"
            elif key == "current_outputs":  # a set on the server
                out[key] = sorted(value)
            else:
                out["<id>" if _UUID.match(key) else key] = norm(value, counters=counters)
        return out
    if isinstance(obj, list):
        return [norm(value, counters=counters) for value in obj]
    if isinstance(obj, str):
        if _UUID.match(obj):
            return "<id>"
        obj = _TEMP.sub("ComfyUI_temp_?????_", obj)
        return _COUNTER.sub("_#####_.png", obj) if counters else obj
    return obj


def shape(frame: Frame, *, counters: bool = False) -> Any:
    """A text frame normalised; a binary frame reduced to its header layout and JPEG magic."""
    if isinstance(frame, dict):
        return norm(frame, counters=counters)
    kind, second = struct.unpack(">II", frame[:8])
    if kind == 4:
        meta = json.loads(frame[8 : 8 + second])
        return ("binary", 4, norm(meta), frame[8 + second : 8 + second + 3] == b"\xff\xd8\xff")
    return ("binary", kind, second, frame[8:11] == b"\xff\xd8\xff")


def norm_history(body: dict[str, Any], *, counters: bool = False) -> dict[str, Any]:
    """History entries with the queue number blanked too (the capture's counter was further along)."""
    out = norm(body, counters=counters)
    for entry in out.values():
        entry["prompt"][0] = "<number>"
    return out


def png_chunks(data: bytes) -> tuple[list[str], dict[str, str]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    order, texts, pos = [], {}, 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8].decode()
        body = data[pos + 8 : pos + 8 + length]
        order.append(tag)
        if tag == "tEXt":
            key, _, text = body.partition(b"\0")
            texts[key.decode("latin-1")] = text.decode("latin-1")
        pos += 12 + length
    return order, texts


def png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def fake() -> Iterator[FakeComfy]:
    with FakeComfy() as server:
        yield server


@pytest.fixture
async def http(fake: FakeComfy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, timeout=10) as client:
        yield client


def connect(fake: FakeComfy, http: httpx.AsyncClient, client_id: str | None = None) -> Any:
    query = f"?clientId={client_id}" if client_id else ""
    return aconnect_ws(f"{fake.url}/ws{query}", http, max_message_size_bytes=WS_MAX)


async def recv(ws: AsyncWebSocketSession, timeout: float = 10) -> Frame:
    event = await ws.receive(timeout=timeout)
    return json.loads(event.data) if isinstance(event, TextMessage) else bytes(event.data)


async def recv_until(ws: AsyncWebSocketSession, done: Any, timeout: float = 10) -> list[Frame]:
    """Frames up to and including the first one for which ``done(frame)`` holds."""
    frames: list[Frame] = []
    while True:
        frames.append(await recv(ws, timeout))
        if done(frames[-1]):
            return frames


def is_type(kind: str, **data: Any) -> Any:
    return lambda f: isinstance(f, dict) and f["type"] == kind and all(f["data"].get(k) == v for k, v in data.items())


def end_of(prompt_id: str) -> Any:
    return is_type("executing", node=None, prompt_id=prompt_id)


async def submit(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await http.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


async def run(http: httpx.AsyncClient, fake: FakeComfy, body: dict[str, Any]) -> str:
    prompt_id = await submit(http, body)
    await fake.wait_idle_async()
    return prompt_id


async def upload_test_input(http: httpx.AsyncClient, data: bytes | None = None, **fields: str) -> httpx.Response:
    content = data if data is not None else (FIXTURES_DIR / "images" / "protocol-test-input.png").read_bytes()
    files = {"image": ("protocol-test-input.png", content, "image/png")}
    return await http.post("/upload/image", files=files, data={"type": "input", "subfolder": "", **fields})


def with_seed(seed: int, *, steps: int | None = None) -> dict[str, Any]:
    prompt = load_workflow("txt2img")
    prompt["3"]["inputs"]["seed"] = seed
    if steps is not None:
        prompt["3"]["inputs"]["steps"] = steps
    return prompt


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


# --------------------------------------------------------------------------- runs vs transcripts


async def test_txt2img_legacy_then_feature_flags_then_cached_rerun_replay_the_captures(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    hello = {"type": "feature_flags", "data": {"supports_preview_metadata": True, "supports_manager_v4_ui": True}}
    ids = []
    for name, send_hello in (
        ("txt2img_full_legacy_client", False),
        ("txt2img_feature_flags_client", True),
        ("txt2img_cached_rerun", True),
    ):
        body = captured_requests(name)[0]
        async with connect(fake, http, body["client_id"]) as ws:
            if send_hello:
                await ws.send_json(hello)
            frames = [await recv(ws)] + ([await recv(ws)] if send_hello else [])
            ids.append(await submit(http, body))
            frames += await recv_until(ws, end_of(ids[-1]))
        assert [shape(f) for f in frames] == captured_frames(name), name

    histories = ["history_by_id_txt2img", "history_by_id_txt2img_with_workflow", "history_by_id_cached"]
    for prompt_id, history in zip(ids, histories):
        response = await http.get(f"/history/{prompt_id}")
        assert norm_history(response.json()) == norm_history(envelope(history)["response"]["body"])
    assert sorted(fake.file_names()) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]  # the rerun wrote nothing


async def test_output_png_has_comfyuis_chunks_and_view_headers(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, captured_requests("txt2img_full_legacy_client")[0])
    await run(http, fake, captured_requests("txt2img_feature_flags_client")[0])
    captured = envelope("view_output_png")
    response = await http.get(captured["request"]["path"])
    for header in ("Content-Type", "Content-Disposition", "Accept-Ranges"):
        assert response.headers[header] == captured["response"]["headers"][header]
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', response.headers["etag"])
    assert response.headers["last-modified"].endswith(" GMT")
    assert int(response.headers["content-length"]) == len(response.content)
    for filename, fixture in (("ComfyUI_00001_.png", "txt2img_output.png"),
                              ("ComfyUI_00002_.png", "txt2img_output_with_workflow_chunk.png")):
        data = (await http.get("/view", params={"filename": filename, "subfolder": "", "type": "output"})).content
        order, texts = png_chunks(data)
        expected = chunks_fixture(fixture)
        assert order == expected["chunk_order"]
        assert texts == texts_of(fixture)
        assert png_size(data) == (64, 64)
    jpeg = await http.get(envelope("view_preview_param_jpeg")["request"]["path"])
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:3] == b"\xff\xd8\xff"


async def test_view_delay_slows_the_answer(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("no_weights")})
    fake.view_delay = 0.3
    started = time.monotonic()
    response = await http.get("/view", params={"filename": "noweights_00001_.png", "type": "output"})
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


async def test_interrupt_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})  # so that 4, 5, 6, 7 are cached, as captured
    fake.step_time = 0.2
    body = captured_requests("interrupt")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, is_type("progress", value=2))
        frames.append(await recv(ws))  # the step's preview
        assert (await http.post("/interrupt")).status_code == 200
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("interrupt")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_interrupted")["response"]["body"])
    assert fake.interrupts == [None]


async def test_execution_error_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})  # the checkpoint loader is cached, as captured
    body = captured_requests("execution_error")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("execution_error")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_execution_error")["response"]["body"])


async def test_fail_next_fails_vae_decode_once(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.fail_next = True
    async with connect(fake, http, "failer") as ws:
        await recv(ws)
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "failer"})
        frames = await recv_until(ws, end_of(prompt_id))
    kinds = [f["type"] for f in frames if isinstance(f, dict)]
    assert kinds[-4:] == ["executing", "execution_error", "status", "executing"] and "executed" not in kinds
    error = frames[-3]["data"]
    assert (error["node_id"], error["node_type"], error["executed"]) == ("8", "VAEDecode", ["4", "5", "7", "6", "3"])
    captured = envelope("history_by_id_execution_error")["response"]["body"].popitem()[1]
    assert error.keys() == captured["status"]["messages"][2][1].keys()
    status = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]
    assert (status["status_str"], status["completed"], fake.fail_next) == ("error", False, False)
    await run(http, fake, {"prompt": load_workflow("txt2img")})  # next one is fine (and not cached: 8 failed)
    assert fake.file_names() == ["ComfyUI_00001_.png"]


async def test_no_weights_run_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    body = captured_requests("no_weights")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("no_weights")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_no_weights")["response"]["body"])
    temp = history[prompt_id]["outputs"]["5"]["images"][0]
    view = await http.get("/view", params=temp)
    assert view.status_code == 200 and png_chunks(view.content)[0] == ["IHDR", "tEXt", "IDAT", "IEND"]
    saved = (await http.get("/view", params={"filename": "noweights_00001_.png", "type": "output"})).content
    assert png_chunks(saved)[1] == texts_of("no_weights_output.png")


async def test_img2img_then_observer_without_client_id_replay_the_captures(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    await upload_test_input(http, overwrite="true")
    body = captured_requests("img2img")[0]
    async with connect(fake, http, body["client_id"]) as ws:
        frames = [await recv(ws)]
        prompt_id = await submit(http, body)
        frames += await recv_until(ws, end_of(prompt_id))
    assert [shape(f) for f in frames] == captured_frames("img2img")
    history = (await http.get(f"/history/{prompt_id}")).json()
    assert norm_history(history) == norm_history(envelope("history_by_id_img2img")["response"]["body"])
    output = (await http.get("/view", params={"filename": "img2img_00001_.png", "type": "output"})).content
    texts = png_chunks(output)[1]
    assert texts == texts_of("img2img_output.png")  # LoadImage's injected is_changed hash included
    assert png_size(output) == (64, 64)  # the uploaded image's size

    observer = captured_frames("observer_of_prompt_without_client_id", counters=True)
    async with connect(fake, http, "observer") as ws:
        frames = [await recv(ws)]
        await submit(http, captured_requests("observer_of_prompt_without_client_id")[0])
        while len(frames) < len(observer):
            frames.append(await recv(ws))
        await fake.wait_idle_async()
        with pytest.raises(TimeoutError):  # and nothing else: no lifecycle event, no executing null
            await ws.receive(timeout=0.2)
    assert [shape(f, counters=True) for f in frames] == observer


async def test_two_prompts_back_to_back_replay_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("runtime_error")})  # leaves only node 4 cached, as captured
    fake.node_time = 0.05
    first, second = captured_requests("two_prompts_back_to_back")
    async with connect(fake, http, first["client_id"]) as ws:
        frames = [await recv(ws)]
        await submit(http, first)
        frames += await recv_until(ws, is_type("executing", node="7"))
        second_id = await submit(http, second)
        frames += await recv_until(ws, end_of(second_id))
    assert [shape(f, counters=True) for f in frames] == captured_frames("two_prompts_back_to_back", counters=True)


async def test_queue_delete_clear_and_targeted_interrupt_replay_the_capture(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})
    fake.step_time = 0.3
    bodies = captured_requests("queue_delete_clear_interrupt")
    async with connect(fake, http, bodies[0]["client_id"]) as ws:
        frames = [await recv(ws)]
        ids = [await submit(http, bodies[0])]
        frames += await recv_until(ws, is_type("executing", node="3"))
        ids += [await submit(http, body) for body in bodies[1:]]
        frames += await recv_until(ws, is_type("progress", value=1))
        frames.append(await recv(ws))
        queues = [(await http.get("/queue")).json()]
        await http.post("/queue", json={"delete": [ids[1]]})
        queues.append((await http.get("/queue")).json())
        await http.post("/queue", json={"clear": True})
        queues.append((await http.get("/queue")).json())
        await http.post("/interrupt", json={"prompt_id": ids[2]})  # not running: ignored
        await http.post("/interrupt", json={"prompt_id": ids[0]})
        frames += await recv_until(ws, end_of(ids[0]))
    assert [shape(f) for f in frames] == captured_frames("queue_delete_clear_interrupt")
    for queue, name in zip(queues, ["queue_before_delete", "queue_after_delete", "queue_after_clear"]):
        expected = norm(envelope(name)["response"]["body"])
        for items in (*expected.values(), *(queue_got := norm(queue)).values()):
            for item in items:
                item[0] = "<number>"
        assert queue_got == expected
    assert fake.deleted == [ids[1]]
    assert fake.interrupts == [{"prompt_id": ids[2]}, {"prompt_id": ids[0]}]
    deleted = envelope("history_by_id_deleted_from_queue")["response"]["body"]
    assert (await http.get(f"/history/{ids[1]}")).json() == deleted


async def test_reconnect_with_same_client_id_replays_the_capture(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    await run(http, fake, {"prompt": load_workflow("txt2img")})
    fake.step_time = 0.15
    body = captured_requests("reconnect_same_clientId_old_socket")[0]
    async with connect(fake, http, body["client_id"]) as old:
        old_frames = [await recv(old)]
        prompt_id = await submit(http, body)
        old_frames += await recv_until(old, is_type("progress", value=2))
        old_frames.append(await recv(old))
        async with connect(fake, http, body["client_id"]) as new:
            new_frames = await recv_until(new, end_of(prompt_id))
            with pytest.raises(TimeoutError):  # the old socket is open but silent
                await old.receive(timeout=0.2)
    assert [shape(f) for f in old_frames] == captured_frames("reconnect_same_clientId_old_socket")
    assert [shape(f, counters=True) for f in new_frames] == captured_frames(
        "reconnect_same_clientId_new_socket", counters=True
    )


async def test_closing_the_original_socket_after_a_takeover_orphans_the_new_one_as_comfyui_does(
    fake: FakeComfy, http: httpx.AsyncClient
) -> None:
    # server.py pops the sid when ANY socket with that id closes, so once the original socket goes
    # away the new one is not registered at all: neither its client's events nor status broadcasts.
    async with connect(fake, http, "twice") as original, connect(fake, http, "twice") as new:
        await recv(original)
        await recv(new)
        await original.close()
        while "twice" in fake.client_ids:  # nothing to await: the server handles the close on its own
            await asyncio.sleep(0.01)
        await run(http, fake, {"prompt": load_workflow("no_weights"), "client_id": "twice"})
        with pytest.raises(TimeoutError):
            await new.receive(timeout=0.2)
    async with connect(fake, http, "twice") as again:  # connecting again registers the id again
        assert (await recv(again))["data"]["sid"] == "twice"
        assert fake.client_ids == ["twice"]


async def test_a_late_feature_flags_hello_is_ignored(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    async with connect(fake, http, "late") as ws:
        await ws.send_json({"type": "hello"})
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        await recv(ws)
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "late"})
        frames = await recv_until(ws, end_of(prompt_id))
    assert "feature_flags" not in [f["type"] for f in frames if isinstance(f, dict)]
    assert {f[:8] for f in frames if isinstance(f, bytes)} == {b"\x00\x00\x00\x01\x00\x00\x00\x01"}


async def test_interrupting_a_prompt_without_client_id_is_broadcast(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.step_time = 0.2
    async with connect(fake, http, "watcher") as ws:
        await recv(ws)
        prompt_id = await submit(http, {"prompt": with_seed(9, steps=20)})
        await recv_until(ws, is_type("progress", value=1))
        await http.post("/interrupt", json={"prompt_id": prompt_id})
        frames = await recv_until(ws, is_type("status", status={"exec_info": {"queue_remaining": 0}}))
    assert [f["type"] for f in frames if isinstance(f, dict)][-2:] == ["execution_interrupted", "status"]
    assert frames[-2]["data"]["node_type"] == "KSampler"


async def test_previews_can_be_switched_off(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.previews = False
    async with connect(fake, http, "nopreview") as ws:
        await recv(ws)
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "nopreview"})
        frames = await recv_until(ws, end_of(prompt_id))
    assert not [f for f in frames if isinstance(f, bytes)]
    assert [f["data"]["value"] for f in frames if isinstance(f, dict) and f["type"] == "progress"] == [1, 2, 3]


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


# --------------------------------------------------------------------------- process-level faults


async def test_restart_forgets_queue_and_history_on_the_same_port(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    done = await run(http, fake, {"prompt": load_workflow("no_weights")})
    url = fake.url
    fake.hold = True
    await submit(http, {"prompt": with_seed(5)})
    async with connect(fake, http, "restart") as ws:
        await recv(ws)
        fake.restart()
        with pytest.raises((WebSocketNetworkError, WebSocketDisconnect)):
            await recv(ws)
    assert fake.url == url
    assert (await http.get("/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get(f"/history/{done}")).json() == {}
    fake.hold = False
    again = await http.post("/prompt", json={"prompt": load_workflow("no_weights")})
    assert again.json()["number"] == 0  # a new process counts from zero
    await fake.wait_idle_async()
    assert "noweights_00002_.png" in fake.file_names()  # output/ survived: the counter continues


async def test_restart_without_losing_the_queue_lets_the_run_finish(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.step_time = 0.1
    prompt_id = await submit(http, {"prompt": load_workflow("txt2img")})
    fake.restart(lose_queue=False)
    await fake.wait_idle_async()
    assert (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]["status_str"] == "success"


async def test_drop_sockets_after_cuts_sockets_but_the_run_completes(fake: FakeComfy, http: httpx.AsyncClient) -> None:
    fake.drop_sockets_after = 5
    received: list[Frame] = []
    async with connect(fake, http, "dropme") as ws:
        received.append(await recv(ws))
        prompt_id = await submit(http, {"prompt": load_workflow("txt2img"), "client_id": "dropme"})
        with pytest.raises((WebSocketNetworkError, WebSocketDisconnect)):
            while True:
                received.append(await recv(ws))
    assert len(received) == 1 + 5
    await fake.wait_idle_async()
    assert fake.drop_sockets_after is None
    assert (await http.get(f"/history/{prompt_id}")).json()[prompt_id]["status"]["status_str"] == "success"
    async with connect(fake, http, "dropme") as ws:  # and reconnecting works
        assert (await recv(ws))["data"]["sid"] == "dropme"


async def test_stop_refuses_connections_and_start_serves_the_same_url_again() -> None:
    fake = FakeComfy().start()
    url = fake.url
    fake.stop()
    fake.stop()
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/prompt")
        fake.start()
        try:
            assert (await client.get("/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
            assert fake.url == url
        finally:
            fake.stop()
