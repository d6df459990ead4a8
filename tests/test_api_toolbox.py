"""The toolbox over REST: every field on POST /api/v1/jobs and /generate/, grids, styles, the models lists,
and a sentence naming the field for each bad input. On the fake ComfyUI with LoRAs, VAEs and upscale models."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.graph.plot import compose_grid, plan_grid
from comfy.storage.local import METADATA_KEY
from tests.api_support import ALPHA, BETA, SMALL, Api, error_of
from tests.fakes.comfyui import FakeComfy
from tests.toolbox_support import LORAS, UPSCALERS, VAES, classes, png_bytes, toolbox_comfy


@pytest.fixture
def fake_comfy(tmp_path: Path) -> Iterator[FakeComfy]:
    """The fake ComfyUI with model files listed (make_api and api use this one in this module)."""
    with toolbox_comfy(tmp_path) as server:
        yield server


def b64png(*args: Any) -> str:
    return base64.b64encode(png_bytes(*args)).decode()


async def job_done(api: Api, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            body = (await api.http.get(f"/api/v1/jobs/{job_id}")).json()
            if body["status"] in ("succeeded", "failed", "cancelled"):
                return body
            await asyncio.sleep(0.02)


async def metadata_of(api: Api, job: dict[str, Any]) -> dict[str, Any]:
    data = (await api.http.get(job["images"][0]["url"])).content
    return json.loads(pngmeta.read_text_chunks(data)[METADATA_KEY])


async def test_models_lists_loras_vaes_and_upscale_models(api: Api) -> None:
    body = (await api.http.get("/models")).json()
    assert body["loras"] == LORAS and VAES[0] in body["vaes"] and body["upscale_models"] == UPSCALERS


async def test_styles_are_listed(api: Api) -> None:
    styles = (await api.http.get("/api/v1/styles")).json()["styles"]
    cinematic = next(s for s in styles if s["name"] == "Cinematic")
    assert "{prompt}" in cinematic["prompt"] and set(cinematic) == {"name", "prompt", "negative_prompt"}


@pytest.mark.parametrize(("fields", "recorded"), [
    ({"loras": [{"name": "detail-tweaker", "strength": 0.6}]}, {"loras": [{"name": LORAS[0], "strength": 0.6,
                                                                            "strength_clip": None}]}),
    ({"vae": VAES[1]}, {"vae": VAES[1]}),
    ({"hires": {"scale": 1.5, "denoise": 0.3}}, {"hires": {"scale": 1.5, "denoise": 0.3, "steps": None,
                                                           "upscaler": "latent", "size": [96, 96]}}),
    ({"styles": ["Photographic"]}, {"styles": ["Photographic"]}),
    ({"family": "sdxl"}, {"family": "sdxl"}),
    ({"checkpoint": "flux1-dev-fp8.safetensors", "guidance": 2.5, "cfg_scale": 1.0}, {"family": "flux"}),
])
async def test_each_field_runs_and_is_recorded(api: Api, fields: dict[str, Any], recorded: dict[str, Any]) -> None:
    response = await api.http.post("/api/v1/jobs", json={**SMALL, **fields})
    assert response.status_code == 202, response.text
    job = await job_done(api, response.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    toolbox = (await metadata_of(api, job))["toolbox"]
    assert {k: toolbox[k] for k in recorded} == recorded


async def test_inpainting_and_outpainting_over_rest(api: Api, fake_comfy: FakeComfy) -> None:
    body = {**SMALL, "init_image": b64png(64, 64), "mask": b64png(64, 64, (0, 0, 0), (8, 8, 32, 32)),
            "mask_blur": 3, "mask_grow": 2, "inpaint_full_res": True, "inpaint_padding": 8}
    response = await api.http.post("/api/v1/generate/", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["mask"] is True  # not the kept copy's name
    ran = fake_comfy.prompts[-1]["prompt"]
    assert "LoadImageMask" in classes(ran) and "VAEEncodeForInpaint" in classes(ran)
    response = await api.http.post("/api/v1/jobs", json={**SMALL, "init_image": b64png(64, 64),
                                                         "outpaint": {"left": 8, "right": 8, "top": 16}})
    job = await job_done(api, response.json()["job_id"])
    assert (job["images"][0]["width"], job["images"][0]["height"]) == (80, 80)
    assert (await metadata_of(api, job))["toolbox"]["outpaint"] == {"left": 8, "top": 16, "right": 8, "bottom": 0}


@pytest.mark.parametrize(("fields", "status", "field", "words"), [
    ({"loras": [{"name": "nope"}]}, 400, "loras[0].name", LORAS[0]),
    ({"vae": "nope.safetensors"}, 400, "vae", VAES[0]),
    ({"styles": ["Nope"]}, 400, "styles", "Cinematic"),
    ({"hires": {"scale": 9}}, 400, "hires.scale", "4"),
    ({"init_image": b64png(64, 64), "mask": b64png(32, 32, (0, 0, 0), (0, 0, 8, 8))}, 400, "mask", "64×64"),
    ({"mask": b64png(64, 64, (0, 0, 0), (0, 0, 8, 8))}, 400, "mask", "init_image"),
    ({"init_image": b64png(64, 64), "outpaint": {"left": 12}}, 400, "outpaint.left", "8"),
    ({"grid": {"x": {"param": "steps", "values": "1-9"}, "y": {"param": "seed", "values": "1-8"}}}, 400, "grid",
     "more than 64"),
    ({"grid": {"x": {"param": "colour", "values": [1, 2]}}}, 400, "grid.x.param", "not a plot parameter"),
    ({"loras": [{"name": "x", "weight": 1}]}, 422, None, "weight"),
    ({"loras": [{"name": LORAS[0]}] * 33}, 400, "loras", "33 LoRAs is more than the 32"),
    ({"styles": ["Cinematic"] * 17}, 400, "styles", "17 styles is more than the 16"),
    ({"styles": ["Cinematic"] * 16, "prompt": "x" * 9_000}, 400, "styles", "use fewer styles"),
    ({"width": 1024, "height": 1024, "hires": {"scale": 4}}, 400, "hires.scale", "4096×4096 image; the most"),
    ({"init_image": b64png(64, 64), "outpaint": {"left": 4096}}, 400, "outpaint", "add fewer pixels"),
])
async def test_bad_input_gets_a_sentence_naming_the_field(api: Api, fields: dict[str, Any], status: int,
                                                          field: str | None, words: str) -> None:
    for path in ("/api/v1/jobs", "/api/v1/generate/"):
        response = await api.http.post(path, json={**SMALL, **fields})
        error = error_of(response)
        assert response.status_code == status, response.text
        assert words in json.dumps(error, ensure_ascii=False)
        if field is not None:
            assert error["field"] == field, error
    assert (await api.http.get("/api/v1/jobs")).json()["jobs"] == []


async def test_a_2x2_grid_over_rest(make_api) -> None:
    async with make_api(api_keys=f"{ALPHA},{BETA}") as api:
        alpha, beta = {"Authorization": f"Bearer {ALPHA}"}, {"Authorization": f"Bearer {BETA}"}
        grid = {"x": {"param": "steps", "values": "1-2"}, "y": {"param": "cfg", "values": [5, 7]}}
        response = await api.http.post("/api/v1/jobs", json={**SMALL, "grid": grid}, headers=alpha)
        assert response.status_code == 202, response.text
        body = response.json()
        assert set(body) == {"grid_id", "job_ids", "location"} and len(body["job_ids"]) == 4
        assert body["location"] == f"/api/v1/grids/{body['grid_id']}"
        assert (await api.http.get(body["location"], headers=beta)).status_code == 404  # not beta's
        async with asyncio.timeout(30):
            while (shown := (await api.http.get(body["location"], headers=alpha)).json())["image"] is None:
                assert shown["status"] in ("queued", "running"), shown
                await asyncio.sleep(0.05)
        assert shown["status"] == "succeeded" and shown["job_ids"] == body["job_ids"]
        picture = await api.http.get(shown["image"], headers=alpha)
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        cells = []
        for job_id in body["job_ids"]:
            job = (await api.http.get(f"/api/v1/jobs/{job_id}", headers=alpha)).json()
            cells.append((await api.http.get(job["images"][0]["url"], headers=alpha)).content)
        steps = [json.loads(pngmeta.read_text_chunks(c)[METADATA_KEY])["params"]["steps"] for c in cells]
        assert steps == [1, 2, 1, 2]  # row-major: x fastest
        params = GenerationParams(**SMALL)
        expected = compose_grid(cells, plan_grid(params, grid))
        assert Image.open(io.BytesIO(picture.content)).size == expected.size
        assert (await api.http.get(shown["image"], headers=beta)).status_code == 404
        path = Path(api.studio.grid_image_path(await api.studio.grid(body["grid_id"])))
        path.unlink()  # the file removed from the outputs by hand: a 404 that says so, not a 500
        gone = await api.http.get(shown["image"], headers=alpha)
        assert gone.status_code == 404 and "no longer in the outputs" in error_of(gone)["message"]


GRID = {"x": {"param": "steps", "values": "1-2"}}


async def jobs_total(api: Api, headers: dict[str, str]) -> int:
    return (await api.http.get("/api/v1/jobs", headers=headers)).json()["total"]


@pytest.mark.parametrize(("axis", "field", "match"), [
    ({"param": "steps", "values": [2, 10000]}, "grid.x.values[1]", "grid.x \\(steps\\) value 10000: .*steps"),
    ({"param": "width", "values": "64, 16384"}, "grid.x.values[1]", "value 16384: .*width"),
    ({"param": "width", "values": [100]}, "grid.x.values[0]", "value 100: width must be a multiple of 8"),
    ({"param": "prompt", "values": ["x" * 50_000]}, "grid.x.values[0]", "50000 characters.*prompt is 50000"),
    ({"param": "mask_blur", "values": [50]}, "grid.x.values[0]", "value 50: .*mask_blur"),
])
async def test_every_cell_passes_the_limits_before_anything_is_queued(make_api, axis: dict[str, Any], field: str,
                                                                      match: str) -> None:
    async with make_api(api_keys=ALPHA, run_worker=False) as api:
        alpha = {"Authorization": f"Bearer {ALPHA}"}
        answer = await api.http.post("/api/v1/jobs", json={**SMALL, "grid": {"x": axis}}, headers=alpha)
        error = error_of(answer)
        assert answer.status_code == 400 and error["field"] == field, error
        assert __import__("re").search(match, error["message"]), error["message"]
        assert await jobs_total(api, alpha) == 0  # the whole grid refused


async def test_a_confirmed_grid_past_the_hard_cap_is_refused(make_api) -> None:
    async with make_api(api_keys=ALPHA, run_worker=False) as api:
        alpha = {"Authorization": f"Bearer {ALPHA}"}
        grid = {"x": {"param": "seed", "values": "1-200"}, "y": {"param": "steps", "values": "1-2"}}
        answer = await api.http.post("/api/v1/jobs", json={**SMALL, "grid": grid, "grid_confirmed": True},
                                     headers=alpha)
        assert answer.status_code == 400 and error_of(answer)["field"] == "grid"
        assert "400 images (200 × 2); the most a grid may make, even confirmed, is 256" in error_of(answer)["message"]
        too_long = {"x": {"param": "seed", "values": "1-200," * 5000}}  # 30 000 characters of axis text
        answer = await api.http.post("/api/v1/jobs", json={**SMALL, "grid": too_long}, headers=alpha)
        assert answer.status_code == 400 and "the most is 10000" in error_of(answer)["message"]
        assert await jobs_total(api, alpha) == 0


@pytest.mark.parametrize("route", ["/api/v1/jobs", "/api/v1/generate/"])
async def test_an_idempotency_key_gives_the_same_grid_and_another_body_409(make_api, route: str) -> None:
    async with make_api(api_keys=f"{ALPHA},{BETA}", run_worker=False) as api:
        alpha = {"Authorization": f"Bearer {ALPHA}", "Idempotency-Key": "grid-key-1"}
        body = {**SMALL, "seed": -1, "grid": GRID}
        first = await api.http.post(route, json=body, headers=alpha)
        again = await api.http.post(route, json=body, headers=alpha)
        assert first.status_code == again.status_code == 202, again.text
        assert again.json() == first.json() and len(first.json()["job_ids"]) == 2
        assert await jobs_total(api, alpha) == 2  # the retry queued nothing
        other = await api.http.post(route, json={**body, "grid": {"x": {"param": "steps", "values": "1-3"}}},
                                    headers=alpha)
        assert other.status_code == 409 and error_of(other)["code"] == "idempotency_conflict"
        assert "grid-key-1" in error_of(other)["message"] and await jobs_total(api, alpha) == 2
        beta = {"Authorization": f"Bearer {BETA}", "Idempotency-Key": "grid-key-1"}  # keys are per owner
        theirs = await api.http.post(route, json=body, headers=beta)
        assert theirs.status_code == 202 and theirs.json()["grid_id"] != first.json()["grid_id"]


async def test_delete_cancels_every_cell_of_a_grid_owner_scoped(make_api, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True  # ComfyUI starts nothing: every cell is queued or waiting on it
    async with make_api(api_keys=f"{ALPHA},{BETA}") as api:
        alpha, beta = {"Authorization": f"Bearer {ALPHA}"}, {"Authorization": f"Bearer {BETA}"}
        body = (await api.http.post("/api/v1/jobs", json={**SMALL, "grid": GRID}, headers=alpha)).json()
        refused = await api.http.delete(body["location"], headers=beta)
        assert refused.status_code == 404 and body["grid_id"] in error_of(refused)["message"]
        assert (await api.http.get(body["location"], headers=alpha)).json()["status"] in ("queued", "running")
        cancelled = await api.http.delete(body["location"], headers=alpha)
        assert cancelled.status_code == 200 and cancelled.json()["grid_id"] == body["grid_id"], cancelled.text
        async with asyncio.timeout(30):  # a running cell becomes cancelled once ComfyUI stopped it
            while (await api.http.get(body["location"], headers=alpha)).json()["status"] != "cancelled":
                await asyncio.sleep(0.05)
        for job_id in body["job_ids"]:
            assert (await api.http.get(f"/api/v1/jobs/{job_id}", headers=alpha)).json()["status"] == "cancelled"
        assert (await api.http.get(body["location"], headers=alpha)).json()["status"] == "cancelled"
        assert (await api.http.delete("/api/v1/grids/0123456789abcdef", headers=alpha)).status_code == 404


async def test_what_a_request_leaves_out_takes_its_model_familys_defaults(api: Api) -> None:
    async def queued(body: dict[str, Any]) -> dict[str, Any]:
        answer = await api.http.post("/api/v1/jobs", json=body)
        assert answer.status_code == 202, answer.text
        return (await api.studio.job(answer.json()["job_id"])).params

    sdxl = await queued({"prompt": "a fox", "checkpoint": "sd_xl_base_1.0.safetensors"})
    assert (sdxl["width"], sdxl["height"], sdxl["steps"], sdxl["cfg"], sdxl["sampler"], sdxl["scheduler"]) == \
        (1024, 1024, 25, 6.0, "dpmpp_2m", "karras")
    flux = await queued({"prompt": "a fox", "checkpoint": "flux1-dev-fp8.safetensors", "cfg": 2.0})
    assert (flux["cfg"], flux["guidance"], flux["width"]) == (2.0, 3.5, 1024)  # what it sets always wins
    chosen = await queued({"prompt": "a fox", "checkpoint": "random-sd15.safetensors", "family": "sdxl",
                           "width": 832, "height": 1216})
    assert (chosen["width"], chosen["height"], chosen["steps"]) == (832, 1216, 25)
    sd15 = await queued({"prompt": "a fox", "checkpoint": "random-sd15.safetensors"})
    assert (sd15["width"], sd15["steps"], sd15["cfg"]) == (512, 20, 7.0)
