"""Templates, parsing, binding, discovery and validation of API-format workflows.

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
    PARAM_NAMES,
    PARAM_TITLES,
    TEMPLATES_DIR,
    Binding,
    apply_inputs,
    bind,
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
from comfy.graph.params import GenerationParams

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


@pytest.fixture(scope="module")
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


# ---------------------------------------------------------------------------------------------- binding


def test_bind_txt2img_node_by_node() -> None:
    graph = fixture_workflow("txt2img")
    original = copy.deepcopy(graph)
    chosen = params(negative_prompt="text, watermark", sampler="dpmpp_2m", scheduler="karras", steps=12, cfg=5.5,
                    width=768, height=512, batch_size=2)
    bound = bind(graph, chosen)
    expected = copy.deepcopy(original)
    expected["3"]["inputs"].update(seed=123, steps=12, cfg=5.5, sampler_name="dpmpp_2m", scheduler="karras",
                                   denoise=1.0)
    expected["5"]["inputs"].update(width=768, height=512, batch_size=2)
    expected["6"]["inputs"]["text"] = "a red fox in the snow"
    expected["7"]["inputs"]["text"] = "text, watermark"
    assert bound == expected  # checkpoint None: node 4 keeps random-sd15.safetensors
    assert graph == original
    bound["6"]["inputs"]["clip"].append("x")
    assert graph == original  # no shared sub-objects either


def test_bind_checkpoint_and_templates() -> None:
    for name in ("txt2img", "img2img"):
        template = load_template(name)
        bound = bind(template, params(checkpoint="other.safetensors", init_image="upload.png" if name == "img2img"
                                      else None, denoise=0.6))
        assert bound_values(bound)["checkpoint"] == "other.safetensors"
        assert bound_values(bound)["prompt"] == "a red fox in the snow"
        assert template == load_template(name)


def test_bind_img2img_sets_the_uploaded_image_and_drops_is_changed() -> None:
    graph = fixture_workflow("img2img")
    graph["1"]["is_changed"] = ["sha of the old file"]
    bound = bind(graph, params(init_image="studio/abc.png", denoise=0.45))
    assert bound["1"] == {"class_type": "LoadImage", "inputs": {"image": "studio/abc.png"},
                          "_meta": {"title": "Load Image"}}
    assert bound["3"]["inputs"]["denoise"] == 0.45
    assert "is_changed" in graph["1"]


def test_bind_refuses_what_it_cannot_place() -> None:
    with pytest.raises(WorkflowError, match="no Load Image node") as caught:
        bind(fixture_workflow("txt2img"), params(init_image="x.png"))
    assert caught.value.field == "init_image"
    with pytest.raises(WorkflowError) as caught:
        bind(load_template("img2img"), params(width=768))
    assert caught.value.field == "width"
    with pytest.raises(WorkflowError, match="no place for the prompt") as caught:
        bind(fixture_workflow("no_weights"), params())
    assert caught.value.field == "prompt"
    graph = fixture_workflow("no_weights")
    assert bind(graph, params(steps=3), strict=False) == graph
    bind(load_template("img2img"), params(width=512))  # left at its default: nothing to place


def test_bind_wants_a_resolved_seed() -> None:
    with pytest.raises(WorkflowError) as caught:
        bind(fixture_workflow("txt2img"), GenerationParams(prompt="x"))
    assert caught.value.field == "seed"
    assert bind(fixture_workflow("txt2img"), GenerationParams(prompt="x").resolve_seed())


def test_bindings_of_the_fixture_workflows() -> None:
    assert places(fixture_workflow("txt2img")) == {
        "prompt": [("6", "text")], "negative_prompt": [("7", "text")], "seed": [("3", "seed")],
        "steps": [("3", "steps")], "cfg": [("3", "cfg")], "sampler": [("3", "sampler_name")],
        "scheduler": [("3", "scheduler")], "denoise": [("3", "denoise")], "width": [("5", "width")],
        "height": [("5", "height")], "batch_size": [("5", "batch_size")], "checkpoint": [("4", "ckpt_name")],
    }
    img2img = places(fixture_workflow("img2img"))
    assert img2img["init_image"] == [("1", "image")]
    assert not {"width", "height", "batch_size"} & img2img.keys()
    assert places(fixture_workflow("no_weights")) == {}
    assert find_bindings(fixture_workflow("txt2img"))["steps"] == [Binding("steps", "3", "steps")]


def test_titles_win_over_links() -> None:
    graph = fixture_workflow("txt2img")
    graph["6"]["_meta"]["title"] = "Negative"  # wired to positive, but the author says otherwise
    graph["7"]["_meta"]["title"] = "  positive_PROMPT "
    graph["12"] = {"class_type": "PrimitiveInt", "inputs": {"value": 30}, "_meta": {"title": "Steps"}}
    found = places(graph)
    assert found["prompt"] == [("7", "text")]
    assert found["negative_prompt"] == [("6", "text")]
    assert found["steps"] == [("12", "value")]  # the title wins; KSampler.steps is no longer bound
    bound = bind(graph, params(steps=9, negative_prompt="ugly"))
    assert (bound["12"]["inputs"]["value"], bound["3"]["inputs"]["steps"]) == (9, 3)
    assert (bound["6"]["inputs"]["text"], bound["7"]["inputs"]["text"]) == ("ugly", "a red fox in the snow")


def test_linked_widgets_follow_the_link_to_the_literal(info: ObjectInfo) -> None:
    graph = with_primitives()
    validate(graph, info)
    found = places(graph)
    assert found["seed"] == [("10", "value")]
    assert found["prompt"] == [("11", "value")]
    bound = bind(graph, params())
    assert bound["10"]["inputs"]["value"] == 123 and bound["11"]["inputs"]["value"] == "a red fox in the snow"
    assert bound["3"]["inputs"]["seed"] == ["10", 0]


def test_hires_fix_gets_denoise_on_the_first_sampler_only(info: ObjectInfo) -> None:
    graph = hires_fix()
    validate(graph, info)
    found = places(graph)
    for param, name in [("seed", "seed"), ("steps", "steps"), ("cfg", "cfg"), ("sampler", "sampler_name")]:
        assert found[param] == [("3", name), ("11", name)]
    assert found["denoise"] == [("3", "denoise")]
    assert found["width"] == [("5", "width")]  # not the LatentUpscale in front of the second pass
    bound = bind(graph, params(steps=25, denoise=0.9))
    assert (bound["3"]["inputs"]["steps"], bound["11"]["inputs"]["steps"]) == (25, 25)
    assert (bound["3"]["inputs"]["denoise"], bound["11"]["inputs"]["denoise"]) == (0.9, 0.5)


def test_custom_sampler_nodes(info: ObjectInfo) -> None:
    graph = custom_sampler()
    validate(graph, info)
    assert places(graph) == {
        "prompt": [("6", "text")], "negative_prompt": [("7", "text")], "seed": [("20", "noise_seed")],
        "steps": [("22", "steps")], "cfg": [("23", "cfg")], "sampler": [("21", "sampler_name")],
        "scheduler": [("22", "scheduler")], "denoise": [("22", "denoise")], "width": [("5", "width")],
        "height": [("5", "height")], "batch_size": [("5", "batch_size")], "checkpoint": [("4", "ckpt_name")],
    }


def test_conditioning_chain_lora_and_a_lone_load_image() -> None:
    found = places(controlnet_and_lora())
    assert found["prompt"] == [("6", "text")]
    assert found["negative_prompt"] == [("7", "text")]
    assert found["checkpoint"] == [("4", "ckpt_name")]  # through the LoraLoader's model input
    assert found["init_image"] == [("13", "image")]  # the only LoadImage, though not on the latent path


def test_zeroed_negative_is_not_bound() -> None:
    graph = fixture_workflow("txt2img")
    graph["7"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}}
    assert "negative_prompt" not in places(graph)
    bind(graph, params())  # an empty negative prompt needs no place
    with pytest.raises(WorkflowError) as caught:
        bind(graph, params(negative_prompt="blurry"))
    assert caught.value.field == "negative_prompt"


def test_every_title_alias_binds() -> None:
    assert set(PARAM_TITLES.values()) == set(PARAM_NAMES)
    for title, param in PARAM_TITLES.items():
        graph = fixture_workflow("no_weights")
        graph["50"] = {"class_type": "PrimitiveString", "inputs": {"value": "x"}, "_meta": {"title": title.upper()}}
        assert places(graph) == {param: [("50", "value")]}, title


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
