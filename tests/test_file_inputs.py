"""With logins on, a user's workflow cannot read another user's results through ComfyUI's own folders.

ComfyUI resolves ``name [output]`` (and ``[temp]``, ``sub/name``) in a LoadImage input against its output
folder, and LoadImageOutput reads that folder outright; the fake resolves them as ComfyUI does.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from comfy.errors import WorkflowError
from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from tests.conftest import make_settings, running
from tests.fakes.comfyui import FakeComfy

def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(out, format="PNG")
    return out.getvalue()


SMALL = GenerationParams(prompt="ann's portrait", steps=2, seed=7, width=64, height=64)


def reading(value: str, class_type: str = "LoadImage") -> dict:
    return {"1": {"class_type": class_type, "inputs": {"image": value}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bob"}}}


@pytest.mark.parametrize(("graph", "sentence"), [
    (reading("ComfyUIStudio_00001_.png [output]"), "a file outside ComfyUI's input folder"),
    (reading("ComfyUIStudio_00001_.png [temp]"), "a file outside ComfyUI's input folder"),
    (reading("../output/ComfyUIStudio_00001_.png"), "a file outside ComfyUI's input folder"),
    (reading("ComfyUIStudio_00001_.png", "LoadImageOutput"), "from ComfyUI's output folder"),
])
async def test_a_workflow_naming_another_users_output_is_refused_with_logins_on(
        tmp_path, fake_comfy: FakeComfy, graph: dict, sentence: str) -> None:
    settings = make_settings(tmp_path, fake_comfy.url, auth_users="ann:pw1,bob:pw2")
    async with running(settings) as studio:
        [ann] = await studio.submit(SMALL, owner="ann")
        assert (await studio.wait(ann.id, timeout=30)).state is JobState.SUCCEEDED
        with pytest.raises(WorkflowError, match=sentence) as refused:
            await studio.submit_workflow(graph, owner="bob")
        assert refused.value.field == "node 1"
        assert len(fake_comfy.prompts) == 1  # bob's never reached ComfyUI


async def test_an_image_sent_with_the_workflow_or_a_plain_input_name_still_runs(tmp_path, fake_comfy: FakeComfy) -> None:
    settings = make_settings(tmp_path, fake_comfy.url, auth_users="ann:pw1,bob:pw2")
    async with running(settings) as studio:
        sent = await studio.submit_workflow(reading("anything"), images={"1": png_bytes(64, 64)}, owner="bob")
        assert (await studio.wait(sent.id, timeout=30)).state is JobState.SUCCEEDED
        name = await studio.client.upload_image(png_bytes(64, 64), "example.png")  # in ComfyUI's input folder
        plain = await studio.submit_workflow(reading(name), owner="bob")
        assert (await studio.wait(plain.id, timeout=30)).state is JobState.SUCCEEDED


async def test_without_logins_one_artist_may_load_her_own_outputs(tmp_path, fake_comfy: FakeComfy) -> None:
    async with running(make_settings(tmp_path, fake_comfy.url)) as studio:
        [first] = await studio.submit(SMALL)
        assert (await studio.wait(first.id, timeout=30)).state is JobState.SUCCEEDED
        again = await studio.submit_workflow(reading(f"{fake_comfy.file_names('output')[0]} [output]"))
        assert (await studio.wait(again.id, timeout=30)).state is JobState.SUCCEEDED
