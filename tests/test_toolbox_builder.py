"""The toolbox's graphs, built from core nodes and checked against the captured ``object_info``.

Each test builds a graph (``build_graph`` validates it with ComfyUI's rules) and then checks it strictly
(:func:`tests.toolbox_support.strict_problems`): declared inputs, exact link types, combo choices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from comfy.errors import WorkflowError
from comfy.graph import bind, load_template, validate
from comfy.graph.builder import build_graph, choose_file
from comfy.graph.masks import Region
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams, Limits
from tests.toolbox_support import UPSCALERS, captured_raw, classes, strict_problems, toolbox_info

INFO = toolbox_info()


def p(**changes: Any) -> GenerationParams:
    return GenerationParams(**{"prompt": "a red fox in the snow", "seed": 123,
                               "checkpoint": "random-sd15.safetensors", **changes})


def built(params: GenerationParams, **kwargs: Any) -> dict[str, Any]:
    params.check(Limits(max_width=4096, max_height=4096))
    graph = build_graph(params, INFO, **kwargs)
    assert strict_problems(graph, INFO) == []
    return graph


def nodes_of(graph: dict[str, Any], cls: str) -> list[dict[str, Any]]:
    return [graph[n] for n in sorted(graph, key=int) if graph[n]["class_type"] == cls]


def canonical(graph: dict[str, Any]) -> list[Any]:
    """A graph without its ids and titles: each node's class and inputs, links replaced by their source's shape."""
    def shape(node_id: str) -> Any:
        node = graph[node_id]
        return (node["class_type"], sorted((k, shape(v[0]) + (v[1],) if isinstance(v, list) else v)
                                           for k, v in node["inputs"].items()))
    return sorted(map(str, (shape(n) for n in graph)))


# ------------------------------------------------------------------------------------------ today's graphs


def test_plain_txt2img_is_the_shipped_template_bound() -> None:
    params = p(negative_prompt="blurry", steps=30, cfg=6.5, width=640, height=384, batch_size=2)
    graph = built(params)
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "VAEDecode", "SaveImage"]
    assert canonical(graph) == canonical(bind(load_template("txt2img"), params))


def test_plain_img2img_is_the_shipped_template_bound() -> None:
    params = p(init_image="studio_abc.png", denoise=0.6)
    graph = built(params)
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "LoadImage",
                              "VAEEncode", "KSampler", "VAEDecode", "SaveImage"]
    assert canonical(graph) == canonical(bind(load_template("img2img"), params))


def test_the_checkpoint_defaults_to_the_servers_first() -> None:
    graph = build_graph(p(checkpoint=None), INFO)
    assert nodes_of(graph, "CheckpointLoaderSimple")[0]["inputs"]["ckpt_name"] == "random-sd15.safetensors"


def test_a_random_seed_must_be_resolved_first() -> None:
    with pytest.raises(WorkflowError) as caught:
        build_graph(p(seed=-1), INFO)
    assert caught.value.field == "seed"


# ------------------------------------------------------------------------------------------------ LoRAs


def test_loras_chain_between_the_checkpoint_and_the_sampler() -> None:
    graph = built(p(loras=[{"name": "detail-tweaker.safetensors", "strength": 0.8},
                           {"name": "film_grain.pt", "strength": 0.5, "strength_clip": 0.2}]))
    assert classes(graph)[:3] == ["CheckpointLoaderSimple", "LoraLoader", "LoraLoader"]
    first, second = nodes_of(graph, "LoraLoader")
    assert first["inputs"]["model"] == ["1", 0] and first["inputs"]["clip"] == ["1", 1]
    assert second["inputs"]["model"] == ["2", 0] and second["inputs"]["clip"] == ["2", 1]
    assert (first["inputs"]["strength_model"], first["inputs"]["strength_clip"]) == (0.8, 0.8)
    assert (second["inputs"]["strength_model"], second["inputs"]["strength_clip"]) == (0.5, 0.2)
    sampler = nodes_of(graph, "KSampler")[0]
    assert sampler["inputs"]["model"] == ["3", 0]
    assert all(n["inputs"]["clip"] == ["3", 1] for n in nodes_of(graph, "CLIPTextEncode"))


def test_a1111_lora_tags_in_the_prompt_are_loras_matched_to_files() -> None:
    graph = built(p(prompt="ink landscape, <lora:ink-wash:0.6>, misty <lora:detail-tweaker:0.5:1.2>"))
    assert [n["inputs"]["lora_name"] for n in nodes_of(graph, "LoraLoader")] == [
        "styles/ink-wash.safetensors", "detail-tweaker.safetensors"]
    assert [(n["inputs"]["strength_model"], n["inputs"]["strength_clip"]) for n in nodes_of(graph, "LoraLoader")] \
        == [(0.6, 0.6), (1.2, 0.5)]
    assert nodes_of(graph, "CLIPTextEncode")[0]["inputs"]["text"] == "ink landscape, misty"


def test_an_unknown_lora_names_the_field_and_the_choices() -> None:
    with pytest.raises(WorkflowError) as caught:
        build_graph(p(loras=[{"name": "detail-tweaker"}, {"name": "nope.safetensors"}]), INFO)
    assert caught.value.field == "loras[1].name"
    assert "'nope.safetensors'" in str(caught.value) and "detail-tweaker.safetensors" in str(caught.value)


def test_a_lora_on_a_server_with_no_loras_says_so() -> None:
    with pytest.raises(WorkflowError, match="it has none") as caught:
        build_graph(p(loras=[{"name": "detail"}]), ObjectInfo(captured_raw()))
    assert caught.value.field == "loras[0].name"


def test_a_malformed_lora_is_refused_with_its_field() -> None:
    for loras, field in (([{"name": ""}], "loras[0].name"), ([{"name": "a", "strength": "x"}], "loras[0].strength"),
                         ([{"name": "a", "weight": 1}], "loras[0].weight"), ("a", "loras")):
        with pytest.raises(WorkflowError) as caught:
            p(loras=loras).check(Limits())
        assert caught.value.field == field


def test_an_ambiguous_short_name_asks_for_the_full_one() -> None:
    raw = captured_raw()
    raw["LoraLoader"]["input"]["required"]["lora_name"][0] = ["a/ink.safetensors", "b/ink.safetensors"]
    with pytest.raises(WorkflowError, match="could be any of"):
        choose_file(ObjectInfo(raw), "LoraLoader", "lora_name", "ink", field="loras[0].name", what="LoRA")


# -------------------------------------------------------------------------------------------------- VAE


def test_a_vae_file_replaces_the_checkpoints_vae_everywhere() -> None:
    graph = built(p(vae="sdxl_vae.safetensors", init_image="in.png", mask="m.png", denoise=0.5))
    loader_id = next(n for n in graph if graph[n]["class_type"] == "VAELoader")
    users = [node for node in graph.values() if "vae" in node["inputs"]]
    assert users and all(node["inputs"]["vae"] == [loader_id, 0] for node in users)


def test_an_unknown_vae_names_the_field_and_the_choices() -> None:
    with pytest.raises(WorkflowError) as caught:
        build_graph(p(vae="sdxl-vae-fp16.safetensors"), INFO)
    assert caught.value.field == "vae" and "sdxl_vae.safetensors" in str(caught.value)


# -------------------------------------------------------------------------------------------- hires fix


def test_latent_hires_makes_a_second_pass_at_scale_times_the_size() -> None:
    graph = built(p(width=512, height=768, steps=30, hires={"scale": 1.5, "denoise": 0.45}))
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "LatentUpscale", "KSampler", "VAEDecode", "SaveImage"]
    upscale = nodes_of(graph, "LatentUpscale")[0]["inputs"]
    assert (upscale["width"], upscale["height"], upscale["samples"]) == (768, 1152, ["5", 0])
    first, second = nodes_of(graph, "KSampler")
    assert second["inputs"]["latent_image"] == ["6", 0]
    assert (first["inputs"]["denoise"], second["inputs"]["denoise"]) == (1.0, 0.45)
    assert second["inputs"]["steps"] == 30 and second["inputs"]["seed"] == first["inputs"]["seed"]


def test_model_hires_decodes_upscales_to_the_exact_size_and_encodes_again() -> None:
    graph = built(p(hires={"scale": 2, "denoise": 0.3, "steps": 12, "upscaler": "4x-UltraSharp"}))
    assert classes(graph)[4:] == ["KSampler", "VAEDecode", "UpscaleModelLoader", "ImageUpscaleWithModel",
                                  "ImageScale", "VAEEncode", "KSampler", "VAEDecode", "SaveImage"]
    assert nodes_of(graph, "UpscaleModelLoader")[0]["inputs"]["model_name"] == UPSCALERS[0]
    scale = nodes_of(graph, "ImageScale")[0]["inputs"]
    assert (scale["width"], scale["height"]) == (1024, 1024)
    assert nodes_of(graph, "KSampler")[1]["inputs"]["steps"] == 12


def test_hires_refuses_an_unknown_upscaler_or_scale_with_a_sentence() -> None:
    with pytest.raises(WorkflowError) as caught:
        build_graph(p(hires={"scale": 2, "upscaler": "8x-Magic.pth"}), INFO)
    assert caught.value.field == "hires.upscaler"
    assert "latent" in str(caught.value) and "4x-UltraSharp.pth" in str(caught.value)
    for hires, field in (({"scale": 5}, "hires.scale"), ({"denoise": 2}, "hires.denoise"),
                         ({"steps": 1.5}, "hires.steps"), ({"scale": 2, "extra": 1}, "hires.extra")):
        with pytest.raises(WorkflowError) as caught:
            p(hires=hires).check(Limits())
        assert caught.value.field == field


def test_hires_is_for_text_to_image() -> None:
    with pytest.raises(WorkflowError, match="text-to-image") as caught:
        p(init_image="in.png", hires={"scale": 2}).check(Limits())
    assert caught.value.field == "hires"


# ------------------------------------------------------------------------------------------- inpainting


def test_inpaint_with_denoise_below_1_keeps_the_original_under_a_noise_mask() -> None:
    graph = built(p(init_image="in.png", mask="mask.png", denoise=0.75, mask_blur=4, mask_grow=6))
    assert classes(graph) == [
        "CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "LoadImage", "LoadImageMask", "GrowMask",
        "MaskToImage", "ImageBlur", "ImageToMask", "VAEEncode", "SetLatentNoiseMask", "KSampler", "VAEDecode",
        "ImageCompositeMasked", "SaveImage"]
    mask = nodes_of(graph, "LoadImageMask")[0]["inputs"]
    assert mask == {"image": "mask.png", "channel": "red"}  # white = 1 = repaint
    assert nodes_of(graph, "GrowMask")[0]["inputs"]["expand"] == 6
    assert nodes_of(graph, "ImageBlur")[0]["inputs"] == {"image": ["7", 0], "blur_radius": 10, "sigma": 4.0}
    paste = nodes_of(graph, "ImageCompositeMasked")[0]["inputs"]
    assert paste["destination"] == ["4", 0] and paste["source"] == ["13", 0] and paste["mask"] == ["9", 0]


def test_inpaint_at_denoise_1_fills_the_mask_with_vae_encode_for_inpaint() -> None:
    graph = built(p(init_image="in.png", mask="mask.png", mask_blur=0))
    assert "VAEEncodeForInpaint" in classes(graph) and "SetLatentNoiseMask" not in classes(graph)
    assert "ImageBlur" not in classes(graph) and "GrowMask" not in classes(graph)


def test_only_masked_inpaints_the_area_at_full_resolution_and_pastes_it_back() -> None:
    region = Region(64, 32, 256, 256)
    graph = built(p(init_image="in.png", mask="mask.png", denoise=0.6, inpaint_full_res=True, width=768,
                    height=768), mask_region=region)
    crop = nodes_of(graph, "ImageCrop")[0]["inputs"]
    assert (crop["x"], crop["y"], crop["width"], crop["height"]) == (64, 32, 256, 256)
    sizes = [(n["inputs"]["width"], n["inputs"]["height"]) for n in nodes_of(graph, "ImageScale")]
    assert sizes == [(768, 768), (768, 768), (256, 256)]  # image and mask up, the result back down
    paste = nodes_of(graph, "ImageCompositeMasked")[0]["inputs"]
    assert (paste["x"], paste["y"]) == (64, 32)
    assert graph[paste["mask"][0]]["class_type"] == "CropMask"


def test_only_masked_needs_the_masked_area() -> None:
    with pytest.raises(WorkflowError) as caught:
        build_graph(p(init_image="in.png", mask="m.png", inpaint_full_res=True), INFO)
    assert caught.value.field == "inpaint_full_res"


def test_an_inpaint_batch_keeps_every_image() -> None:
    graph = built(p(init_image="in.png", mask="mask.png", batch_size=3))
    assert nodes_of(graph, "RepeatLatentBatch")[0]["inputs"]["amount"] == 3
    paste = nodes_of(graph, "ImageCompositeMasked")[0]["inputs"]
    assert graph[paste["destination"][0]]["class_type"] == "RepeatImageBatch"


def test_a_mask_needs_an_image_and_sane_settings() -> None:
    cases = [({"mask": "m.png"}, "mask"), ({"init_image": "i.png", "mask": "m.png", "mask_blur": 11}, "mask_blur"),
             ({"init_image": "i.png", "mask": "m.png", "inpaint_padding": -1}, "inpaint_padding"),
             ({"init_image": "i.png", "mask": "m.png", "outpaint": {"left": 8}}, "outpaint")]
    for changes, field in cases:
        with pytest.raises(WorkflowError) as caught:
            p(**changes).check(Limits())
        assert caught.value.field == field, changes


# ------------------------------------------------------------------------------------------ outpainting


def test_outpaint_pads_the_image_and_fills_the_new_area() -> None:
    graph = built(p(init_image="in.png", outpaint={"left": 128, "right": 64, "top": 0, "bottom": 8}))
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "LoadImage",
                              "ImagePadForOutpaint", "VAEEncodeForInpaint", "KSampler", "VAEDecode", "SaveImage"]
    pad = nodes_of(graph, "ImagePadForOutpaint")[0]["inputs"]
    assert (pad["left"], pad["top"], pad["right"], pad["bottom"]) == (128, 0, 64, 8)
    encode = nodes_of(graph, "VAEEncodeForInpaint")[0]["inputs"]
    assert encode["pixels"] == ["5", 0] and encode["mask"] == ["5", 1]


def test_outpaint_not_in_multiples_of_8_is_refused_with_a_sentence() -> None:
    with pytest.raises(WorkflowError, match="multiple of 8.*try 96 or 104") as caught:
        p(init_image="in.png", outpaint={"left": 100}).check(Limits())
    assert caught.value.field == "outpaint.left"
    for outpaint, field in (({}, "outpaint"), ({"top": -8}, "outpaint.top"), ({"left": "8"}, "outpaint.left")):
        with pytest.raises(WorkflowError) as caught:
            p(init_image="in.png", outpaint=outpaint).check(Limits())
        assert caught.value.field == field


# ---------------------------------------------------------------------------------------------- families


def test_flux_has_guidance_and_no_negative_prompt() -> None:
    graph = built(p(checkpoint="flux1-dev-fp8.safetensors", negative_prompt="ignored", cfg=1.0, width=1024,
                    height=1024))
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "FluxGuidance", "ConditioningZeroOut",
                              "EmptySD3LatentImage", "KSampler", "VAEDecode", "SaveImage"]
    assert nodes_of(graph, "FluxGuidance")[0]["inputs"]["guidance"] == 3.5
    sampler = nodes_of(graph, "KSampler")[0]["inputs"]
    assert sampler["positive"] == ["3", 0] and sampler["negative"] == ["4", 0]


def test_flux_guidance_and_the_family_can_be_chosen() -> None:
    graph = built(p(family="flux", guidance=2.0, cfg=1.0))
    assert nodes_of(graph, "FluxGuidance")[0]["inputs"]["guidance"] == 2.0
    plain = built(p(checkpoint="flux1-dev-fp8.safetensors", family="sd15"))
    assert "FluxGuidance" not in classes(plain) and len(nodes_of(plain, "CLIPTextEncode")) == 2


def test_flux_with_a_real_cfg_encodes_the_negative_prompt() -> None:
    graph = built(p(family="flux", cfg=3.0, negative_prompt="blurry"))
    assert [n["inputs"]["text"] for n in nodes_of(graph, "CLIPTextEncode")] == ["a red fox in the snow", "blurry"]
    assert "ConditioningZeroOut" not in classes(graph)


def test_an_unknown_family_is_refused_with_the_choices() -> None:
    with pytest.raises(WorkflowError, match="sd15, sdxl, flux") as caught:
        p(family="sd3").check(Limits())
    assert caught.value.field == "family"


# ------------------------------------------------------------------------------- everything, validated


@pytest.mark.parametrize("changes", [
    {"loras": [{"name": "detail-tweaker"}], "vae": "sdxl_vae.safetensors", "hires": {"scale": 2}},
    {"family": "flux", "cfg": 1.0, "loras": [{"name": "film_grain"}], "hires": {"scale": 1.5, "upscaler":
                                                                                 "RealESRGAN_x2.pth"}},
    {"init_image": "i.png", "mask": "m.png", "vae": "sdxl_vae.safetensors", "loras": [{"name": "film_grain"}]},
    {"init_image": "i.png", "outpaint": {"bottom": 256}, "family": "sdxl", "batch_size": 2},
])
def test_every_combination_passes_comfyuis_validation(changes: dict[str, Any]) -> None:
    graph = built(p(**changes))
    validate(graph, INFO)  # the worker's own check, once the images are uploaded
    assert all(node["class_type"] in INFO for node in graph.values())


def test_the_studios_params_round_trip_through_a_job_record() -> None:
    params = p(loras=[{"name": "a", "strength": 0.5, "strength_clip": None}], hires={"scale": 2.0}, styles=["Anime"],
               family="sdxl", guidance=None)
    assert GenerationParams.from_dict(params.to_dict()) == params


def test_toolbox_fields_at_their_defaults_leave_the_record_as_before() -> None:
    record = p().to_dict()
    assert set(record) == {"prompt", "negative_prompt", "checkpoint", "sampler", "scheduler", "steps", "cfg", "seed",
                           "width", "height", "batch_size", "denoise", "init_image"}
    assert dataclasses.replace(p(), mask_blur=5).to_dict()["mask_blur"] == 5
