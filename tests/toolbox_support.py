"""What the toolbox tests share: an ``object_info`` with model files, and a strict check of built graphs.

The captured ``object_info.json`` (a real ComfyUI 0.8 with one random SD 1.5 checkpoint) lists no LoRAs,
VAEs or upscale models. :func:`toolbox_info` copies it and adds file choices to exactly those combos
(``LoraLoader.lora_name``, ``VAELoader.vae_name``, ``UpscaleModelLoader.model_name``, more checkpoints),
as a server with those files would list them; nothing else is changed.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from comfy.graph.nodes import is_link
from comfy.graph.object_info import ObjectInfo

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
LORAS = ["detail-tweaker.safetensors", "styles/ink-wash.safetensors", "film_grain.pt"]
VAES = ["sdxl_vae.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors"]
UPSCALERS = ["4x-UltraSharp.pth", "RealESRGAN_x2.pth"]
CHECKPOINTS = ["random-sd15.safetensors", "sd_xl_base_1.0.safetensors", "flux1-dev-fp8.safetensors"]


def captured_raw() -> dict[str, Any]:
    return json.loads((FIXTURES / "object_info.json").read_bytes())


def toolbox_info() -> ObjectInfo:
    raw = copy.deepcopy(captured_raw())
    required = lambda cls: raw[cls]["input"]["required"]  # noqa: E731
    assert required("LoraLoader")["lora_name"][0] == []  # the capture has none: that is why files are added
    required("LoraLoader")["lora_name"][0] = list(LORAS)
    required("VAELoader")["vae_name"][0] = [*VAES, *required("VAELoader")["vae_name"][0]]
    assert required("UpscaleModelLoader")["model_name"][1]["options"] == []
    required("UpscaleModelLoader")["model_name"][1]["options"] = list(UPSCALERS)
    required("CheckpointLoaderSimple")["ckpt_name"][0] = list(CHECKPOINTS)
    return ObjectInfo(raw)


def classes(graph: dict[str, Any]) -> list[str]:
    """The node classes in id order (the builder numbers nodes in the order of the graph)."""
    return [graph[n]["class_type"] for n in sorted(graph, key=int)]


def strict_problems(graph: dict[str, Any], info: ObjectInfo) -> list[str]:
    """Stricter than ComfyUI: every input is declared, every required one is set, links give the exact type,
    every combo value is one of its choices (image names excepted), numbers are within their bounds."""
    problems = []
    for node_id, node in graph.items():
        cls = node["class_type"]
        specs = {s.name: s for s in info.input_specs(cls)}
        for name in node["inputs"]:
            if name not in specs:
                problems.append(f"{node_id} {cls}: undeclared input {name}")
        for name, spec in specs.items():
            if name not in node["inputs"]:
                if spec.required:
                    problems.append(f"{node_id} {cls}: missing {name}")
                continue
            value = node["inputs"][name]
            if is_link(value):
                source = graph[value[0]]["class_type"]
                given = info.output_types(source)[value[1]]
                if spec.is_link and given != spec.type:
                    problems.append(f"{node_id} {cls}.{name}: {given} from {source}, wants {spec.type}")
            elif spec.is_link:
                problems.append(f"{node_id} {cls}.{name}: a value where a link is needed")
            elif spec.choices is not None and not spec.image_upload and value not in spec.choices:
                problems.append(f"{node_id} {cls}.{name}: {value!r} not in choices")
            elif spec.type in ("INT", "FLOAT") and not (
                    (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)):
                problems.append(f"{node_id} {cls}.{name}: {value} out of bounds")
            elif spec.type == "INT" and not isinstance(value, int):
                problems.append(f"{node_id} {cls}.{name}: {value!r} is not an int")
    return problems


def inputs_of(graph: dict[str, Any], class_type: str, nth: int = 0) -> dict[str, Any]:
    """The inputs of the ``nth`` node of a class, in id order (a built graph's prompt is its first CLIPTextEncode)."""
    found = [graph[n] for n in sorted(graph, key=int) if graph[n]["class_type"] == class_type]
    return found[nth]["inputs"]


def write_toolbox_info(folder: Path) -> Path:
    """:func:`toolbox_info` as a file, for ``FakeComfy(object_info_path=...)``: a server with those model files."""
    path = Path(folder) / "object_info.json"
    path.write_text(json.dumps(toolbox_info().raw), encoding="utf-8")
    return path


@contextlib.contextmanager
def toolbox_comfy(folder: Path) -> Iterator[Any]:
    """The fake ComfyUI serving :func:`toolbox_info` (LoRAs, VAEs, upscale models), for a ``fake_comfy`` fixture."""
    from tests.fakes.comfyui import FakeComfy

    server = FakeComfy(step_time=0.002, object_info_path=write_toolbox_info(folder))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def png_bytes(width: int, height: int, color: Any = (90, 120, 200), box: tuple[int, int, int, int] | None = None) -> bytes:
    """A plain PNG, with a white ``box`` painted when given (with color black: a mask)."""
    from PIL import Image

    picture = Image.new("RGB", (width, height), color)
    if box is not None:
        picture.paste((255, 255, 255), box)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()
