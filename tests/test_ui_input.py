"""The page refuses bad input with a sentence and queues nothing: numbers out of range (never clamped), seeds
too large for JSON, uploads that would blow up when decoded, a checkpoint the server lacks."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest
import gradio as gr
from gradio.data_classes import ImageData

from comfy import JobState, Studio
from tests.test_input_images import bomb_png
from tests.test_ui_handlers import form, request
from ui.handlers import FORM_FIELDS, Handlers, storable_form
from ui.layout import uploaded_image


async def _queued(studio: Studio) -> int:
    counts = await studio.store.counts()
    return sum(counts.values())


@pytest.mark.parametrize(("changes", "words"), [
    ({"seed": 10**23}, "A seed of 100000000000000000000000 cannot be typed exactly in a browser"),
    ({"seed": 1e23}, "cannot be typed exactly in a browser"),
    ({"seed": 2**53}, "give one below 9,007,199,254,740,992"),  # what a JavaScript number still holds exactly
    ({"seed": -5}, "seed is -5; it must be between 0 and"),
    ({"seed": "12x"}, "seed must be a whole number, not '12x'"),
    ({"steps": 10000}, "steps is 10000; it must be between 1 and 150"),
    ({"steps": 0}, "steps is 0; it must be between 1 and 150"),
    ({"width": 7}, "width is 7; it must be between 64 and 2048"),
    ({"batch_count": 500}, "count is 500"),
    ({"steps": 20.5}, "steps must be a whole number"),
])
async def test_out_of_range_form_values_are_refused_and_queue_nothing(studio: Studio, changes, words) -> None:
    h = Handlers(studio)
    with pytest.raises(gr.Error) as info:
        await h.generate("txt2img", None, *form(**changes), request=request())
    assert words in info.value.message
    assert await _queued(studio) == 0
    watched, _seed = await h.generate("txt2img", None, *form(batch_count=1), request=request())  # still works
    assert len(watched) == 1


def test_the_stored_form_never_carries_a_number_json_cannot_hold() -> None:
    values = form(seed=10**23)
    with pytest.raises(TypeError, match="64-bit"):
        orjson.dumps(dict(zip(FORM_FIELDS, values)))  # what broke the page's event stream
    stored = storable_form(*values)
    assert stored["seed"] is None and stored["prompt"] == "a lighthouse"
    orjson.dumps(stored)


async def test_use_these_settings_with_a_checkpoint_the_server_lacks(studio: Studio) -> None:
    job, _ = await studio.store.enqueue({"prompt": "an old job", "checkpoint": "gone-xl.safetensors", "steps": 33,
                                         "sampler": "euler", "scheduler": "normal", "seed": 5, "width": 640,
                                         "height": 448, "cfg": 5.0, "batch_size": 1, "denoise": 1.0,
                                         "negative_prompt": "", "init_image": None})
    h = Handlers(studio)
    with pytest.warns(UserWarning, match="no checkpoint 'gone-xl.safetensors'"):
        updates = await h.reuse_settings(job.id, request())
    by_name = dict(zip(FORM_FIELDS, updates))
    assert "value" not in by_name["checkpoint"]  # left as it is: no "not in the list of choices"
    assert by_name["steps"]["value"] == 33 and by_name["width"]["value"] == 640
    assert by_name["prompt"]["value"] == "an old job"


def test_an_uploaded_bomb_reaches_the_handler_undecoded(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20000, 20000))
    component = uploaded_image(label="Init image")
    assert component.preprocess(ImageData(path=str(path), orig_name="bomb.png")) == str(path)


async def test_img2img_from_the_page_refuses_a_bomb_with_a_sentence(studio: Studio, tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(20000, 20000))
    h = Handlers(studio)
    with pytest.raises(gr.Error, match="megapixels"):
        await h.generate("img2img", str(path), *form(), request=request())
    assert (await studio.store.counts())[JobState.QUEUED] == 0


async def test_the_form_numbers_keep_what_was_typed(studio: Studio) -> None:
    """A slider clamps a typed 10000 to its maximum after the toast, and Generate then queued the clamped
    value; number boxes keep the value, so the engine's sentence is the one answer."""
    from ui.layout import build_ui

    demo = build_ui(studio, studio.settings)
    boxes = {block.label: block for block in demo.blocks.values() if getattr(block, "label", None)}
    for label in ("Steps", "Width", "Height", "Batch size", "Batch count", "CFG", "Denoise strength"):
        assert isinstance(boxes[label], gr.Number), label
        assert boxes[label].maximum is None and boxes[label].minimum is None, label


async def test_a_user_error_is_one_line_in_the_log(studio: Studio, caplog) -> None:
    h = Handlers(studio)
    caplog.set_level("INFO", logger="ui.handlers")
    with pytest.raises(gr.Error) as info:
        await h.generate("txt2img", None, *form(steps=0), request=request())
    assert info.value.print_exception is False  # Gradio prints no chained traceback for it
    lines = [r for r in caplog.records if r.name == "ui.handlers"]
    assert len(lines) == 1 and lines[0].exc_info is None and "steps is 0" in lines[0].getMessage()


@pytest.mark.parametrize(("call", "words"), [
    (lambda h, r: h.api_generate("a cat", steps="many", request=r), "steps must be a whole number, not 'many'"),
    (lambda h, r: h.api_generate("a cat", steps=20.5, request=r), "steps must be a whole number, not 20.5"),
    (lambda h, r: h.api_generate("a cat", cfg="hot", request=r), "cfg must be a number, not 'hot'"),
    (lambda h, r: h.api_jobs(limit="x", request=r), "limit must be a whole number, not 'x'"),
    (lambda h, r: h.api_generate("a cat", inpaint_full_res="maybe", request=r),
     "inpaint_full_res must be true or false, not 'maybe'"),
    (lambda h, r: h.history("nope", None, request=r), "'nope' is not a state"),
])
async def test_the_page_api_names_the_argument_it_cannot_read(studio: Studio, call, words) -> None:
    h = Handlers(studio)
    with pytest.raises(gr.Error) as info:
        await call(h, request())
    assert words in info.value.message
    assert await _queued(studio) == 0


def test_one_user_making_up_sessions_forgets_only_their_own_followed_jobs(studio: Studio) -> None:
    from ui.handlers import SESSIONS_PER_USER

    h = Handlers(studio, auth_on=True)
    h._follow(("ann", "ann-tab"), ["job-a"])
    for n in range(SESSIONS_PER_USER + 500):
        h._follow(("mallory", f"made-up-{n}"), ["job-m"])
    assert h.watched(SimpleNamespace(username="ann", session_hash="ann-tab")) == ["job-a"]
    assert sum(1 for owner, _ in h._watched if owner == "mallory") == SESSIONS_PER_USER


async def test_a_caller_holds_a_bounded_number_of_the_pages_streams(studio: Studio) -> None:
    from ui.streams import PageStreams

    h = Handlers(studio, auth_on=True)
    h.streams = PageStreams(limit=2)
    job, _ = await studio.store.enqueue({"prompt": "a lighthouse"}, owner="ann")  # no worker: it stays queued
    ann, bob = SimpleNamespace(username="ann", session_hash="t1"), SimpleNamespace(username="bob", session_hash="t2")
    h._follow(("ann", "t1"), [job.id])
    first, second = h.watch(ann), h.api_job_status(job.id, request=ann)
    await first.__anext__()
    follower = asyncio.ensure_future(second.__anext__())  # waits for an event: its slot is held meanwhile
    await asyncio.sleep(0.2)
    with pytest.raises(gr.Error, match="You already follow jobs in 2 streams"):
        await h.watch(ann).__anext__()
    await h.watch(bob).__anext__()  # another caller is not held up
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    await first.aclose()
    await second.aclose()
    await h.watch(ann).__anext__()  # closed streams give their slots back


def test_png_info_shows_a_settings_panel_not_megabytes_of_text(studio: Studio, tmp_path) -> None:
    import json
    import zlib

    from comfy.graph import pngmeta

    body = zlib.compress(b"x" * (4 * 1024 * 1024), 9)  # a few KB that inflate to 4 MB a chunk
    png = pngmeta._tiny_png_with(b"".join(pngmeta._chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + body)
                                         for i in range(4)))
    path = tmp_path / "swollen.png"
    path.write_bytes(png)
    _message, _params, texts = Handlers(studio).png_info(str(path))
    assert len(json.dumps(texts)) < 64 * 1024  # what reaches the browser (it was 16 MB)
    assert texts["k0"].endswith("(4,194,304 characters; not shown)")
