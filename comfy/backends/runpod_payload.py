"""The body of a RunPod ``/run`` request: the graph and its input images, kept under RunPod's 10 MB limit.

A large init image is re-encoded (JPEG when it has no alpha) or scaled down, never below ``MIN_SIDE``;
a graph too large by itself is refused with :class:`~comfy.errors.WorkflowError`, which says so.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from comfy.errors import ProtocolError, WorkflowError

__all__ = ["RUN_LIMIT_BYTES", "build_run_body"]


#: /run takes at most 10 MB; measured in decimal megabytes to stay clear of either reading.
RUN_LIMIT_BYTES = 10_000_000

#: Images are never scaled below this many pixels on their longer side to fit the limit.
MIN_SIDE = 256


def build_run_body(graph: dict[str, Any], images: dict[str, bytes], policy: dict[str, Any], *,
                   limit: int = RUN_LIMIT_BYTES) -> tuple[bytes, dict[str, Any], list[str]]:
    """The ``/run`` body as JSON bytes, the graph as sent, and notes on what was changed to fit ``limit``.

    Images too big for the limit are re-encoded as JPEG (when they have no transparency), then scaled
    down, keeping their aspect ratio; raises :class:`WorkflowError` if even that does not fit.
    """
    body = _encode(graph, images, policy)
    if len(body) <= limit:
        return body, graph, []
    from PIL import Image

    originals = {name: Image.open(io.BytesIO(data)) for name, data in images.items()}
    scale, notes = 1.0, []
    while True:
        sent: dict[str, bytes] = {}
        renames: dict[str, str] = {}
        sizes = []
        for name, img in originals.items():
            data, new_name, size = _shrink(img, name, scale)
            sent[new_name] = data
            renames[name] = new_name
            sizes.append(size)
        fitted = _rename(graph, renames)
        body = _encode(fitted, sent, policy)
        if len(body) <= limit:
            break
        if not originals:  # the workflow alone is too big: nothing to shrink
            raise WorkflowError(
                f"The workflow is too large for RunPod Serverless: {len(body) / 1e6:.1f} MB, and /run accepts at "
                f"most {limit / 1e6:g} MB. Remove large inline values (embedded images or text) from it.",
                field="workflow")
        # Never below MIN_SIDE on the longer side (an image already smaller is only re-encoded).
        floor = min(1.0, MIN_SIDE / max(max(img.size) for img in originals.values()))
        smaller = max(scale * min(0.9, max(0.5, (limit / len(body)) ** 0.5 * 0.95)), floor)
        if smaller >= scale:
            raise WorkflowError(
                f"The input image is too large for RunPod Serverless: the request would be {len(body) / 1e6:.1f} MB "
                f"even scaled down to {sizes[0][0]}×{sizes[0][1]}, and /run accepts at most {limit / 1e6:g} MB. "
                "Use a smaller image.", field="image")
        scale = smaller
    for name, new_name in renames.items():
        size = originals[name].size
        new_size = Image.open(io.BytesIO(sent[new_name])).size
        how = "as a JPEG" if new_name.endswith(".jpg") else "as a PNG"
        scaled = f", scaled from {size[0]}×{size[1]} to {new_size[0]}×{new_size[1]}," if new_size != size else ""
        notes.append(f"{name} was sent {how}{scaled} to fit RunPod's {limit / 1e6:g} MB request limit.")
    return body, fitted, notes


def _encode(graph: dict[str, Any], images: dict[str, bytes], policy: dict[str, Any]) -> bytes:
    payload: dict[str, Any] = {"workflow": graph}
    if images:
        payload["images"] = [{"name": name, "image": base64.b64encode(data).decode("ascii")}
                             for name, data in images.items()]
    return json.dumps({"input": payload, "policy": policy}, separators=(",", ":")).encode()


def _shrink(img: Any, name: str, scale: float) -> tuple[bytes, str, tuple[int, int]]:
    from PIL import Image

    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    frame = img.resize(size, Image.LANCZOS) if size != img.size else img
    stem = name.rsplit(".", 1)[0]
    out = io.BytesIO()
    if _opaque(frame):
        frame.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue(), f"{stem}.jpg", size
    frame.save(out, "PNG", optimize=True)  # its alpha may be a mask: keep it
    return out.getvalue(), f"{stem}.png", size


def _opaque(img: Any) -> bool:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = img.convert("RGBA").getchannel("A")
        return alpha.getextrema() == (255, 255)
    return True


def _rename(graph: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    changed = {old: new for old, new in renames.items() if old != new}
    if not changed:
        return graph
    return {node_id: {**node, "inputs": {k: changed.get(v, v) if isinstance(v, str) else v
                                         for k, v in (node.get("inputs") or {}).items()}}
            for node_id, node in graph.items()}


def decode_base64(data: str) -> bytes:
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("RunPod sent an output image that is not valid base64.") from exc
