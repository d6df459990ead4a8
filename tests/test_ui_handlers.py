"""The page's handlers called as plain functions on a studio with the fake ComfyUI (no browser)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from comfy import JobState, Studio
from comfy.graph import pngmeta
from comfy.graph.pnginfo import parse_a1111, read_png_info
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import COMFY, image
from tests.toolbox_support import inputs_of
from ui import render
from ui.handlers import FORM_FIELDS, Handlers

FORM = {"prompt": "a lighthouse", "negative_prompt": "", "checkpoint": "random-sd15.safetensors", "sampler": "euler",
        "scheduler": "normal", "steps": 3, "cfg": 7.0, "seed": 42, "width": 64, "height": 64, "batch_size": 1,
        "batch_count": 2, "denoise": 0.6}


def request(user: str | None = None, session: str = "s1") -> SimpleNamespace:
    return SimpleNamespace(username=user, session_hash=session)


def form(**changes: object) -> list[object]:
    values = {**FORM, **changes}
    return [values[name] for name in FORM_FIELDS]


async def drain_watch(handlers: Handlers, req) -> list[tuple]:
    return [update async for update in handlers.watch(req)]


async def test_generate_then_watch_streams_to_the_end(studio: Studio) -> None:
    h = Handlers(studio)
    req = request()
    watched, seed = await h.generate("txt2img", None, *form(), request=req)
    assert len(watched) == 2 and seed == 42
    updates = await drain_watch(h, req)
    html, preview, gallery = updates[-1]
    assert html.count('data-state="succeeded"') == 2 and "done" in html
    assert len(gallery) == 2 and all(Path(path).is_file() for path, _ in gallery)
    assert preview == gallery[0][0]  # the newest image replaces the latent preview
    assert any("step" in u[0] for u in updates[:-1]) or len(updates) > 1


@pytest.mark.parametrize(("changes", "words"), [
    ({"sampler": "nope"}, "sampler 'nope' is not available"),
    ({"prompt": ""}, "The prompt is empty"),
    ({"width": 100}, "multiple of 8"),
])
async def test_bad_input_becomes_a_readable_gr_error(studio: Studio, changes, words) -> None:
    h = Handlers(studio)
    with pytest.raises(gr.Error) as info:
        await h.generate("txt2img", None, *form(**changes), request=request())
    assert words in info.value.message and "Traceback" not in info.value.message
    assert (await studio.jobs()).jobs == []


async def test_img2img_needs_an_image_and_uses_it(studio: Studio, tmp_path: Path) -> None:
    h = Handlers(studio)
    with pytest.raises(gr.Error, match="needs an image"):
        await h.generate("img2img", None, *form(), request=request())
    path = tmp_path / "in.png"
    path.write_bytes(image("protocol-test-input.png"))
    watched, _ = await h.generate("img2img", str(path), *form(batch_count=1, denoise=0.45), request=request())
    job = await studio.wait(watched[0], timeout=30)
    assert job.state is JobState.SUCCEEDED and job.params["denoise"] == 0.45 and job.params["init_image"]


async def test_stop_cancels_this_pages_jobs(studio: Studio, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    h = Handlers(studio)
    req = request()
    watched, _ = await h.generate("txt2img", None, *form(batch_count=3), request=req)
    await h.stop(req)
    fake_comfy.hold = False
    states = [(await studio.wait(job_id, timeout=30)).state for job_id in watched]
    assert states == [JobState.CANCELLED] * 3


async def test_history_detail_and_reuse(studio: Studio) -> None:
    h = Handlers(studio)
    req = request()
    watched, _ = await h.generate("txt2img", None, *form(batch_count=1), request=req)
    await studio.wait(watched[0], timeout=30)
    rows, thumbs, next_cursor, ids = await h.history("all", None, req)
    assert rows[0][0] == watched[0][:8] and ids == watched  # the table shows short ids, the page keeps the full
    assert rows[0][1] == "succeeded" and len(thumbs) == 1 and next_cursor is None
    summary, text, settings, images, cancel, front = await h.job_detail(watched[0], req)
    images = images["value"]
    assert "succeeded" in summary and settings["seed"] == 42 and len(images) == 1
    assert "Steps: 3, Sampler: euler, Schedule type: normal, CFG scale: 7, Seed: 42, Size: 64x64, Model: " in text
    assert images[0][1] == "seed 42 · 1 of 1"
    assert cancel["visible"] is False and front["visible"] is False  # a finished job: neither applies
    assert (await h.job_detail(watched[0][:8], req))[0] == summary  # the short id names it as well
    unknown = await h.job_detail("0123456789abcdef", req)
    assert "No job with id" in unknown[0] and unknown[1:4] == ("", {}, [])  # cleared, not the last one
    updates = await h.reuse_settings(watched[0], req)
    assert updates[FORM_FIELDS.index("prompt")]["value"] == "a lighthouse"
    assert (await h.send_to_img2img(watched[0], req)).endswith(".png")
    assert (await h.history("failed", None, req))[0] == []


async def test_with_logins_users_see_only_their_jobs(studio: Studio) -> None:
    h = Handlers(studio, auth_on=True)
    ann, bob = request("ann", "a"), request("bob", "b")
    watched, _ = await h.generate("txt2img", None, *form(batch_count=1), request=ann)
    assert (await h.history("all", None, bob))[0] == []
    assert (await h.history("all", None, ann))[0][0][0] == watched[0][:8]
    with pytest.raises(gr.Error, match="No job with id"):
        await h.cancel_job(watched[0], bob)


async def test_with_logins_a_job_id_alone_gives_no_one_else_s_job(studio: Studio, fake_comfy: FakeComfy) -> None:
    """Bob knows Ann's job id and even her page's session hash: he can neither follow nor stop her job."""
    fake_comfy.hold = True
    h = Handlers(studio, auth_on=True)
    ann, bob = request("ann", "shared-hash"), request("bob", "shared-hash")
    watched, _ = await h.generate("txt2img", None, *form(batch_count=1), request=ann)
    assert await h.restore_jobs(watched, bob) == []  # a reload with her ids in his browser storage
    assert h.watched(ann) == watched  # and her page still follows them
    first = await anext(aiter(h.watch(bob)))
    assert watched[0] not in first[0]
    await h.stop(bob)
    assert "No job with id" in (await h.job_detail(watched[0], bob))[0]
    for call in (h.cancel_job, h.move_to_front, h.reuse_settings, h.send_to_img2img):
        with pytest.raises(gr.Error, match="No job with id"):
            answer = call(watched[0], bob)
            if inspect.isawaitable(answer):  # some handlers are coroutines (reuse_settings reads the server)
                await answer
    with pytest.raises(gr.Error, match="No job with id"):
        await h.api_cancel(watched[0], bob)
    with pytest.raises(gr.Error, match="No job with id"):
        await anext(aiter(h.api_job_status(watched[0], bob)))
    untouched = await studio.job(watched[0])  # queued, or taken by the worker meanwhile: never cancelled
    assert not untouched.state.is_final and not untouched.cancel_requested
    assert await h.restore_jobs(watched, ann) == watched
    fake_comfy.hold = False
    assert (await studio.wait(watched[0], timeout=30)).state is JobState.SUCCEEDED


async def test_with_logins_saved_workflows_are_each_user_s_own(studio: Studio) -> None:
    h = Handlers(studio, auth_on=True)
    ann, bob = request("ann"), request("bob")
    shared = await h.load_workflow(str(COMFY / "workflows" / "txt2img_api.json"), None, None, request())
    studio.library.save("house style", shared["graph"])  # saved before logins were turned on
    mine = {**shared, "graph": {**shared["graph"], "6": {**shared["graph"]["6"], "inputs": {
        **shared["graph"]["6"]["inputs"], "text": "ann's prompt"}}}}
    h.save_workflow(mine, "portrait", ann)
    h.save_workflow(shared, "portrait", bob)  # the same name: his own, not over hers
    h.save_workflow(shared, "house style", bob)
    assert (await h.load_workflow(None, None, "portrait", ann))["graph"]["6"]["inputs"]["text"] == "ann's prompt"
    assert (await h.load_workflow(None, None, "portrait", bob))["graph"] == shared["graph"]
    assert studio.library.load("house style") == shared["graph"]
    assert h.saved_workflows(ann)["choices"] == ["house style", "portrait"]
    assert studio.library.names() == ["house style"]


def test_png_info_reads_all_three_kinds(tmp_path: Path) -> None:
    h = Handlers.__new__(Handlers)
    ours = pngmeta.add_text_chunks(image("txt2img_output.png"), {
        "comfyui_studio": json.dumps({"params": {"prompt": "ours", "seed": 7, "steps": 3}})})
    a1111 = pngmeta.add_text_chunks(image("protocol-test-input.png"), {
        "parameters": "a castle\nNegative prompt: fog\nSteps: 30, Sampler: Euler a, CFG scale: 5.5, Seed: 9, Size: 768x512, "
                      "Model: sd_xl_base_1.0"})
    for name, data, expected in [("ours", ours, {"prompt": "ours", "seed": 7}),
                                 ("a1111", a1111, {"prompt": "a castle", "sampler": "euler_ancestral", "width": 768}),
                                 ("comfy", image("txt2img_output.png"), {"seed": 42, "steps": 3})]:
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        source, params, texts = h.png_info(str(path))
        assert expected.items() <= params.items(), (name, params)
        assert texts
    path = tmp_path / "plain.png"
    path.write_bytes(image("protocol-test-input.png"))
    assert "nothing" in h.png_info(str(path))[0]
    not_png = tmp_path / "x.png"
    not_png.write_bytes(b"GIF89a")
    # A warning toast and a line that says so: a raised error would mark the outputs with a red "Error".
    source, params, texts = h.png_info(str(not_png))
    assert "not a PNG" in source and params == {} and texts == {}


def test_a1111_parameters_round_trip_through_our_writer() -> None:
    params = {"prompt": "a cat, masterpiece", "negative_prompt": "dog", "steps": 25, "sampler": "dpmpp_2m",
              "scheduler": "karras", "cfg": 6.5, "seed": 123, "width": 640, "height": 448,
              "checkpoint": "model.safetensors"}
    assert parse_a1111(pngmeta.a1111_parameters(params)) == params
    info = read_png_info(pngmeta.add_text_chunks(image("txt2img_output.png"),
                                                 {"parameters": pngmeta.a1111_parameters(params)}))
    assert info.source == "a1111" and info.generation_params().seed == 123


async def test_workflow_load_discover_and_run(studio: Studio, fake_comfy: FakeComfy) -> None:
    h = Handlers(studio)
    loaded = await h.load_workflow(str(COMFY / "workflows" / "txt2img_api.json"), None, None)
    kinds = {(i["node_id"], i["input_name"]): i["kind"] for i in loaded["inputs"]}
    assert kinds[("3", "sampler_name")] == "combo" and kinds[("3", "steps")] == "int"
    values = [("a fox in snow" if (i["node_id"], i["input_name"]) == ("6", "text") else i["value"])
              for i in loaded["inputs"]]
    watched = await h.run_workflow(loaded, values, request())
    job = await studio.wait(watched[-1], timeout=30)
    assert job.state is JobState.SUCCEEDED
    assert inputs_of(fake_comfy.prompts[-1]["prompt"], "CLIPTextEncode")["text"] == "a fox in snow"
    steps = next(i for i, spec in enumerate(loaded["inputs"]) if (spec["node_id"], spec["input_name"]) == ("3", "steps"))
    label = loaded["inputs"][steps]["label"]
    for wrong, said in ((100000, "it must be between"), (20.5, "must be a whole number"), ("x", "whole number")):
        bad = [wrong if i == steps else v for i, v in enumerate(values)]
        with pytest.raises(gr.Error) as refused:
            await h.run_workflow(loaded, bad, request())
        assert label in refused.value.message and said in refused.value.message, refused.value.message
    h.save_workflow(loaded, "my txt2img")
    assert studio.library.names() == ["my txt2img"]
    again = await h.load_workflow(None, None, "my txt2img")
    assert again["graph"] == loaded["graph"]
    with pytest.raises(gr.Error, match="API format|Export \\(API\\)"):
        await h.load_workflow(None, json.dumps({"nodes": [], "links": []}), None)


async def test_status_header_shows_each_backend_of_a_pool(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    from tests.conftest import make_settings

    gone = FakeComfy().start()
    gone.stop()  # a port nothing answers on: a pod that is down
    async with Studio(make_settings(tmp_path, f"{fake_comfy.url},{gone.url}", failover_seconds=1.0)) as studio:
        header = await Handlers(studio).status()
    assert "1 of 2 backends up" in header and "Studio queue: idle" in header
    up, down = header.split('<li class="up">')[1], header.split('<li class="down">')[1]
    assert fake_comfy.url in up and "ComfyUI queue: 0" in up and "ours 0/" in up
    assert gone.url in down and "Cannot reach the ComfyUI server" in down


def test_status_header_for_one_backend_and_for_runpod() -> None:
    from comfy.service import BackendStatus

    pod = BackendStatus("https://abc-8188.proxy.runpod.net", True, gpu="cuda:0 NVIDIA RTX 4090", vram_total=24 * 1024**3,
                        vram_free=20 * 1024**3, queue_remaining=2, comfyui_version="0.8.2")
    one = render.status_html([pod], {JobState.QUEUED: 3, JobState.RUNNING: 1, JobState.SUCCEEDED: 9})
    assert "<b>Connected</b>" in one and "NVIDIA RTX 4090 · 24.0 GB VRAM (20.0 GB free)" in one
    assert "ComfyUI queue: 2" in one and "Studio queue: 3 queued, 1 running" in one
    down = render.status_html([BackendStatus(pod.url, False, error="Cannot reach it <refused>.")], {})
    assert "Backend unreachable" in down and "&lt;refused&gt;" in down and "Jobs wait" in down
    serverless = BackendStatus("https://api.runpod.ai/v2/ep1", True, kind="runpod", workers_idle=1, workers_running=2,
                               jobs_in_queue=5, in_flight=4, max_in_flight=4)
    both = render.status_html([BackendStatus(pod.url, False, error="timed out", down_for_s=42.0), serverless], {})
    assert "1 of 2 backends up" in both and "down 42 s" in both
    assert "RunPod Serverless · 2 GPU workers busy, 1 idle · 5 waiting there · ours 4/4" in both
