"""The Generate tab's toolbox at handler level, on the fake ComfyUI serving LoRAs, VAEs and upscale models:
ImageEditor layers → mask PNG, LoRA rows → ``loras``, plot axes → ``grid``, PNG info → form values."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from comfy import JobState, Studio
from comfy.graph import pngmeta
from comfy.storage.local import METADATA_KEY
from tests.fakes.comfyui import FakeComfy
from tests.toolbox_support import LORAS, UPSCALERS, VAES, classes, inputs_of, png_bytes
from tests.toolbox_support import toolbox_comfy as toolbox_fake
from ui.handlers import FORM_FIELDS, Handlers
from ui.toolbox import (INPAINT_FIELDS, LORA_ROWS, NO_VAE, PLOT_FIELDS, RESTORED_FIELDS, TOOLBOX_FIELDS, editor_mask,
                        lora_list, plot_grid, toolbox_params, toolbox_values)

FORM = {"prompt": "a lighthouse", "negative_prompt": "", "checkpoint": "random-sd15.safetensors", "sampler": "euler",
        "scheduler": "normal", "steps": 2, "cfg": 7.0, "seed": 42, "width": 64, "height": 64, "batch_size": 1,
        "batch_count": 1, "denoise": 0.8}
TOOLBOX = {**{f"lora_{i}": None for i in range(LORA_ROWS)}, **{f"lora_strength_{i}": 1.0 for i in range(LORA_ROWS)},
           "vae": NO_VAE, "family": "auto", "guidance": 3.5, "hires_on": False, "hires_scale": 2.0,
           "hires_denoise": 0.5, "hires_steps": 0, "hires_upscaler": "latent", "styles": []}
INPAINT = {"mask_editor": None, "mask_file": None, "mask_blur": 4, "mask_grow": 0, "inpaint_full_res": False,
           "inpaint_padding": 32, "outpaint_left": 0, "outpaint_top": 0, "outpaint_right": 0, "outpaint_bottom": 0}
PLOT = {"x_param": "", "x_values": "", "y_param": "", "y_values": "", "z_param": "", "z_values": "",
        "plot_confirmed": False}


@pytest.fixture
def fake_comfy(tmp_path: Path) -> Iterator[FakeComfy]:
    with toolbox_fake(tmp_path) as server:
        yield server


def request() -> SimpleNamespace:
    return SimpleNamespace(username=None, session_hash="s1")


def values(form: dict[str, Any] | None = None, toolbox: dict[str, Any] | None = None,
           inpaint: dict[str, Any] | None = None, plot: dict[str, Any] | None = None) -> list[Any]:
    """The handler's *values, in the page's order."""
    merged_form, merged_tb, merged_in = {**FORM, **(form or {})}, {**TOOLBOX, **(toolbox or {})}, {**INPAINT,
                                                                                                 **(inpaint or {})}
    out = [merged_form[n] for n in FORM_FIELDS] + [merged_tb[n] for n in TOOLBOX_FIELDS]
    out += [merged_in[n] for n in INPAINT_FIELDS]
    if plot is not None:
        out += [{**PLOT, **plot}[n] for n in PLOT_FIELDS]
    return out


def write_png(folder: Path, name: str, data: bytes) -> str:
    path = folder / name
    path.write_bytes(data)
    return str(path)


def stroke(width: int, height: int, box: tuple[int, int, int, int], color: Any = (255, 255, 255, 255)) -> Image.Image:
    """A brush layer as the ImageEditor sends it: transparent, painted inside ``box``."""
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    layer.paste(color, box)
    return layer


async def finished(studio: Studio, job_id: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    done = await studio.wait(job_id, timeout=60)
    assert done.state is JobState.SUCCEEDED, done.error
    texts = pngmeta.read_text_chunks(Path(done.outputs[0]["path"]).read_bytes())
    return done, json.loads(texts["prompt"]), json.loads(texts[METADATA_KEY])


# -- conversions ----------------------------------------------------------------------------------


def test_editor_layers_become_a_mask_the_size_of_the_image() -> None:
    background = Image.new("RGB", (96, 64), (90, 120, 200))
    layers = [stroke(96, 64, (8, 8, 24, 24)), np.array(stroke(96, 64, (50, 30, 60, 40), (255, 0, 0, 40)))]
    mask = Image.open(io.BytesIO(editor_mask({"background": background, "layers": layers, "composite": None})))
    assert mask.size == (96, 64) and mask.mode == "L"
    assert mask.getpixel((10, 10)) == 255 and mask.getpixel((55, 35)) == 255  # any paint, any colour, repaints
    assert mask.getpixel((40, 50)) == 0 and mask.getbbox() == (8, 8, 60, 40)
    # Nothing painted (no layer, or an empty one) is no mask: plain img2img.
    assert editor_mask({"background": background, "layers": []}) is None
    assert editor_mask({"background": background, "layers": [stroke(96, 64, (0, 0, 0, 0))]}) is None
    assert editor_mask(None) is None


def test_lora_rows_and_toolbox_fields_become_parameters() -> None:
    assert lora_list([LORAS[0], None, "", "ink-wash"], [0.7, 1.0, 0.3, None]) == [
        {"name": LORAS[0], "strength": 0.7}, {"name": "ink-wash", "strength": 1.0}]
    fields = {**TOOLBOX, "lora_0": LORAS[0], "lora_strength_0": 0.6, "vae": VAES[0], "family": "Flux",
              "guidance": 4.0, "hires_on": True, "hires_scale": 1.5, "hires_steps": 0, "styles": ["Cinematic"],
              **INPAINT, "outpaint_right": 64, "mask_blur": 6}
    assert toolbox_params(fields, img2img=True) == {
        "loras": [{"name": LORAS[0], "strength": 0.6}], "vae": VAES[0], "family": "flux", "guidance": 4.0,
        "hires": {"scale": 1.5, "denoise": 0.5, "steps": None, "upscaler": "latent"}, "styles": ["Cinematic"],
        "mask_blur": 6, "mask_grow": 0, "inpaint_padding": 32, "inpaint_full_res": False,
        "outpaint": {"left": 0, "top": 0, "right": 64, "bottom": 0}}
    # Text to image sends no mask settings or outpaint; guidance only for Flux.
    assert toolbox_params({**TOOLBOX, **INPAINT, "outpaint_left": 8}, img2img=False) == {}
    assert "guidance" in toolbox_params(TOOLBOX, img2img=False, checkpoint="flux1-dev-fp8.safetensors")


def test_plot_axes_become_the_engines_grid_and_bad_axes_get_a_sentence() -> None:
    assert plot_grid({**PLOT, "x_param": "steps", "x_values": "10-30 (+10)", "y_param": "prompt_sr",
                      "y_values": "dawn, dusk"}) == {"x": {"param": "steps", "values": "10-30 (+10)"},
                                                     "y": {"param": "prompt_sr", "values": "dawn, dusk"}}
    for plot, words in (({}, "Choose at least the X axis"),
                        ({"x_values": "1-5"}, "has values but no parameter"),
                        ({"x_param": "steps"}, "has no values"),
                        ({"x_param": "colour", "x_values": "1"}, "'colour' is not a plot parameter")):
        with pytest.raises(Exception, match=words):
            plot_grid({**PLOT, **plot})


def test_settings_come_back_into_the_toolbox_fields() -> None:
    params = {"loras": [{"name": "detail-tweaker", "strength": 0.7}, {"name": "gone", "strength": 0.2}],
              "vae": VAES[1], "family": "sdxl", "hires": {"scale": 2.0, "denoise": 0.3, "steps": 5,
                                                          "upscaler": UPSCALERS[0]},
              "styles": ["Cinematic", "Nope"], "mask_blur": 9, "inpaint_full_res": True,
              "outpaint": {"left": 8, "top": 0, "right": 0, "bottom": 16}}
    got, notes = toolbox_values(params, loras_offered=LORAS, styles_offered=["Cinematic", "Anime"])
    assert (got["lora_0"], got["lora_strength_0"], got["lora_1"], got["lora_strength_1"], got["lora_2"]) == (
        LORAS[0], 0.7, "gone", 0.2, None)
    assert (got["vae"], got["family"], got["hires_on"], got["hires_denoise"], got["hires_steps"],
            got["hires_upscaler"]) == (VAES[1], "SDXL", True, 0.3, 5, UPSCALERS[0])
    assert got["styles"] == ["Cinematic"] and got["mask_blur"] == 9 and got["inpaint_full_res"] is True
    assert (got["outpaint_left"], got["outpaint_bottom"]) == (8, 16)
    assert notes == ["the server has no LoRA 'gone'", "there is no style 'Nope'"]
    # A job without toolbox settings clears them all.
    cleared, _ = toolbox_values({"prompt": "x"})
    assert cleared["lora_0"] is None and cleared["vae"] == NO_VAE and cleared["hires_on"] is False
    assert set(cleared) >= set(RESTORED_FIELDS)


# -- the handlers on the fake ---------------------------------------------------------------------


async def test_a_brush_stroke_inpaints(studio: Studio, tmp_path: Path) -> None:
    h = Handlers(studio)
    image = write_png(tmp_path, "init.png", png_bytes(96, 64))
    editor = {"background": Image.open(image), "layers": [stroke(96, 64, (16, 16, 48, 48))], "composite": None}
    watched, _seed = await h.generate_toolbox(request(), "img2img", image,
                                              *values(inpaint={"mask_editor": editor, "mask_blur": 2}))
    done, graph, meta = await finished(studio, watched[-1])
    assert "SetLatentNoiseMask" in classes(graph) and "LoadImageMask" in classes(graph)
    assert meta["toolbox"]["mask"]["blur"] == 2 and done.params["mask"]
    kept = Image.open(studio.files.inputs_dir / done.params["mask"])
    assert kept.size == (96, 64) and kept.convert("L").getpixel((20, 20)) == 255


async def test_an_uploaded_mask_and_one_of_the_wrong_size(studio: Studio, tmp_path: Path) -> None:
    h = Handlers(studio)
    image = write_png(tmp_path, "init.png", png_bytes(96, 64))
    mask = write_png(tmp_path, "mask.png", png_bytes(96, 64, (0, 0, 0), (8, 8, 40, 40)))
    watched, _ = await h.generate_toolbox(request(), "img2img", image, *values(inpaint={"mask_file": mask}))
    _done, graph, _meta = await finished(studio, watched[-1])
    assert "LoadImageMask" in classes(graph)
    wrong = write_png(tmp_path, "wrong.png", png_bytes(64, 64, (0, 0, 0), (8, 8, 40, 40)))
    before = len((await studio.jobs(limit=50)).jobs)
    with pytest.raises(gr.Error, match="mask"):
        await h.generate_toolbox(request(), "img2img", image, *values(inpaint={"mask_file": wrong}))
    assert len((await studio.jobs(limit=50)).jobs) == before  # nothing queued


async def test_lora_rows_vae_and_hires_run(studio: Studio) -> None:
    h = Handlers(studio)
    watched, _ = await h.generate_toolbox(request(), "txt2img", None, *values(
        form={"prompt": "a lighthouse <lora:ink-wash:0.5>"},
        toolbox={"lora_0": LORAS[0], "lora_strength_0": 0.7, "vae": VAES[0], "hires_on": True, "hires_scale": 2.0,
                 "hires_denoise": 0.4}))
    done, graph, meta = await finished(studio, watched[-1])
    assert [inputs_of(graph, "LoraLoader", i)["lora_name"] for i in (0, 1)] == [LORAS[0], LORAS[1]]
    assert inputs_of(graph, "LoraLoader")["strength_model"] == 0.7
    assert "VAELoader" in classes(graph) and "LatentUpscale" in classes(graph)
    assert Image.open(done.outputs[0]["path"]).size == (128, 128)
    assert meta["toolbox"]["hires"]["denoise"] == 0.4


@pytest.mark.parametrize(("toolbox", "inpaint", "words"), [
    ({"lora_0": "nope.safetensors"}, {}, "detail-tweaker"),  # names the choices
    ({"vae": "nope.vae"}, {}, "vae"),
    ({"styles": ["Nope"]}, {}, "Nope"),
    ({}, {"outpaint_left": 12}, "multiples of 8"),
])
async def test_bad_toolbox_input_is_a_sentence_and_queues_nothing(studio: Studio, tmp_path: Path, toolbox, inpaint,
                                                                   words) -> None:
    h = Handlers(studio)
    image = write_png(tmp_path, "init.png", png_bytes(64, 64))
    with pytest.raises(gr.Error, match=words):
        await h.generate_toolbox(request(), "img2img", image, *values(toolbox=toolbox, inpaint=inpaint))
    assert (await studio.jobs(limit=5)).jobs == []


async def test_a_plot_fills_in_then_shows_the_labelled_grid(studio: Studio) -> None:
    h = Handlers(studio)
    watched, grid_id, _image, status = await h.run_plot(request(), "txt2img", None, *values(
        plot={"x_param": "steps", "x_values": "1-2", "y_param": "cfg", "y_values": "5, 7"}))
    assert len(watched) == 4 and "0 of 4" in status
    updates = [update async for update in h.watch_plot(grid_id, request())]
    pictures = [picture for picture, _ in updates if picture is not None]
    assert pictures and "4 of 4" in updates[-1][1] and "labelled grid" in updates[-1][1]
    final = Image.open(updates[-1][0])
    assert final.width > 128 and final.height > 128  # 2 × 2 cells of 64 plus the labels
    record = await studio.grid(grid_id)
    assert record["status"] == "succeeded" and record["plan"]["shape"] == [2, 2, 1]


@pytest.mark.parametrize(("plot", "words"), [
    ({"x_param": "steps", "x_values": "1-9", "y_param": "cfg", "y_values": "1-8"}, "more than 64: confirm"),
    ({"x_param": "steps", "x_values": ""}, "has no values"),
    ({"x_param": "bogus", "x_values": "1"}, "not a plot parameter"),
])
async def test_a_bad_plot_is_refused_with_a_sentence(studio: Studio, plot, words) -> None:
    h = Handlers(studio)
    with pytest.raises(gr.Error, match=words):
        await h.run_plot(request(), "txt2img", None, *values(plot=plot))
    assert (await studio.jobs(limit=5)).jobs == []


async def test_png_info_of_an_a1111_image_fills_the_toolbox(studio: Studio, tmp_path: Path) -> None:
    h = Handlers(studio)
    text = ("a lighthouse <lora:detail-tweaker:0.8>\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, "
            "CFG scale: 7, Seed: 5, Size: 512x512, Denoising strength: 0.35, Hires upscale: 2, "
            "Hires upscaler: Latent, Style: Cinematic")
    path = write_png(tmp_path, "a1111.png", pngmeta.add_text_chunks(png_bytes(64, 64), {"parameters": text}))
    _source, params, _texts = h.png_info(path)
    restored = dict(zip(RESTORED_FIELDS, await h.toolbox_from_png(params)))
    assert (restored["lora_0"], restored["lora_strength_0"]) == (LORAS[0], 0.8)
    assert restored["hires_on"] is True and restored["hires_scale"] == 2.0 and restored["hires_denoise"] == 0.35
    assert restored["styles"] == ["Cinematic"]
    updates = await h.toolbox_from_png(params)
    assert updates[len(RESTORED_FIELDS)] == [True] + [False] * (LORA_ROWS - 1)  # the rows shown


async def test_use_these_settings_brings_the_toolbox_back(studio: Studio) -> None:
    h = Handlers(studio)
    watched, _ = await h.generate_toolbox(request(), "txt2img", None, *values(toolbox={
        "lora_0": LORAS[2], "lora_strength_0": 0.4, "family": "SD1.5", "styles": ["Anime"], "hires_on": True,
        "hires_scale": 1.5, "hires_upscaler": UPSCALERS[1]}))
    await finished(studio, watched[-1])
    restored = dict(zip(RESTORED_FIELDS, await h.toolbox_from_job(watched[-1], request())))
    assert (restored["lora_0"], restored["lora_strength_0"], restored["family"]) == (LORAS[2], 0.4, "SD1.5")
    assert restored["styles"] == ["Anime"] and restored["hires_on"] and restored["hires_upscaler"] == UPSCALERS[1]


async def test_a_reload_restores_the_kept_toolbox(studio: Studio) -> None:
    h = Handlers(studio)
    kept = {"lora_0": LORAS[0], "lora_strength_0": 0.3, "styles": ["Anime", "Gone"], "hires_on": True, "junk": 1}
    updates = dict(zip(RESTORED_FIELDS, await h.restore_toolbox(kept)))
    assert updates["lora_0"] == LORAS[0] and updates["lora_strength_0"] == 0.3 and updates["hires_on"] is True
    assert updates["styles"] == ["Anime"]  # a style no longer offered is left out
    for empty in (None, {}):  # nothing kept: every field left as it is
        assert len(await h.restore_toolbox(empty)) == len(RESTORED_FIELDS) + 1 + LORA_ROWS
