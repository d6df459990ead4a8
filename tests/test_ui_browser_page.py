"""The page as an artist meets it, in headless Chromium against the real app and the fake ComfyUI.

Results stay in view while the form scrolls, whole and captioned; the Workflow tab loads on drop and
groups inputs by node; the history table reads well and its buttons follow the job; an outage is said on
each waiting row. Screenshots go to tests/screenshots/ (and STUDIO_SHOTS_DIR when set).
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from tests.fakes.comfyui import FakeComfy
from tests.test_ui_browser import SHOTS, browser, sync_api  # noqa: F401 - the fixture
from tests.ui_support import running_app

FLOW = Path(__file__).parent / "fixtures" / "comfyui" / "workflows" / "txt2img_api.json"


def shot(page, name: str, *, full: bool = False) -> None:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    if os.environ.get("STUDIO_SHOTS_DIR"):
        Path(os.environ["STUDIO_SHOTS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["STUDIO_SHOTS_DIR"]) / path.name)


def set_field(page, label: str, value: str) -> None:
    """Type into a form field and leave it, as a person does (the page reads it on change)."""
    field = page.get_by_label(label)
    field.fill(value)
    field.press("Tab")


def in_view(page, selector: str) -> bool:
    """Whether the element's top edge is inside the window."""
    return page.locator(selector).evaluate("e => { const r = e.getBoundingClientRect(); "
                                           "return r.top >= 0 && r.top < window.innerHeight; }")


def open_page(browser, url: str, height: int = 900):  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.goto(url)
    sync_api.expect(page.locator("#checkpoint input")).to_have_value("random-sd15.safetensors", timeout=30_000)
    return page


@pytest.mark.slow
def test_results_stay_in_view_whole_and_captioned(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    # Each node takes 1.5 s, so the checkpoint loader runs long enough to be seen however busy the machine.
    with FakeComfy(step_time=0.3, node_time=1.5) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = open_page(browser, url)
        page.locator("#prompt textarea").fill("a lighthouse at dawn, oil painting")
        page.get_by_label("Aspect ratio").click()
        page.get_by_role("option", name="2:3").click()
        expect(page.get_by_label("Width")).to_have_value("416")
        set_field(page, "Batch size", "2")
        set_field(page, "Steps", "6")
        page.locator("#generate-btn").click()
        # While ComfyUI loads the checkpoint: "loading model", not a bar stuck part way.
        expect(page.locator("#progress")).to_contain_text("loading model", timeout=30_000)
        shot(page, "p01-loading-model")
        # Scrolled to the foot of the form, the progress is still on screen.
        page.mouse.wheel(0, 3000)
        expect(page.locator("#progress .job.running .detail")).to_contain_text("step", timeout=30_000)
        assert page.evaluate("window.scrollY") > 200
        assert in_view(page, "#progress")
        shot(page, "p02-scrolled-running")
        expect(page.locator("#gallery img")).to_have_count(2, timeout=60_000)
        expect(page.locator("#progress")).to_contain_text("done", timeout=30_000)
        assert in_view(page, "#progress")
        # Whole (contain, never cover) and told apart by seed and place in the batch.
        img = page.locator("#gallery img").first
        assert img.evaluate("i => getComputedStyle(i).objectFit") == "contain"
        captions = page.locator("#gallery .caption-label").all_inner_texts()
        [seed] = [node["inputs"]["seed"] for node in fake.prompts[0]["prompt"].values() if "seed" in node["inputs"]]
        assert captions == [f"seed {seed} · 1 of 2", f"seed {seed} · 2 of 2"], captions
        # The toast sits at the bottom left, clear of the preview's buttons at its top right.
        page.mouse.wheel(0, -3000)
        toast = page.locator(".toast-wrap").bounding_box()
        buttons = page.locator("#preview button").first.bounding_box()
        assert toast is not None and buttons is not None
        assert toast["x"] + toast["width"] < buttons["x"] or toast["y"] > buttons["y"] + buttons["height"]
        shot(page, "p03-results-whole")

        # A reload keeps every field, the aspect ratio and base size included.
        page.wait_for_timeout(500)  # the browser stores form values on change
        page.reload()
        expect(page.get_by_label("Steps")).to_have_value("6", timeout=30_000)
        expect(page.get_by_label("Aspect ratio")).to_have_value("2:3")
        expect(page.get_by_label("Width")).to_have_value("416")
        expect(page.get_by_label("Height")).to_have_value("624")
        expect(page.get_by_label("Batch size")).to_have_value("2")
        shot(page, "p13-reloaded")

        # A JPEG on PNG info: a toast that says so, and no red "Error" on the outputs.
        jpeg = tmp_path / "photo.jpg"
        Image.new("RGB", (32, 32), (200, 80, 40)).save(jpeg, "JPEG")
        page.get_by_role("tab", name="PNG info").click()
        page.locator("#png-in input[type=file]").set_input_files(str(jpeg))
        expect(page.get_by_text("This is not a PNG file").first).to_be_visible(timeout=15_000)
        page.wait_for_timeout(500)
        assert page.locator(".error").filter(has_text="Error").count() == 0
        shot(page, "p14-jpeg-on-png-info")


@pytest.mark.slow
def test_a_workflow_loads_on_drop_grouped_by_node_and_names_itself(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    with FakeComfy(step_time=0.3, node_time=0.05) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = open_page(browser, url)
        page.get_by_role("tab", name="Workflow").click()
        page.locator("#wf-file input[type=file]").set_input_files(str(FLOW))  # no button to press
        expect(page.locator("#wf-6-text textarea")).to_have_value("a watercolor painting of a lighthouse at dusk",
                                                                   timeout=30_000)
        titles = page.locator(".wf-node-title").all_inner_texts()
        assert any("KSampler" in t and "node 3" in t for t in titles), titles
        assert any("Empty Latent Image" in t for t in titles), titles
        assert page.locator("#wf-3-steps input[type=range]").count() == 1  # a slider with its range
        assert page.locator("#wf-3-seed input[type=range]").count() == 0  # a seed stays a number ...
        page.locator("#wf-3-seed-random input").check()  # ... with a "random" toggle
        steps = page.locator("#wf-3-steps input[type=number]")
        steps.fill("8")
        steps.press("Enter")
        page.locator("#wf-6-text textarea").fill("a paper boat on a pond")
        shot(page, "p04-workflow-loaded", full=True)
        page.locator("#run-workflow").click()
        expect(page.locator("#progress")).to_contain_text("txt2img_api · a paper boat on a pond", timeout=30_000)
        shot(page, "p05-workflow-running")
        expect(page.locator("#gallery img").first).to_be_visible(timeout=60_000)
        sent = fake.prompts[-1]["prompt"]["3"]["inputs"]
        assert sent["steps"] == 8 and sent["seed"] != 42  # the random toggle drew a new seed
        page.get_by_role("tab", name="Queue & history").click()
        expect(page.locator("#jobs-table")).to_contain_text("txt2img_api · a paper boat on a pond", timeout=30_000)
        assert "[workflow]" not in page.locator("#jobs-table").inner_text()


@pytest.mark.slow
def test_the_history_reads_well_and_its_buttons_follow_the_job(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    with FakeComfy(step_time=0.05, node_time=0.01) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = open_page(browser, url, height=1100)
        page.locator("#prompt textarea").fill("a lighthouse at dawn, oil painting")
        set_field(page, "Steps", "4")
        page.locator("#generate-btn").click()
        expect(page.locator("#gallery img").first).to_be_visible(timeout=60_000)
        fake.hold = True  # the next ones wait: two go to ComfyUI (held there), two queue behind them
        set_field(page, "Batch count", "4")
        page.locator("#generate-btn").click()
        page.get_by_role("tab", name="Queue & history").click()
        table = page.locator("#jobs-table")
        expect(table.locator(".virtual-row").filter(has_text="queued")).to_have_count(2, timeout=30_000)
        # The header follows the engine's state without a backend request (it was 5 s polls of the backend).
        expect(page.locator("#status")).to_contain_text("ours 2/2 · Studio queue: 2 queued, 2 running", timeout=5_000)
        first_cell = table.locator(".virtual-row").filter(has_text="queued").first.locator(".body-cell").first.inner_text().strip()
        assert len(first_cell) == 8, first_cell  # short ids
        # Words stay whole: no cell's text is wider than its column (a word broken mid-way would not be).
        overflow = table.locator(".virtual-row .body-cell .cell-wrap").evaluate_all(
            "cs => cs.filter(c => c.innerText.trim() && c.scrollWidth > c.clientWidth + 1).map(c => c.innerText)")
        assert overflow == [], overflow
        assert table.locator(".virtual-row .body-cell span").first.evaluate("c => getComputedStyle(c).wordBreak") == "normal"
        shot(page, "p06-history-table")

        # The last queued job: Cancel and Move to front apply; moving it makes it next.
        queued_row = table.locator(".virtual-row").filter(has_text="queued").last
        queued_row.locator(".body-cell").nth(1).click()
        detail = page.locator("#job-detail")
        expect(detail).to_contain_text("in queue", timeout=15_000)
        expect(page.locator("#cancel-job")).to_be_visible()
        expect(page.locator("#front-job")).to_be_visible()
        page.locator("#front-job").click()
        expect(detail).to_contain_text("#1 in queue", timeout=15_000)
        shot(page, "p07-moved-to-front")
        page.locator("#cancel-job").click()
        expect(detail).to_contain_text("cancelled", timeout=15_000)
        expect(page.locator("#cancel-job")).to_be_hidden()
        expect(page.locator("#front-job")).to_be_hidden()
        expect(table.locator(".virtual-row").filter(has_text="cancelled").first).to_contain_text("cancelled")
        assert "96%" not in table.inner_text()
        shot(page, "p08-cancelled")

        # A finished job: its settings as text to copy, the JSON behind a toggle.
        fake.hold = False
        table.locator(".virtual-row").filter(has_text="succeeded").last.locator(".body-cell").nth(1).click()
        expect(page.locator("#settings-text textarea")).to_have_value(
            re.compile(r"Steps: 4, Sampler: euler, .*Seed: \d+, Size: 512x512, Model: random-sd15"),
            timeout=15_000)
        expect(page.locator("#cancel-job")).to_be_hidden()
        expect(page.locator("#settings-json")).to_be_hidden()
        page.get_by_text("Settings as JSON").click()
        expect(page.locator("#settings-json")).to_be_visible()
        shot(page, "p09-settings-text", full=True)

        # An id that names no job clears the detail.
        page.locator("#selected-job textarea, #selected-job input").first.fill("ffffffffffffffff")
        page.locator("#selected-job textarea, #selected-job input").first.press("Enter")
        expect(detail).to_contain_text("No job with id", timeout=15_000)
        expect(page.locator("#settings-text textarea")).to_have_value("")
        expect(page.locator("#job-images img")).to_have_count(0)
        shot(page, "p10-unknown-id")

        # The lightbox: open an image of the history, walk with the arrow keys, mark favourites, zip them.
        thumbs = page.locator("#history-gallery .thumbnail-item")
        expect(thumbs).to_have_count(4, timeout=30_000)  # the first job's image and three of the batch's
        thumbs.first.click()
        label = page.locator("#fav-label")
        expect(label).to_contain_text("not a favourite", timeout=15_000)
        page.locator("#fav-btn").click()
        expect(label).to_contain_text("1 favourite(s)")
        first_caption = page.locator("#history-gallery .preview .caption, #history-gallery .caption").first
        before = first_caption.inner_text()
        page.keyboard.press("ArrowRight")
        expect(first_caption).not_to_have_text(before, timeout=15_000)
        expect(label).to_contain_text("not a favourite", timeout=15_000)  # the next image
        page.locator("#fav-btn").click()
        expect(label).to_contain_text("2 favourite(s)")
        shot(page, "p15-lightbox")
        with page.expect_download(timeout=30_000) as download:
            page.locator("#fav-zip").click()
        saved = tmp_path / "favourites.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            names = archive.namelist()
            assert len(names) == 2 and all(archive.read(n)[:4] == b"\x89PNG" for n in names), names


@pytest.mark.slow
def test_an_outage_is_said_on_each_waiting_row_and_the_header_follows(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    with FakeComfy(step_time=0.05, node_time=0.01) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = open_page(browser, url)
        expect(page.locator("#status")).to_contain_text("Connected", timeout=30_000)
        fake.stop()
        expect(page.locator("#status")).to_contain_text("unreachable", timeout=30_000)
        page.locator("#prompt textarea").fill("a lighthouse in a storm")
        set_field(page, "Batch count", "2")
        page.locator("#generate-btn").click()
        rows = page.locator("#progress .job.waiting .detail")
        expect(rows).to_have_count(2, timeout=30_000)
        for text in rows.all_inner_texts():
            assert text == "backend unreachable: connection refused — resumes when it answers", text
        shot(page, "p11-outage")
        page.get_by_role("tab", name="Queue & history").click()
        expect(page.locator("#jobs-table")).to_contain_text("backend unreachable: connection refused", timeout=30_000)
        shot(page, "p12-outage-history")
