"""Loading the captured ComfyUI protocol fixtures (copied from a real ComfyUI 0.8.0 into tests/fixtures)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
COMFY = FIXTURES / "comfyui"


def transcript(name: str) -> list[dict[str, Any]]:
    """The records of ``ws/<name>.jsonl``, in the order the client saw them."""
    lines = (COMFY / "ws" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def received_frames(name: str) -> list[str | bytes]:
    """The frames the server sent in a transcript: text as str, binary as bytes."""
    frames: list[str | bytes] = []
    for record in transcript(name):
        if record.get("dir") != "recv":
            continue
        if record["kind"] == "text":
            frames.append(json.dumps(record["msg"]))
        else:
            frames.append(base64.b64decode(record["b64"]))
    return frames


def http(name: str) -> dict[str, Any]:
    """One ``http/<name>.json`` envelope: request and response."""
    return json.loads((COMFY / "http" / f"{name}.json").read_text(encoding="utf-8"))


def workflow(name: str) -> dict[str, Any]:
    return json.loads((COMFY / "workflows" / f"{name}.json").read_text(encoding="utf-8"))


def image(name: str) -> bytes:
    return (COMFY / "images" / name).read_bytes()


def object_info_raw() -> dict[str, Any]:
    return json.loads((COMFY / "object_info.json").read_bytes())
