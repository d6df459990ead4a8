"""What the graph tests share: the real ``/object_info`` capture, the captured workflows, small builders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfy.graph import (
    find_bindings,
)
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


@pytest.fixture(scope="session")
def info() -> ObjectInfo:
    return ObjectInfo.from_json((FIXTURES / "object_info.json").read_bytes())


def fixture_workflow(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "workflows" / f"{name}_api.json").read_text())


def places(graph: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    return {param: [(b.node_id, b.input_name) for b in found] for param, found in find_bindings(graph).items()}


def params(**changes: Any) -> GenerationParams:
    return GenerationParams(**{"prompt": "a red fox in the snow", "seed": 123, **changes})




# ---------------------------------------------------------------------------------------------- graphs


def hires_fix() -> dict[str, Any]:
    """txt2img, then LatentUpscale and a second KSampler at denoise 0.5 (a hires-fix pass)."""
    graph = fixture_workflow("txt2img")
    graph["10"] = {"class_type": "LatentUpscale", "_meta": {"title": "Upscale Latent"},
                   "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "width": 1024,
                              "height": 1024, "crop": "disabled"}}
    graph["11"] = {"class_type": "KSampler", "_meta": {"title": "Hires pass"},
                   "inputs": {"seed": 5, "steps": 10, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal",
                              "denoise": 0.5, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                              "latent_image": ["10", 0]}}
    graph["8"]["inputs"]["samples"] = ["11", 0]
    return graph


def custom_sampler() -> dict[str, Any]:
    """SamplerCustomAdvanced with RandomNoise, KSamplerSelect, BasicScheduler and CFGGuider."""
    graph = fixture_workflow("txt2img")
    del graph["3"]
    graph.update({
        "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "21": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "22": {"class_type": "BasicScheduler",
               "inputs": {"model": ["4", 0], "scheduler": "simple", "steps": 8, "denoise": 1.0}},
        "23": {"class_type": "CFGGuider",
               "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "cfg": 3.5}},
        "24": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["20", 0], "guider": ["23", 0], "sampler": ["21", 0], "sigmas": ["22", 0],
                          "latent_image": ["5", 0]}},
    })
    graph["8"]["inputs"]["samples"] = ["24", 0]
    return graph


def controlnet_and_lora() -> dict[str, Any]:
    """txt2img with a LoRA on the model and ControlNetApplyAdvanced between the prompts and the sampler."""
    graph = fixture_workflow("txt2img")
    graph.update({
        "12": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "x.safetensors",
                                                       "strength_model": 1.0, "strength_clip": 1.0}},
        "13": {"class_type": "LoadImage", "inputs": {"image": "pose.png"}},
        "14": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "openpose.safetensors"}},
        "15": {"class_type": "ControlNetApplyAdvanced",
               "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["14", 0], "image": ["13", 0],
                          "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
    })
    graph["3"]["inputs"].update(model=["12", 0], positive=["15", 0], negative=["15", 1])
    return graph


def with_primitives() -> dict[str, Any]:
    """Widgets turned into inputs: the seed from a PrimitiveInt titled "Seed", the prompt from a text primitive."""
    graph = fixture_workflow("txt2img")
    graph["10"] = {"class_type": "PrimitiveInt", "inputs": {"value": 99}, "_meta": {"title": "Seed"}}
    graph["11"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a cat"}, "_meta": {"title": "Text"}}
    graph["3"]["inputs"]["seed"] = ["10", 0]
    graph["6"]["inputs"]["text"] = ["11", 0]
    return graph
