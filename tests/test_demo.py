"""The demo backend: the studio works end to end with no ComfyUI (``--demo``, ``STUDIO_DEMO=1``, a bare Space)."""

from __future__ import annotations

import io
import json

from PIL import Image

import app
from comfy.backends.demo import DEMO_CHECKPOINTS, DemoBackend, demo_image
from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.jobs.records import JobState
from tests.conftest import job_where, make_settings, running

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens there: the demo must not need it


def demo_settings(tmp_path, **overrides):
    return make_settings(tmp_path, UNREACHABLE, demo=True, **overrides)


async def test_a_job_runs_with_steps_previews_and_a_saved_png(tmp_path) -> None:
    async with running(demo_settings(tmp_path)) as studio:
        studio.pool.backends[0].step_time = 0.005
        assert [b.kind for b in studio.pool.backends] == ["demo"]
        models = await studio.models()
        assert models.checkpoints == list(DEMO_CHECKPOINTS) and "euler" in models.samplers
        params = GenerationParams(prompt="a lighthouse at dawn", steps=6, seed=7, width=64, height=96, batch_size=2)
        (job,) = await studio.submit(params)
        kinds, steps = [], []
        async for event in studio.follow(job.id, poll_interval=0.05):
            kinds.append(event.kind)
            if event.kind == "progress" and event.step:
                steps.append(event.step)
        done = await studio.job(job.id)
        assert done.state is JobState.SUCCEEDED, done.error
        assert steps == [1, 2, 3, 4, 5, 6] and "preview" in kinds
        assert len(done.outputs) == 2
        data = open(done.outputs[0]["path"], "rb").read()
        assert Image.open(io.BytesIO(data)).size == (64, 96)
        saved = json.loads(pngmeta.read_text_chunks(data)[pngmeta.METADATA_KEY])
        assert saved["params"]["prompt"] == "a lighthouse at dawn" and saved["params"]["seed"] == 7


async def test_a_demo_job_can_be_cancelled_while_it_runs(tmp_path) -> None:
    async with running(demo_settings(tmp_path)) as studio:
        studio.pool.backends[0].step_time = 0.2
        (job,) = await studio.submit(GenerationParams(prompt="slow", steps=50, seed=1, width=64, height=64))
        await job_where(studio, job.id, lambda j: j.step)
        await studio.cancel(job.id)
        await job_where(studio, job.id, lambda j: j.state.is_final)
        assert (await studio.job(job.id)).state is JobState.CANCELLED


async def test_the_demo_refuses_what_a_server_would_refuse(tmp_path) -> None:
    async with running(demo_settings(tmp_path)) as studio:
        try:
            await studio.submit(GenerationParams(prompt="x", checkpoint="not-there.safetensors", seed=1))
        except Exception as exc:  # noqa: BLE001 - the type is checked below
            assert "not-there.safetensors" in str(exc) and type(exc).__name__ == "WorkflowError"
        else:
            raise AssertionError("an unknown checkpoint was accepted")


def test_the_same_prompt_and_seed_draw_the_same_picture() -> None:
    one, again = demo_image("a fox", 3, 64, 64), demo_image("a fox", 3, 64, 64)
    other = demo_image("a fox", 4, 64, 64)
    assert one.tobytes() == again.tobytes() and one.tobytes() != other.tobytes()


async def test_its_status_says_it_is_the_demo(tmp_path) -> None:
    async with running(demo_settings(tmp_path)) as studio:
        (status,) = await studio.backends_status()
        assert status.kind == "demo" and status.reachable and "demo" in (status.gpu or "")


def test_demo_flag_and_a_bare_space_turn_the_demo_on() -> None:
    plain = app.parse_args([])
    assert app.overrides_from(app.parse_args(["--demo"]), {}) == {"demo": True}
    assert "demo" not in app.overrides_from(plain, {})
    assert app.overrides_from(plain, {"SPACE_ID": "me/studio"})["demo"] is True
    assert "demo" not in app.overrides_from(plain, {"SPACE_ID": "me/studio", "COMFYUI_URL": "https://x"})
    assert DemoBackend().has_checkpoints(frozenset(DEMO_CHECKPOINTS[:1])) is True


def test_the_page_says_plainly_it_is_a_demo(tmp_path) -> None:
    from ui import render

    banner = render.demo_banner()
    assert "Demo" in banner and "COMFYUI_URL" in banner and "placeholders" in banner


async def test_health_lists_the_demo_backend(tmp_path) -> None:
    from tests.api_support import running_api

    async with running_api(demo_settings(tmp_path), manage_studio=True) as api:
        health = await api.http.get("/health")
        assert health.status_code == 200, health.text
        assert [b["kind"] for b in health.json()["backends"]] == ["demo"]
