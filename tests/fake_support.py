"""What the tests of the fake ComfyUI share (test_fake_http.py, test_fake_execution.py); not collected itself.

Access to the fixture files, the normalisation that blanks what differs between runs (prompt ids,
timestamps, the socket id; nothing else), and httpx + httpx_ws helpers that submit prompts and read frames.
The ``fake`` and ``http`` pytest fixtures are defined in each test module: imported, they would be shadowed.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

import httpx
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from wsproto.events import TextMessage

from tests.fakes.comfyui import FIXTURES_DIR, FakeComfy, load_workflow

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
