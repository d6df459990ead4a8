"""The captured ComfyUI 0.8.0 data the fake serves, from ``tests/fixtures/comfyui/`` (see that folder's README).

Bodies, headers, WebSocket transcripts, previews and workflows are read from the files, never retyped.
Imports nothing from the rest of the package.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
from pathlib import Path
from typing import Any

#: The captured data; the fake reads everything it serves from here.
FIXTURES_DIR = Path(__file__).parent.parent.parent / "fixtures" / "comfyui"


@functools.lru_cache(maxsize=None)
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=None)
def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def load_workflow(name: str) -> dict[str, Any]:
    """A fresh copy of ``workflows/<name>_api.json`` (txt2img, img2img, no_weights, runtime_error)."""
    return copy.deepcopy(_read_json(FIXTURES_DIR / "workflows" / f"{name}_api.json"))


class _Fixtures:
    """Read-only access to the captured files; bodies are reused, never retyped."""

    def __init__(self, root: Path, object_info_path: Path | None) -> None:
        self.root = root
        self.object_info_path = object_info_path or root / "object_info.json"

    def envelope(self, name: str) -> dict[str, Any]:
        return _read_json(self.root / "http" / f"{name}.json")

    def body(self, name: str) -> Any:
        return copy.deepcopy(self.envelope(name)["response"]["body"])

    def header(self, name: str, header: str) -> str:
        return self.envelope(name)["response"]["headers"][header]

    @property
    def object_info_bytes(self) -> bytes:
        return _read_bytes(self.object_info_path)

    @property
    def object_info(self) -> dict[str, Any]:
        return _read_json(self.object_info_path)

    def transcript(self, name: str) -> list[dict[str, Any]]:
        return _read_transcript(self.root / "ws" / f"{name}.jsonl")

    @functools.cached_property
    def preview_jpegs(self) -> list[bytes]:
        """The JPEG payloads of the captured type-1 preview frames (8-byte header stripped)."""
        frames = self.transcript("txt2img_full_legacy_client")
        return [base64.b64decode(f["b64"])[8:] for f in frames if f.get("kind") == "binary"]

    @functools.cached_property
    def execution_error(self) -> dict[str, Any]:
        for frame in self.transcript("execution_error"):
            if frame.get("msg", {}).get("type") == "execution_error":
                return frame["msg"]["data"]
        raise LookupError("ws/execution_error.jsonl has no execution_error frame")

    @functools.cached_property
    def validation_traceback(self) -> list[str]:
        """The traceback ComfyUI attached to a failing inner validation (a KeyError on a missing node)."""
        node_errors = self.body("post_prompt_400_link_to_missing_node")["node_errors"]
        return next(iter(node_errors.values()))["errors"][0]["extra_info"]["traceback"]

    def rejection(self, name: str) -> dict[str, Any] | None:
        """The response envelope for ``reject_next = name`` (400 files first, then the other POST /prompt ones)."""
        for candidate in (f"post_prompt_400_{name}", f"post_prompt_{name}"):
            if (self.root / "http" / f"{candidate}.json").exists():
                return self.envelope(candidate)["response"]
        return None


@functools.lru_cache(maxsize=None)
def _read_transcript(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
