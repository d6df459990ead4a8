"""Binding the studio's parameters into API-format workflows: templates, the captured workflows, hires fix,
custom samplers, LoRA chains, titles and primitives."""

from __future__ import annotations

import copy

import pytest

from comfy.errors import WorkflowError
from comfy.graph import (
    PARAM_NAMES,
    PARAM_TITLES,
    Binding,
    bind,
    bound_values,
    find_bindings,
    load_template,
    validate,
)
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams
from tests.graph_support import (  # noqa: F401
    FIXTURES,
    controlnet_and_lora,
    custom_sampler,
    fixture_workflow,
    hires_fix,
    params,
    places,
    with_primitives,
)

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


