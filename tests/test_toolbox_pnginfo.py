"""The PNG records the toolbox: A1111's ``parameters`` text carries LoRAs, hires, styles and maps back to the fields."""

from __future__ import annotations

import io
import json

from PIL import Image

from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.graph.pnginfo import parse_a1111, read_png_info
from comfy.graph.recipe import prepare
from tests.toolbox_support import toolbox_info


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(out, "PNG")
    return out.getvalue()


def test_the_toolbox_fields_round_trip_through_the_a1111_text() -> None:
    params = GenerationParams(
        prompt="a lighthouse, dusk", negative_prompt="blurry", seed=1234, steps=28, cfg=6.5, sampler="dpmpp_2m",
        scheduler="karras", width=832, height=1216, checkpoint="sd_xl_base_1.0.safetensors",
        loras=[{"name": "styles/ink-wash", "strength": 0.6, "strength_clip": None},
               {"name": "detail-tweaker", "strength": 1.0, "strength_clip": 0.5}],
        hires={"scale": 1.5, "denoise": 0.35, "steps": 12, "upscaler": "4x-UltraSharp.pth"},
        styles=["Cinematic", "Enhance"], vae="sdxl_vae.safetensors")
    text = pngmeta.a1111_parameters(params.to_dict())
    assert text.splitlines()[0] == "a lighthouse, dusk <lora:styles/ink-wash:0.6> <lora:detail-tweaker:0.5:1>"
    settings = text.splitlines()[-1]
    for part in ("Denoising strength: 0.35", "Hires upscale: 1.5", "Hires steps: 12",
                 "Hires upscaler: 4x-UltraSharp.pth", 'Style: "Cinematic, Enhance"', "VAE: sdxl_vae.safetensors"):
        assert part in settings
    back = GenerationParams.from_dict(parse_a1111(text))
    assert back == params


def test_a_latent_hires_and_an_inpaint_round_trip() -> None:
    params = GenerationParams(prompt="x", seed=5, hires={"scale": 2.0, "denoise": 0.5, "steps": None,
                                                          "upscaler": "latent"})
    assert "Hires upscaler: Latent" in pngmeta.a1111_parameters(params.to_dict())
    assert GenerationParams.from_dict(parse_a1111(pngmeta.a1111_parameters(params.to_dict()))) == params
    inpaint = GenerationParams(prompt="a hat", seed=5, denoise=0.6, init_image="i.png", mask="m.png", mask_blur=8,
                               inpaint_full_res=True, inpaint_padding=48)
    parsed = parse_a1111(pngmeta.a1111_parameters(inpaint.to_dict()))
    assert (parsed["denoise"], parsed["mask_blur"], parsed["inpaint_full_res"], parsed["inpaint_padding"]) == (
        0.6, 8, True, 48)


def test_an_automatic1111_hires_text_maps_to_the_fields() -> None:
    text = ("masterpiece, a knight <lora:add_detail:0.7>, castle\nNegative prompt: lowres\n"
            "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x768, Model hash: 6ce0161689, "
            "Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, "
            "Denoising strength: 0.45, Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+, "
            'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4')
    params = parse_a1111(text)
    assert params["prompt"] == "masterpiece, a knight, castle"
    assert params["loras"] == [{"name": "add_detail", "strength": 0.7, "strength_clip": None}]
    assert params["hires"] == {"scale": 2.0, "denoise": 0.45, "steps": 15, "upscaler": "R-ESRGAN 4x+"}
    assert "denoise" not in params  # A1111's "Denoising strength" is the hires pass's here
    assert params["vae"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert (params["sampler"], params["scheduler"]) == ("dpmpp_2m", "karras")


def test_forge_flux_guidance_and_the_styles_array_are_read() -> None:
    params = parse_a1111('a fox\nSteps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 1, '
                         'Styles array: "[\\"Anime\\", \\"Pixel art\\"]"')  # A1111 quotes a value with commas
    assert params["guidance"] == 3.5 and params["styles"] == ["Anime", "Pixel art"]


def test_a_text_without_toolbox_fields_parses_as_before() -> None:
    assert parse_a1111("a cat\nSteps: 20, Seed: 5, Size: 512x768") == {
        "prompt": "a cat", "steps": 20, "seed": 5, "width": 512, "height": 768}


def test_the_studio_chunk_records_what_ran_and_use_these_settings_gives_the_same_image() -> None:
    asked = GenerationParams(prompt="a {red|blue} __color__ fox <lora:film_grain:0.4>", seed=31, styles=["Anime"],
                             checkpoint="random-sd15.safetensors", init_image="in.png", mask="m.png", denoise=0.7)
    ready = prepare(asked, toolbox_info())
    cell = {"index": 2, "cells": 4, "position": [0, 1, 0], "axes": {"x": {"param": "cfg", "value": 7.0}}}
    ready = prepare(asked, toolbox_info(), grid_cell=cell)
    metadata = {"params": asked.to_dict(), "toolbox": ready.record()}
    png = pngmeta.add_text_chunks(tiny_png(), {
        pngmeta.METADATA_KEY: json.dumps(metadata), "parameters": pngmeta.a1111_parameters(asked.to_dict())})
    info = read_png_info(png)
    assert info.source == "comfyui_studio"
    record = json.loads(info.texts[pngmeta.METADATA_KEY])["toolbox"]
    assert record["prompt_ran"].startswith("anime artwork of a ") and "__" not in record["prompt_ran"]
    assert record["loras"] == [{"name": "film_grain.pt", "strength": 0.4, "strength_clip": None}]
    assert record["styles"] == ["Anime"] and record["grid"] == cell and record["mask"]["blur"] == 4
    again = info.generation_params()
    assert again is not None and again.mask is None and again.init_image is None  # the uploads are not in the PNG
    rerun = prepare(again.__class__(**{**again.to_dict(), "init_image": "in.png", "mask": "m.png"}), toolbox_info())
    assert rerun.params.prompt == ready.params.prompt  # the same draw from the same seed
