"""The toolbox end to end: Studio → queue → worker → the fake ComfyUI (which validates every graph against
object_info, here one listing LoRAs, VAEs and upscale models) → a PNG recording the feature."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy.errors import GridNotFound, PromptRejected, WorkflowError
from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.jobs.records import Job, JobState
from comfy.service import Studio
from comfy.storage.local import METADATA_KEY
from tests.fakes.comfyui import FakeComfy
from tests.toolbox_support import LORAS, UPSCALERS, VAES, classes, inputs_of, png_bytes
from tests.toolbox_support import toolbox_comfy as toolbox_fake

BASE = {"prompt": "a lighthouse at dawn", "steps": 2, "seed": 42, "width": 64, "height": 64}


@pytest.fixture
def toolbox_comfy(tmp_path: Path) -> Iterator[FakeComfy]:
    with toolbox_fake(tmp_path) as server:
        yield server


@pytest.fixture
def fake_comfy(toolbox_comfy: FakeComfy) -> FakeComfy:
    return toolbox_comfy  # conftest's settings and studio fixtures run on this one


png = png_bytes


def mask_png(width: int, height: int, box: tuple[int, int, int, int]) -> bytes:
    return png(width, height, (0, 0, 0), box)


async def run(studio: Studio, params: dict[str, Any], **kwargs: Any) -> tuple[Job, dict[str, Any], dict[str, Any]]:
    """One job to its end: (the job, the graph ComfyUI ran, the studio's PNG metadata)."""
    [job] = await studio.submit({**BASE, **params}, **kwargs)
    done = await studio.wait(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED, done.error
    data = Path(done.outputs[0]["path"]).read_bytes()
    texts = pngmeta.read_text_chunks(data)
    return done, json.loads(texts["prompt"]), json.loads(texts[METADATA_KEY])


def size_of(job: Job) -> tuple[int, int]:
    return Image.open(job.outputs[0]["path"]).size


async def test_loras_and_a_vae_run_and_are_recorded(studio: Studio) -> None:
    done, graph, meta = await run(studio, {"prompt": "a lighthouse <lora:ink-wash:0.5>", "vae": VAES[0],
                                           "loras": [{"name": "detail-tweaker", "strength": 0.7}]})
    assert classes(graph) == ["CheckpointLoaderSimple", "LoraLoader", "LoraLoader", "VAELoader", "CLIPTextEncode",
                              "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"]
    assert [inputs_of(graph, "LoraLoader", i)["lora_name"] for i in (0, 1)] == [LORAS[0], LORAS[1]]
    assert inputs_of(graph, "CLIPTextEncode")["text"] == "a lighthouse"  # the tag is taken out of the text
    assert meta["toolbox"]["loras"] == [{"name": LORAS[0], "strength": 0.7, "strength_clip": None},
                                        {"name": LORAS[1], "strength": 0.5, "strength_clip": None}]
    assert meta["toolbox"]["vae"] == VAES[0]
    assert meta["params"]["loras"] == [{"name": "detail-tweaker", "strength": 0.7}]  # the artist's own
    parameters = pngmeta.read_text_chunks(Path(done.outputs[0]["path"]).read_bytes())["parameters"]
    assert "<lora:detail-tweaker:0.7>" in parameters and f"VAE: {VAES[0]}" in parameters


async def test_hires_fix_doubles_the_size(studio: Studio) -> None:
    done, graph, meta = await run(studio, {"hires": {"scale": 2, "denoise": 0.4}})
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "LatentUpscale", "KSampler", "VAEDecode", "SaveImage"]
    assert size_of(done) == (128, 128)
    assert meta["toolbox"]["hires"] == {"scale": 2.0, "denoise": 0.4, "steps": None, "upscaler": "latent",
                                        "size": [128, 128]}


async def test_hires_fix_with_an_upscale_model(studio: Studio) -> None:
    done, graph, meta = await run(studio, {"hires": {"scale": 1.5, "upscaler": UPSCALERS[0], "steps": 3}})
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage",
                              "KSampler", "VAEDecode", "UpscaleModelLoader", "ImageUpscaleWithModel", "ImageScale",
                              "VAEEncode", "KSampler", "VAEDecode", "SaveImage"]
    assert size_of(done) == (96, 96) and meta["toolbox"]["hires"]["upscaler"] == UPSCALERS[0]


async def test_inpainting_uploads_the_mask_as_a_second_image(studio: Studio, toolbox_comfy: FakeComfy) -> None:
    image, mask = png(96, 64), mask_png(96, 64, (8, 8, 40, 40))
    done, graph, meta = await run(studio, {"denoise": 0.8, "mask_blur": 2}, image=image, mask=mask)
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "LoadImage",
                              "LoadImageMask", "MaskToImage", "ImageBlur", "ImageToMask", "VAEEncode",
                              "SetLatentNoiseMask", "KSampler", "VAEDecode", "ImageCompositeMasked", "SaveImage"]
    loaded, masked = inputs_of(graph, "LoadImage")["image"], inputs_of(graph, "LoadImageMask")["image"]
    assert loaded.startswith("studio_") and masked.startswith("studio_") and loaded != masked
    assert size_of(done) == (96, 64)
    assert meta["toolbox"]["mask"] == {"blur": 2, "grow": 0, "only_masked": False, "padding": 32}
    assert "Mask blur: 2" in pngmeta.read_text_chunks(Path(done.outputs[0]["path"]).read_bytes())["parameters"]


async def test_inpainting_only_the_masked_area_at_full_resolution(studio: Studio) -> None:
    image, mask = png(128, 128), mask_png(128, 128, (40, 40, 72, 72))
    done, graph, meta = await run(studio, {"inpaint_full_res": True, "inpaint_padding": 8, "mask_grow": 4,
                                           "width": 128, "height": 128}, image=image, mask=mask)
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "LoadImage",
                              "LoadImageMask", "GrowMask", "MaskToImage", "ImageBlur", "ImageToMask", "ImageCrop",
                              "ImageScale", "CropMask", "MaskToImage", "ImageScale", "ImageToMask",
                              "VAEEncodeForInpaint", "KSampler", "VAEDecode", "ImageScale", "ImageCompositeMasked",
                              "SaveImage"]
    assert size_of(done) == (128, 128)
    assert meta["toolbox"]["mask"]["only_masked"] is True and meta["toolbox"]["mask"]["region"]


async def test_outpainting_grows_the_canvas(studio: Studio) -> None:
    done, graph, meta = await run(studio, {"outpaint": {"left": 16, "right": 8, "top": 0, "bottom": 24}},
                                  image=png(64, 64))
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "LoadImage",
                              "ImagePadForOutpaint", "VAEEncodeForInpaint", "KSampler", "VAEDecode", "SaveImage"]
    assert size_of(done) == (88, 88)
    assert meta["toolbox"]["outpaint"] == {"left": 16, "top": 0, "right": 8, "bottom": 24}


async def test_styles_and_wildcards_run_as_recorded_and_a_retry_draws_the_same(studio: Studio) -> None:
    params = {"prompt": "a {red|blue|green} fox in __season__", "styles": ["Cinematic"]}
    done, graph, meta = await run(studio, params)
    ran = inputs_of(graph, "CLIPTextEncode")["text"]
    assert ran.startswith("cinematic film still of a ") and "{" not in ran and "__" not in ran
    assert meta["toolbox"]["prompt_ran"] == ran and meta["toolbox"]["styles"] == ["Cinematic"]
    assert meta["params"]["prompt"] == params["prompt"]  # the job keeps the artist's own text
    again, graph_again, _ = await run(studio, meta["params"])  # "use these settings"
    assert inputs_of(graph_again, "CLIPTextEncode")["text"] == ran
    assert 'Style: Cinematic' in pngmeta.read_text_chunks(Path(done.outputs[0]["path"]).read_bytes())["parameters"]


async def test_a_user_style_from_an_a1111_styles_csv(studio: Studio) -> None:
    folder = studio.settings.data_dir / "styles"
    folder.mkdir(parents=True)
    (folder / "styles.csv").write_text('name,prompt,negative_prompt\n"Ink","ink drawing of {prompt}","color"\n')
    assert "Ink" in [s.name for s in studio.styles()] and "Cinematic" in [s.name for s in studio.styles()]
    _, graph, meta = await run(studio, {"styles": ["Ink"]})
    assert inputs_of(graph, "CLIPTextEncode")["text"] == "ink drawing of a lighthouse at dawn"
    assert inputs_of(graph, "CLIPTextEncode", 1)["text"] == "color" and meta["toolbox"]["styles"] == ["Ink"]


async def test_a_flux_checkpoint_gets_guidance_and_no_negative(studio: Studio) -> None:
    _, graph, meta = await run(studio, {"checkpoint": "flux1-dev-fp8.safetensors", "guidance": 3.0, "cfg": 1.0})
    assert classes(graph) == ["CheckpointLoaderSimple", "CLIPTextEncode", "FluxGuidance", "ConditioningZeroOut",
                              "EmptySD3LatentImage", "KSampler", "VAEDecode", "SaveImage"]
    assert inputs_of(graph, "FluxGuidance")["guidance"] == 3.0 and meta["toolbox"]["family"] == "flux"


async def test_the_family_can_be_overridden(studio: Studio) -> None:
    _, _, meta = await run(studio, {"checkpoint": "random-sd15.safetensors", "family": "sdxl"})
    assert meta["toolbox"]["family"] == "sdxl"


async def test_models_lists_loras_vaes_and_upscalers(studio: Studio) -> None:
    models = await studio.models()
    assert models.loras == LORAS and VAES[0] in models.vaes and models.upscale_models == UPSCALERS


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"loras": [{"name": "nope"}]}, "loras[0].name", LORAS[0]),
    ({"vae": "nope.safetensors"}, "vae", VAES[0]),
    ({"styles": ["Nope"]}, "styles", "Cinematic"),
    ({"hires": {"scale": 2, "upscaler": "nope.pth"}}, "hires.upscaler", UPSCALERS[0]),
])
async def test_unknown_names_are_refused_before_a_job_exists(studio: Studio, params: dict[str, Any], field: str,
                                                             words: str) -> None:
    with pytest.raises(WorkflowError) as refused:
        await studio.submit({**BASE, **params})
    assert refused.value.field == field and words in str(refused.value)
    assert (await studio.jobs()).jobs == []


async def test_bad_masks_and_outpaints_get_a_sentence(studio: Studio) -> None:
    with pytest.raises(WorkflowError, match="the init image is 64×64") as wrong_size:
        await studio.submit(BASE, image=png(64, 64), mask=mask_png(32, 32, (0, 0, 8, 8)))
    assert wrong_size.value.field == "mask"
    with pytest.raises(WorkflowError, match="init_image") as alone:
        await studio.submit(BASE, mask=mask_png(64, 64, (0, 0, 8, 8)))
    assert alone.value.field == "mask"
    with pytest.raises(WorkflowError, match="8") as odd:
        await studio.submit({**BASE, "outpaint": {"left": 12}}, image=png(64, 64))
    assert odd.value.field.startswith("outpaint")


async def test_the_fake_refuses_an_unknown_lora_as_comfyui_does(studio: Studio, toolbox_comfy: FakeComfy) -> None:
    from comfy.graph import build_graph

    graph = build_graph(GenerationParams(**{**BASE, "checkpoint": "random-sd15.safetensors",
                                            "loras": [{"name": "missing.safetensors"}]}))
    with pytest.raises(PromptRejected) as rejected:
        await studio.client.queue_prompt(graph, client_id="toolbox-test")
    captured = json.loads((Path(__file__).parent / "fixtures" / "comfyui" / "http" /
                           "post_prompt_400_bad_combo_value.json").read_text())["response"]["body"]
    body = rejected.value.body
    assert isinstance(body, dict) and body["error"] == captured["error"]  # ComfyUI's own envelope
    [errors] = [node["errors"] for node in body["node_errors"].values()]
    assert [e["type"] for e in errors] == [e["type"] for node in captured["node_errors"].values()
                                           for e in node["errors"]] == ["value_not_in_list"]
    assert body["node_errors"][next(iter(body["node_errors"]))]["class_type"] == "LoraLoader"
    assert "missing.safetensors" in str(rejected.value)


async def test_a_grid_runs_one_job_per_cell_and_composes_the_labelled_image(studio: Studio) -> None:
    record = await studio.submit_grid(BASE, {"x": {"param": "steps", "values": "1-2"},
                                             "y": {"param": "cfg", "values": [5, 7]}})
    assert len(record["job_ids"]) == 4 and record["plan"]["shape"] == [2, 2, 1]
    jobs = [await studio.wait(job_id, timeout=60) for job_id in record["job_ids"]]
    assert [inputs_of(json.loads(pngmeta.read_text_chunks(Path(j.outputs[0]["path"]).read_bytes())["prompt"]),
                      "KSampler")["steps"] for j in jobs] == [1, 2, 1, 2]
    cell = json.loads(pngmeta.read_text_chunks(Path(jobs[3].outputs[0]["path"]).read_bytes())[METADATA_KEY])
    assert cell["toolbox"]["grid"]["position"] == [1, 1, 0] and cell["toolbox"]["grid"]["grid_id"] == record["grid_id"]
    shown = await studio.grid(record["grid_id"])
    assert shown["status"] == "succeeded" and shown["image"]
    composed = Image.open(studio.grid_image_path(shown))
    assert composed.size[0] > 128 and composed.size[1] > 128
    with pytest.raises(WorkflowError, match="more than 64"):
        await studio.submit_grid(BASE, {"x": {"param": "steps", "values": "1-9"}, "y": {"param": "seed",
                                                                                       "values": "1-8"}})
    with pytest.raises(WorkflowError, match="not a plot parameter"):
        await studio.submit_grid(BASE, {"x": {"param": "colour", "values": [1, 2]}})


async def test_the_family_is_read_from_the_checkpoints_metadata(studio: Studio, toolbox_comfy: FakeComfy) -> None:
    from comfy.graph.families import detect_family

    captured = await studio.client.checkpoint_metadata("random-sd15.safetensors")  # the real server's answer
    assert isinstance(captured, dict) and detect_family("random-sd15.safetensors", captured) == "sd15"
    assert await studio.client.checkpoint_metadata("sd_xl_base_1.0.safetensors") is None  # 404: none kept
    await studio.client.object_info()
    for name in ("bogus-1.safetensors", "bogus-2.safetensors"):  # not the server's files: never asked, never kept
        assert await studio.client.checkpoint_metadata(name) is None
    assert not any(name.startswith("bogus") for name in studio.client._checkpoint_metadata)
    _, graph, meta = await run(studio, {"checkpoint": "sd_xl_base_1.0.safetensors"})  # then the name decides
    assert meta["toolbox"]["family"] == "sdxl"


async def test_a_toolbox_job_on_runpod_sends_the_mask_as_a_second_image(tmp_path: Path) -> None:
    from tests.conftest import running
    from tests.fakes.runpod_server import FakeRunPod
    from tests.test_runpod import runpod_settings

    with FakeRunPod(step_time=0.005) as endpoint:
        async with running(runpod_settings(tmp_path, endpoint)) as serverless:
            [job] = await serverless.submit({**BASE, "styles": ["Cinematic"], "vae": VAES[0]},
                                            image=png(64, 64), mask=mask_png(64, 64, (8, 8, 40, 40)))
            done = await serverless.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED, done.error
    [run] = endpoint.runs
    graph, names = run["input"]["workflow"], [i["name"] for i in run["input"]["images"]]
    assert len(names) == 2 and {inputs_of(graph, "LoadImage")["image"], inputs_of(graph, "LoadImageMask")["image"]} \
        == set(names)
    assert inputs_of(graph, "CLIPTextEncode")["text"].startswith("cinematic film still of a lighthouse")
    meta = json.loads(pngmeta.read_text_chunks(Path(done.outputs[0]["path"]).read_bytes())[METADATA_KEY])
    assert meta["toolbox"]["styles"] == ["Cinematic"] and meta["toolbox"]["mask"]["blur"] == 4
    assert meta["toolbox"]["vae"] == inputs_of(graph, "VAELoader")["vae_name"] == VAES[0]


async def test_a_grid_is_queued_whole_or_not_at_all(studio: Studio, monkeypatch: pytest.MonkeyPatch,
                                                    toolbox_comfy: FakeComfy) -> None:
    from comfy.errors import QueueError

    toolbox_comfy.hold = True  # a cell the worker already took waits on ComfyUI, and is stopped there

    async def broken(record: dict[str, Any]) -> None:
        raise QueueError("The job store is full.")

    monkeypatch.setattr(studio.store, "save_grid", broken)
    with pytest.raises(QueueError, match="full"):
        await studio.submit_grid(BASE, {"x": {"param": "steps", "values": "1-3"}})
    listed = [await studio.wait(job.id, timeout=30) for job in (await studio.store.list(limit=100)).jobs]
    assert len(listed) == 3 and all(job.state is JobState.CANCELLED for job in listed)  # no orphan cell runs
    toolbox_comfy.hold = False
    calls: list[int] = []
    real = studio.store.enqueue_many

    async def counted(requests: list[dict[str, Any]], **kwargs: Any) -> list[Job]:
        calls.append(len(requests))
        return await real(requests, **kwargs)

    monkeypatch.undo()  # save_grid works again; enqueue_many counted from here
    monkeypatch.setattr(studio.store, "enqueue_many", counted)
    record = await studio.submit_grid(BASE, {"x": {"param": "steps", "values": "1-3"}})
    assert calls == [3] and len(record["job_ids"]) == 3  # every cell in one transaction


async def test_a_bad_cell_refuses_the_whole_grid_naming_the_axis_and_value(studio: Studio) -> None:
    with pytest.raises(WorkflowError, match=r"grid.y \(width\) value 100: width must be a multiple of 8") as bad:
        await studio.submit_grid(BASE, {"x": {"param": "steps", "values": [1, 2]}, "y": {"param": "width",
                                                                                        "values": [64, 100]}})
    assert bad.value.field == "grid.y.values[1]"
    with pytest.raises(WorkflowError, match="hires.scale") as bad:  # a toolbox field's own bounds
        await studio.submit_grid(BASE, {"x": {"param": "hires.scale", "values": [2, 99]}})
    assert bad.value.field == "grid.x.values[1]"
    assert (await studio.store.list(limit=10)).jobs == []


async def test_a_grid_poll_reads_its_cells_in_one_batch_and_none_once_final(studio: Studio,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    record = await studio.submit_grid(BASE, {"x": {"param": "steps", "values": "1-3"}})
    for job_id in record["job_ids"]:
        await studio.wait(job_id, timeout=60)
    reads: list[str] = []
    real_get, real_many = studio.store.get, studio.store.get_many

    async def get(job_id: str) -> Job:
        reads.append("get")
        return await real_get(job_id)

    async def get_many(job_ids: list[str]) -> list[Job]:
        reads.append(f"many:{len(job_ids)}")
        return await real_many(job_ids)

    monkeypatch.setattr(studio.store, "get", get)
    monkeypatch.setattr(studio.store, "get_many", get_many)
    first = await studio.grid(record["grid_id"])
    assert first["status"] == "succeeded" and reads == ["many:3"]
    for _ in range(3):
        again = await studio.grid(record["grid_id"], with_jobs=False)
        assert again["status"] == "succeeded" and again["image"] == first["image"] and again["jobs"] is None
    assert reads == ["many:3"]  # ended and drawn: the record alone answers a poll
    assert len((await studio.grid(record["grid_id"]))["jobs"]) == 3 and reads == ["many:3", "many:3"]


async def test_cancel_grid_cancels_its_cells_and_reports_cancelled(studio: Studio, toolbox_comfy: FakeComfy) -> None:
    toolbox_comfy.hold = True
    record = await studio.submit_grid(BASE, {"x": {"param": "steps", "values": "1-3"}}, owner="key:ann")
    with pytest.raises(GridNotFound):
        await studio.cancel_grid(record["grid_id"], owner="key:bob", scoped=True)
    await studio.cancel_grid(record["grid_id"], owner="key:ann", scoped=True)
    jobs = [await studio.wait(job_id, timeout=30) for job_id in record["job_ids"]]
    assert all(job.state is JobState.CANCELLED for job in jobs)
    assert (await studio.grid(record["grid_id"]))["status"] == "cancelled"
