"""Templates, parsing, PNG extraction and input discovery of API-format workflows.

Everything runs against the real ComfyUI 0.8.0 captures in tests/fixtures/comfyui: the full
``/object_info`` (loaded once per module), the workflows that were run, their output PNGs and the
server's own 400 answers.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from comfy.errors import WorkflowError
from comfy.graph import (
    TEMPLATES_DIR,
    Binding,
    apply_inputs,
    bound_values,
    default_checkpoint,
    discover_inputs,
    find_bindings,
    find_problems,
    list_templates,
    load_template,
    parse_workflow,
    summarize,
    validate,
    workflow_from_png,
)
from comfy.graph.object_info import ObjectInfo
from tests.graph_support import FIXTURES, fixture_workflow, hires_fix, params, places  # noqa: F401

# ---------------------------------------------------------------------------------------------- templates


def test_templates_are_listed_and_valid(info: ObjectInfo) -> None:
    assert {"txt2img", "img2img"} <= set(list_templates())
    for name in ("txt2img", "img2img"):
        graph = load_template(name)
        validate(graph, info)
        assert all(node["_meta"]["title"] for node in graph.values())
        assert find_problems(graph, info) == []


def test_txt2img_template_shape() -> None:
    graph = load_template("txt2img")
    classes = sorted(node["class_type"] for node in graph.values())
    assert classes == sorted(["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "VAEDecode", "SaveImage"])
    assert bound_values(graph) == {
        "prompt": "a watercolor painting of a lighthouse at dusk", "negative_prompt": "blurry, low quality, watermark",
        "seed": 0, "steps": 20, "cfg": 7.0, "sampler": "euler", "scheduler": "normal", "denoise": 1.0,
        "width": 512, "height": 512, "batch_size": 1, "checkpoint": "random-sd15.safetensors",
    }
    saves = [n for n in graph.values() if n["class_type"] == "SaveImage"]
    assert saves[0]["inputs"]["filename_prefix"] == "ComfyUIStudio"


def test_img2img_template_shape() -> None:
    graph = load_template("img2img")
    assert "EmptyLatentImage" not in {node["class_type"] for node in graph.values()}
    values = bound_values(graph)
    assert values["denoise"] == 0.6 and values["init_image"] == "example.png"
    assert "width" not in values  # the size comes from the init image
    sampler = graph[find_bindings(graph)["denoise"][0].node_id]
    encode = graph[sampler["inputs"]["latent_image"][0]]
    assert encode["class_type"] == "VAEEncode"
    assert graph[encode["inputs"]["pixels"][0]]["class_type"] == "LoadImage"


def test_load_template_returns_a_new_dict_each_time() -> None:
    first = load_template("txt2img")
    first["3"]["inputs"]["steps"] = 999
    assert load_template("txt2img")["3"]["inputs"]["steps"] == 20


@pytest.mark.parametrize("name", ["nope", "../pyproject", "txt2img.json", ""])
def test_unknown_template(name: str) -> None:
    with pytest.raises(WorkflowError) as caught:
        load_template(name)
    assert caught.value.field == "workflow"
    assert "txt2img" in str(caught.value)


def test_broken_template_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"1": {"inputs": {}}}')
    with pytest.raises(WorkflowError, match=r"template broken\.json is invalid: Node 1 has no class_type"):
        load_template("broken", directory=tmp_path)
    assert TEMPLATES_DIR.name == "workflows"


# ---------------------------------------------------------------------------------------------- parsing


def test_parse_accepts_api_format_text_bytes_dict_and_envelope() -> None:
    text = (FIXTURES / "workflows" / "txt2img_api.json").read_text()
    expected = json.loads(text)
    assert parse_workflow(text) == expected
    assert parse_workflow(b"\xef\xbb\xbf" + text.encode()) == expected  # a UTF-8 BOM is fine
    assert parse_workflow({"prompt": expected, "client_id": "abc"}) == expected
    source = copy.deepcopy(expected)
    parsed = parse_workflow(source)
    parsed["3"]["inputs"]["steps"] = 1
    assert source == expected  # a copy, never the caller's dict


def test_parse_normalises_ids_and_strips_is_changed() -> None:
    graph = parse_workflow({1: {"class_type": "LoadImage", "inputs": {"image": "a.png"}, "is_changed": ["abc"]},
                            2: {"class_type": "ImageInvert", "inputs": {"image": [1, 0]}},
                            3: {"class_type": "SaveImage"}})
    assert graph == {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
                     "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
                     "3": {"class_type": "SaveImage", "inputs": {}}}


def test_ui_format_gets_the_export_api_hint() -> None:
    chunks = json.loads((FIXTURES / "images" / "txt2img_output_with_workflow_chunk.png.chunks.json").read_text())
    ui = next(c["text"] for c in chunks["text_chunks"] if c["keyword"] == "workflow")
    with pytest.raises(WorkflowError, match=r"Export \(API\)"):
        parse_workflow(ui)
    with pytest.raises(WorkflowError, match=r"Export \(API\)"):
        parse_workflow({"nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0, 3, 0, "MODEL"]]})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"1": {"class_type": "X",}}', r"not valid JSON: Expecting property name .* line 1, column 26"),
        ('{\n  "1": {\n    "class_type": "X"\n  ', r"not valid JSON: .* line 4, column 3"),
        (b"\xff\xfe{}", r"not UTF-8 text \(bad byte at offset 0\)"),
        ("[1, 2, 3]", r"must be a JSON object that maps node ids to nodes .* not a list"),
        ("{}", r"has no nodes"),
        ('{"5": "KSampler"}', r"Node 5 is a string, not a node object"),
        ('{"5": {"inputs": {}}}', r"Node 5 has no class_type"),
        ('{"5": {"class_type": "X", "inputs": []}}', r"Node 5 \(X\): 'inputs' must be an object"),
        ('{"5": {"class_type": "X", "inputs": {"a": [1, 2, 3]}}}',
         r"Node 5 \(X\), input 'a': \[1, 2, 3\] is a list but not a link"),
        ('{"8": {"class_type": "VAEDecode", "inputs": {"samples": ["99", 0]}, "_meta": {"title": "Decode"}}}',
         r'Node 8 "Decode" \(VAEDecode\), input \'samples\': it is linked to node 99, which is not in the workflow'),
    ],
)
def test_parse_errors_say_where_and_what_to_fix(data: str | bytes, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        parse_workflow(data)


def test_parse_error_fields_name_the_node() -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow({"3": {"class_type": "KSampler", "inputs": {"model": ["4", 0]}}})
    assert caught.value.field == "node 3 (KSampler).model"


# ---------------------------------------------------------------------------------------------- PNG


def test_workflow_from_comfyui_pngs() -> None:
    images = FIXTURES / "images"
    assert workflow_from_png((images / "txt2img_output.png").read_bytes()) == fixture_workflow("txt2img")
    with_ui = workflow_from_png((images / "txt2img_output_with_workflow_chunk.png").read_bytes())
    assert with_ui["3"]["inputs"]["seed"] == 43 and set(with_ui) == set(fixture_workflow("txt2img"))
    # ComfyUI injects "is_changed" on LoadImage in the PNG; sent back it could hit a stale cache.
    assert workflow_from_png((images / "img2img_output.png").read_bytes()) == fixture_workflow("img2img")


def _png(**chunks: str) -> bytes:
    meta = PngImagePlugin.PngInfo()
    for key, (kind, text) in chunks.items():
        if kind == "zTXt":
            meta.add_text(key, text, zip=True)
        elif kind == "iTXt":
            meta.add_itxt(key, text, zip=True)
        else:
            meta.add_text(key, text)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG", pnginfo=meta)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt"])
def test_workflow_from_png_text_chunk_kinds(kind: str) -> None:
    graph = fixture_workflow("no_weights")
    graph["4"]["_meta"]["title"] = "Sauvegarder l'image ✓"
    assert workflow_from_png(_png(prompt=(kind, json.dumps(graph)))) == graph


def test_workflow_from_png_without_prompt() -> None:
    with pytest.raises(WorkflowError, match="no ComfyUI workflow"):
        workflow_from_png(_png(Comment=("tEXt", "hello")))
    with pytest.raises(WorkflowError, match=r"only the editor workflow.*Export \(API\)"):
        workflow_from_png(_png(workflow=("tEXt", '{"nodes": [], "links": []}')))
    with pytest.raises(WorkflowError, match="not a PNG"):
        workflow_from_png(b"GIF89a...")
    with pytest.raises(WorkflowError, match="workflow in this PNG is invalid"):
        workflow_from_png(_png(prompt=("tEXt", "{not json")))



# ---------------------------------------------------------------------------------------------- discovery


def test_discover_types_inputs_from_object_info(info: ObjectInfo) -> None:
    inputs = {item.key: item for item in discover_inputs(load_template("img2img"), info)}
    sampler = inputs[("3", "sampler_name")]
    assert (sampler.kind, sampler.param, sampler.choices) == ("combo", "sampler", tuple(info.samplers))
    assert inputs[("3", "scheduler")].choices == tuple(info.schedulers)
    ckpt = inputs[("4", "ckpt_name")]
    assert (ckpt.kind, ckpt.choices, ckpt.param, ckpt.label) == ("combo", ("random-sd15.safetensors",),
                                                                 "checkpoint", "Checkpoint")
    steps = inputs[("3", "steps")]
    assert (steps.kind, steps.min, steps.max, steps.default, steps.value) == ("int", 1, 10000, 20, 20)
    seed = inputs[("3", "seed")]
    assert (seed.kind, seed.min, seed.max) == ("int", 0, 2**64 - 1)
    cfg = inputs[("3", "cfg")]
    assert (cfg.kind, cfg.step, cfg.max) == ("float", 0.1, 100.0)
    prompt = inputs[("6", "text")]
    assert (prompt.kind, prompt.multiline, prompt.param, prompt.node_title) == ("text", True, "prompt",
                                                                                "Positive prompt")
    image = inputs[("1", "image")]
    assert (image.kind, image.param, image.class_type) == ("image", "init_image", "LoadImage")
    prefix = inputs[("9", "filename_prefix")]
    assert (prefix.kind, prefix.multiline, prefix.param, prefix.label) == ("text", False, None, "Filename prefix")
    assert ("3", "model") not in inputs  # links are not form fields


def test_discover_order_prompts_then_sampler_then_by_node_id(info: ObjectInfo) -> None:
    keys = [item.key for item in discover_inputs(hires_fix(), info)]
    assert keys[:2] == [("6", "text"), ("7", "text")]
    sampler_part = keys[2:2 + 12]
    assert sampler_part[:4] == [("3", "seed"), ("11", "seed"), ("3", "steps"), ("11", "steps")]
    assert ("11", "denoise") in sampler_part  # a sampler setting, though not bound to the studio's denoise
    rest = keys[14:]
    assert rest == [("4", "ckpt_name"), ("5", "width"), ("5", "height"), ("5", "batch_size"),
                    ("9", "filename_prefix"), ("10", "upscale_method"), ("10", "width"), ("10", "height"),
                    ("10", "crop")]


def test_discover_without_object_info_guesses(info: ObjectInfo) -> None:
    guessed = {item.key: item for item in discover_inputs(fixture_workflow("img2img"))}
    assert guessed[("3", "steps")].kind == "int" and guessed[("3", "steps")].max is None
    assert guessed[("3", "cfg")].kind == "float"
    assert guessed[("3", "sampler_name")].kind == "combo" and guessed[("3", "sampler_name")].choices is None
    assert guessed[("1", "image")].kind == "image"
    assert guessed[("6", "text")].multiline
    typed = discover_inputs(fixture_workflow("img2img"), info)
    assert [i.key for i in typed] == [i.key for i in discover_inputs(fixture_workflow("img2img"))]


def test_apply_inputs_returns_a_new_graph() -> None:
    graph = fixture_workflow("no_weights")
    original = copy.deepcopy(graph)
    changed = apply_inputs(graph, {("2", "blur_radius"): 5, ("4", "filename_prefix"): "mine"})
    assert changed["2"]["inputs"]["blur_radius"] == 5 and changed["4"]["inputs"]["filename_prefix"] == "mine"
    assert graph == original


@pytest.mark.parametrize(
    ("key", "value", "message", "field"),
    [
        (("77", "x"), 1, "no node '77'", "node 77"),
        (("2", "radius"), 1, r'Node 2 "Image Blur" \(ImageBlur\) has no input \'radius\'; its inputs are: image',
         "node 2 (ImageBlur).radius"),
        (("2", "image"), "x", "connected to node 1", "node 2 (ImageBlur).image"),
        (("1", "width"), [1, 2], "read as a link", "node 1 (EmptyImage).width"),
    ],
)
def test_apply_inputs_errors(key: tuple[str, str], value: Any, message: str, field: str) -> None:
    with pytest.raises(WorkflowError, match=message) as caught:
        apply_inputs(fixture_workflow("no_weights"), {key: value})
    assert caught.value.field == field



# ---------------------------------------------------------------------------------------------- helpers


def test_default_checkpoint(info: ObjectInfo) -> None:
    assert default_checkpoint(info) == "random-sd15.safetensors"
    empty = ObjectInfo({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [[], {}]}}}})
    with pytest.raises(WorkflowError, match="The ComfyUI server has no checkpoints in models/checkpoints") as caught:
        default_checkpoint(empty)
    assert caught.value.field == "checkpoint"


def test_summarize(info: ObjectInfo) -> None:
    summary = summarize(fixture_workflow("no_weights"), info)
    assert summary == {"nodes": 5, "class_types": {"EmptyImage": 1, "ImageBlur": 1, "ImageInvert": 1, "SaveImage": 1,
                                                    "PreviewImage": 1},
                       "output_nodes": ["4", "5"], "samplers": [], "params": []}
    assert summarize(hires_fix())["samplers"] == ["3", "11"]


def test_values_are_frozen() -> None:
    binding = Binding("steps", "3", "steps")
    with pytest.raises(dataclasses.FrozenInstanceError):
        binding.param = "cfg"  # type: ignore[misc]
    item = discover_inputs(fixture_workflow("txt2img"))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.value = "x"  # type: ignore[misc]

