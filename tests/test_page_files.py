"""The page's files over HTTP: Gradio's copies of results are their owner's, and the open page beside API keys
serves and lists only its own jobs. The real app (page + REST API) on a loopback port, in this event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import create_app, protection
from comfy import JobState, Studio
from tests.api_support import ALPHA, SMALL, serve
from tests.conftest import make_settings, quick
from tests.fakes.comfyui import FakeComfy
from tests.ui_support import call_page

GENERATE = ["a private lighthouse", "", "", "euler", "normal", 2, 7.0, 42, 64, 64, 1, 1, 1.0, "",  # api_generate
            None, "", None, "", 4, 0, False, 32, None, None, "", None]  # and its toolbox fields


@contextlib.asynccontextmanager
async def page(url: str, login: tuple[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        if login:
            answer = await http.post("/login/", data={"username": login[0], "password": login[1]})
            assert answer.status_code == 200, answer.text
        yield http


async def generated(http: httpx.AsyncClient, studio: Studio) -> str:
    answer = await call_page(http, "generate", GENERATE)
    assert answer["success"], answer
    [job_id] = answer["output"]["data"][0]["job_ids"]
    assert (await studio.wait(job_id, timeout=60)).state is JobState.SUCCEEDED
    return job_id


async def shown_image(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The first image of the job's details as the page's gallery gets it (Gradio's FileData)."""
    answer = await call_page(http, "job_detail", [job_id])
    assert answer["success"], answer
    images = answer["output"]["data"][3]  # summary, settings text, settings JSON, then the images (an update)
    return (images["value"] if isinstance(images, dict) else images)[0]["image"]


async def test_gradio_copies_of_a_result_are_served_to_its_owner_only(tmp_path: Path, fake_comfy: FakeComfy,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    settings = make_settings(tmp_path, fake_comfy.url, auth_users="ann:pw1,bob:pw2")
    studio = quick(Studio(settings))
    async with serve(create_app(settings, studio=studio)) as url, page(url, ("ann", "pw1")) as ann, \
            page(url, ("bob", "pw2")) as bob, page(url) as nobody:
        job_id = await generated(ann, studio)
        shown = await shown_image(ann, job_id)
        cached = Path(shown["path"])
        assert cached.is_relative_to(tmp_path / "gradio-tmp") and job_id in cached.parent.name  # Gradio's copy
        [saved] = await studio.image_urls(job_id)
        mine = await ann.get(shown["url"])
        assert mine.status_code == 200 and mine.content == Path(saved).read_bytes()
        for http in (bob, nobody):
            assert (await http.get(shown["url"])).status_code == 404
            assert (await http.get(f"/gradio_api/file={cached}")).status_code == 404
            assert (await http.get(f"/gradio_api/file={saved}")).status_code == 404
        # A path no file can have is "not found", not a server error.
        for weird in ("/gradio_api/file=/tmp/a%00b", f"/gradio_api/file={cached.parent}%00/x.png",
                      f"/gradio_api/file={settings.outputs_dir}/{'x' * 5000}/image_0.png"):
            assert (await ann.get(weird)).status_code == 404, weird


async def test_the_open_page_beside_api_keys_serves_and_lists_only_its_own_jobs(
        tmp_path: Path, fake_comfy: FakeComfy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    settings = make_settings(tmp_path, fake_comfy.url, api_keys=ALPHA)
    studio = quick(Studio(settings))
    async with serve(create_app(settings, studio=studio)) as url, page(url) as anyone:
        by_key = await anyone.post("/api/v1/generate/", json={**SMALL, "prompt": "the key's secret"},
                                   headers={"Authorization": f"Bearer {ALPHA}"})
        assert by_key.status_code == 200, by_key.text
        key_job = by_key.json()["job_id"]
        page_job = await generated(anyone, studio)

        listed = await call_page(anyone, "jobs", ["", 50])
        assert [j["job_id"] for j in listed["output"]["data"][0]] == [page_job], listed
        assert "secret" not in str(listed)
        for name in ("job_detail", "cancel_job", "cancel"):
            answer = await call_page(anyone, name, [key_job])
            # The detail panel clears and says so; the actions refuse.
            assert answer["success"] is (name == "job_detail") and "No job with id" in str(answer), (name, answer)
            assert "secret" not in str(answer)
        [key_image], [page_image] = await studio.image_urls(key_job), await studio.image_urls(page_job)
        assert (await anyone.get(f"/gradio_api/file={key_image}")).status_code == 404
        assert (await anyone.get(f"/gradio_api/file={page_image}")).status_code == 200
        assert (await anyone.get((await shown_image(anyone, page_job))["url"])).status_code == 200
        assert (await studio.wait(key_job, timeout=5)).state is JobState.SUCCEEDED  # untouched
    line = protection(settings)
    assert "page is OPEN" in line and "not the API keys' jobs or images" in line
