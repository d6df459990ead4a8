"""Validating workflows against the real ``/object_info`` capture, as ComfyUI does, with its own 400 answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from comfy.errors import WorkflowError
from comfy.graph import (
    find_problems,
    validate,
)
from comfy.graph.object_info import ObjectInfo
from tests.graph_support import FIXTURES, fixture_workflow, params, places  # noqa: F401

# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["txt2img", "img2img", "no_weights", "runtime_error"])
def test_fixture_workflows_pass(info: ObjectInfo, name: str) -> None:
    validate(fixture_workflow(name), info)  # runtime_error only fails when run: a runtime-only problem


def broken(change: str) -> dict[str, Any]:
    graph = fixture_workflow("txt2img")
    inputs = graph["3"]["inputs"]
    if change == "unknown class":
        graph["3"]["class_type"] = "NoSuchSamplerNode"
    elif change == "missing value":
        del inputs["steps"]
    elif change == "missing link":
        del inputs["model"]
    elif change == "checkpoint":
        graph["4"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    elif change == "sampler":
        inputs["sampler_name"] = "euler_a"
    elif change == "scheduler":
        inputs["scheduler"] = "Karras"
    elif change == "too many steps":
        inputs["steps"] = 10001
    elif change == "cfg text":
        inputs["cfg"] = "seven"
    elif change == "fractional steps":
        inputs["steps"] = 7.5
    elif change == "negative width":
        graph["5"]["inputs"]["width"] = 8
    elif change == "missing node":
        graph["8"]["inputs"]["samples"] = ["99", 0]
    elif change == "output index":
        inputs["model"] = ["4", 3]
    elif change == "type mismatch":
        inputs["positive"] = ["4", 1]
    elif change == "value for a link":
        inputs["model"] = "random-sd15.safetensors"
    elif change == "no output":
        del graph["9"]
    return graph


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ("unknown class", "node 3 (NoSuchSamplerNode)",
         r'Node 3 "KSampler" \(NoSuchSamplerNode\): node type \'NoSuchSamplerNode\' is not installed on the ComfyUI '
         r"server; install the custom node or pick another workflow"),
        ("missing value", "steps", r"Node 3 \(KSampler\), input 'steps': this required input is missing; set it "
                                   r"\(the default is 20\)"),
        ("missing link", "node 3 (KSampler).model",
         r"input 'model': .*missing; connect it to a node that outputs MODEL"),
        ("checkpoint", "checkpoint", r"Node 4 \"Load Checkpoint\" \(CheckpointLoaderSimple\), input 'ckpt_name': "
                                     r"checkpoint 'sdxl.safetensors' is not on the server; available: "
                                     r"random-sd15.safetensors\."),
        ("sampler", "sampler", r"sampler 'euler_a' is not available on the server \(did you mean 'euler'\?\); "
                               r"choose one of: euler, euler_cfg_pp, .* \(44 in all\)"),
        ("scheduler", "scheduler", r"scheduler 'Karras' is not available on the server \(did you mean 'karras'\?\)"),
        ("too many steps", "steps", r"input 'steps': 10001 is above the maximum of 10000"),
        ("cfg text", "cfg", r"input 'cfg': \"seven\" is not a number"),
        ("fractional steps", "steps", r"7.5 is not a whole number"),
        ("negative width", "width", r"Node 5 \"Empty Latent Image\" \(EmptyLatentImage\), input 'width': 8 is "
                                    r"below the minimum of 16"),
        ("missing node", "node 8 (VAEDecode).samples", r"linked to node 99, which is not in the workflow"),
        ("output index", "node 3 (KSampler).model",
         r"linked to output 3 of node 4 \"Load Checkpoint\" \(CheckpointLoaderSimple\), which has only 3 output\(s\) "
         r"\(0: MODEL, 1: CLIP, 2: VAE\)"),
        ("type mismatch", "node 3 (KSampler).positive", r"expects CONDITIONING but is connected to output 1 of node "
                                                        r"4 .* which gives CLIP"),
        ("value for a link", "node 3 (KSampler).model", r"takes a connection from a node that outputs MODEL"),
        ("no output", None, r"no output node such as SaveImage, so it would produce nothing"),
    ],
)
def test_validate_names_the_node_input_and_field(info: ObjectInfo, change: str, field: str | None,
                                                 message: str) -> None:
    with pytest.raises(WorkflowError, match=message) as caught:
        validate(broken(change), info)
    assert caught.value.field == field


def test_validate_details(info: ObjectInfo) -> None:
    graph = fixture_workflow("no_weights")
    graph["2"]["inputs"]["blur_radius"] = 100
    with pytest.raises(WorkflowError) as caught:
        validate(graph, info)
    assert caught.value.field == "node 2 (ImageBlur).blur_radius"  # not bound to a studio parameter
    both = fixture_workflow("txt2img")
    both["3"]["inputs"].update(steps=0, cfg=1000)
    assert [p.field for p in find_problems(both, info)] == ["steps", "cfg"]
    seed = fixture_workflow("txt2img")
    seed["3"]["inputs"]["seed"] = 2**64 - 1  # exactly the maximum, compared without float rounding
    validate(seed, info)
    seed["3"]["inputs"]["seed"] = 2**64
    with pytest.raises(WorkflowError, match="above the maximum"):
        validate(seed, info)


def test_validate_leaves_runtime_questions_to_the_server(info: ObjectInfo) -> None:
    graph = fixture_workflow("img2img")
    graph["1"]["inputs"]["image"] = "uploaded-just-now.png"  # LoadImage checks its file itself, at run time
    graph["50"] = {"class_type": "KSampler", "inputs": {}}  # no output depends on it: ComfyUI ignores it too
    validate(graph, info)
    graph["1"]["inputs"]["image"] = ""
    validate(graph, info, pending_uploads=True)  # the worker uploads and sets it just before the run
    with pytest.raises(WorkflowError, match="input 'image': no image is set; upload an image") as caught:
        validate(graph, info)
    assert caught.value.field == "init_image"
    graph["51"] = {"class_type": "NoSuchNode", "inputs": {}}  # but every class must exist
    with pytest.raises(WorkflowError, match="NoSuchNode"):
        validate(graph, info)


def test_validate_values_comfyui_would_misread(info: ObjectInfo) -> None:
    graph = fixture_workflow("txt2img")
    graph["10"] = {"class_type": "InpaintModelConditioning",
                   "inputs": {"positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["8", 0],
                              "mask": ["11", 0], "noise_mask": "false"}}
    graph["11"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    graph["12"] = {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}}
    with pytest.raises(WorkflowError, match="'noise_mask': \"false\" is not true or false"):
        validate(graph, info)
    graph["10"]["inputs"]["noise_mask"] = False
    validate(graph, info)


@pytest.mark.parametrize("graph", [[1, 2, 3], {}, {"1": {"inputs": {}}}])
def test_validate_malformed(info: ObjectInfo, graph: Any) -> None:
    with pytest.raises(WorkflowError):
        validate(graph, info)


# What ComfyUI itself refused (HTTP 400 from POST /prompt): our validate must refuse the same prompts, before
# submission. Every captured case is static, so none needs runtime knowledge and there are no exceptions here;
# runtime-only failures (runtime_error_api.json, a missing LoadImage file) pass validate by design.
SERVER_REJECTIONS = {
    "post_prompt_400_bad_combo_value.json": "sampler",
    "post_prompt_400_bad_int_value.json": "seed",
    "post_prompt_400_empty_prompt.json": None,
    "post_prompt_400_link_to_missing_node.json": "node 8 (VAEDecode).samples",
    "post_prompt_400_link_type_mismatch.json": "node 3 (KSampler).model",
    "post_prompt_400_missing_required_input_link.json": "node 3 (KSampler).model",
    "post_prompt_400_missing_required_input_value.json": "steps",
    "post_prompt_400_no_output_nodes.json": None,
    "post_prompt_400_unknown_ckpt_name.json": "checkpoint",
    "post_prompt_400_unknown_node_class.json": "node 3 (NoSuchSamplerNode)",
    "post_prompt_400_value_out_of_range.json": "steps",
}


def test_every_server_rejection_is_covered() -> None:
    with_prompt = set()
    for path in (FIXTURES / "http").glob("post_prompt_400_*.json"):
        body = json.loads(path.read_text())["request"]["body"]
        if isinstance(body, dict) and "prompt" in body:
            with_prompt.add(path.name)
    assert with_prompt == set(SERVER_REJECTIONS)  # post_prompt_400_no_prompt_key.json has no prompt


@pytest.mark.parametrize(("name", "field"), sorted(SERVER_REJECTIONS.items()))
def test_validate_rejects_what_comfyui_rejected(info: ObjectInfo, name: str, field: str | None) -> None:
    envelope = json.loads((FIXTURES / "http" / name).read_text())
    assert envelope["response"]["status"] == 400
    with pytest.raises(WorkflowError) as caught:
        validate(envelope["request"]["body"]["prompt"], info)
    assert caught.value.field == field


def test_validate_accepts_what_comfyui_accepted(info: ObjectInfo) -> None:
    for path in sorted((FIXTURES / "http").glob("post_prompt_200*.json")):
        validate(json.loads(path.read_text())["request"]["body"]["prompt"], info)


