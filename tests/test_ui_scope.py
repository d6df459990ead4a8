"""The page beside API keys, without logins: it sees and acts on its own jobs (owner None), never a key's.

Also: another user's job id is no line in the log, and what the page keeps per browser session is bounded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from comfy import GenerationParams, JobState, Studio
from ui.files import PageCopies
from ui.handlers import FORM_FIELDS, WATCHED_SESSIONS, Handlers

FORM = {"prompt": "the page's lighthouse", "negative_prompt": "", "checkpoint": "random-sd15.safetensors",
        "sampler": "euler", "scheduler": "normal", "steps": 2, "cfg": 7.0, "seed": 42, "width": 64, "height": 64,
        "batch_size": 1, "batch_count": 1, "denoise": 0.6}
KEY_OWNER = "key:0123456789abcdef"


def request(user: str | None = None, session: str = "s1") -> SimpleNamespace:
    return SimpleNamespace(username=user, session_hash=session)


async def test_with_api_keys_the_open_page_sees_only_the_jobs_made_on_it(studio: Studio, tmp_path: Path) -> None:
    h = Handlers(studio, keys_on=True, copies=PageCopies(tmp_path / "gradio-cache", "secret"))
    page = request()
    [by_key] = await studio.submit(GenerationParams(prompt="a key's secret project", steps=2, width=64, height=64),
                                   owner=KEY_OWNER)
    watched, _ = await h.generate("txt2img", None, *[FORM[n] for n in FORM_FIELDS], request=page)
    for job_id in (by_key.id, watched[0]):
        assert (await studio.wait(job_id, timeout=30)).state is JobState.SUCCEEDED

    rows, thumbs, _, ids = await h.history("all", None, page)
    assert ids == watched and [row[0] for row in rows] == [i[:8] for i in watched] and all(by_key.id not in caption for _, caption in thumbs)
    assert [j["job_id"] for j in await h.api_jobs(request=page)] == watched
    detail = await h.job_detail(by_key.id, page)
    assert "No job with id" in detail[0] and "secret project" not in str(detail)
    for call in (h.cancel_job, h.move_to_front, h.reuse_settings, h.send_to_img2img):
        with pytest.raises(gr.Error, match="No job with id"):
            await call(by_key.id, page)
    with pytest.raises(gr.Error, match="No job with id"):
        await h.api_cancel(by_key.id, page)
    assert await h.restore_jobs([by_key.id, *watched], page) == watched
    # Its own images go to Gradio as copies in a folder named after the job (which ui.files gates).
    _summary, _text, _settings, images, *_buttons = await h.job_detail(watched[0], page)
    [(shown, _caption)] = images["value"]
    assert Path(shown).parent == PageCopies(tmp_path / "gradio-cache", "secret").folder(watched[0])
    assert Path(shown).read_bytes() == Path((await studio.image_urls(watched[0]))[0]).read_bytes()

    everyone = Handlers(studio)  # nothing set at all: one shared workspace, as before
    assert set((await everyone.history("all", None, page))[3]) == {by_key.id, watched[0]}


async def test_another_users_job_id_is_no_warning_in_the_log(studio: Studio, caplog: pytest.LogCaptureFixture) -> None:
    h = Handlers(studio, auth_on=True)
    watched, _ = await h.generate("txt2img", None, *[FORM[n] for n in FORM_FIELDS], request=request("ann"))
    caplog.set_level(logging.INFO)
    for call in (h.cancel_job, h.move_to_front):
        with pytest.raises(gr.Error, match="No job with id"):
            await call(watched[0], request("bob"))
        with pytest.raises(gr.Error, match="No job with id"):
            await call("0123456789abcdef", request("bob"))
    assert [r for r in caplog.records if r.name.startswith("ui.") and r.levelno >= logging.INFO] == []


async def test_the_jobs_followed_per_session_are_bounded(studio: Studio) -> None:
    """Session hashes come from browsers (anyone can send new ones): the oldest sessions are forgotten."""
    h = Handlers(studio)
    for n in range(WATCHED_SESSIONS + 50):
        await h.restore_jobs([], request(session=f"made-up-{n}"))
    assert len(h._watched) == WATCHED_SESSIONS
    assert h.watched(request(session=f"made-up-{WATCHED_SESSIONS + 49}")) == []
    await h.restore_jobs([], request(session="made-up-60"))  # a session seen again is the newest again
    await h.restore_jobs([], request(session="one-more"))
    assert ("made-up-60" in {s for _, s in h._watched}) and len(h._watched) == WATCHED_SESSIONS
