"""The toolbox on the real page, in headless Chromium, against the fake ComfyUI serving LoRAs, VAEs and upscale
models: LoRA rows added and removed, a brush stroke on the ImageEditor that becomes a mask and a job that runs,
a 2 × 2 plot filling in and then its labelled grid. Screenshots go to tests/screenshots/ (and STUDIO_SHOTS_DIR).
"""

from __future__ import annotations

import re

from pathlib import Path

import pytest
from PIL import Image

from tests.test_ui_browser import browser, sync_api  # noqa: F401 - the fixture
from tests.test_ui_browser_page import shot
from tests.toolbox_support import LORAS, classes, inputs_of, png_bytes, toolbox_comfy
from tests.ui_support import running_app


def _open(page, url: str) -> None:
    page.goto(url)
    sync_api.expect(page.locator("#checkpoint input")).to_have_value("random-sd15.safetensors", timeout=30_000)


def _pick(page, selector: str, option: str) -> None:
    page.locator(f"{selector} input").click()
    page.locator(selector).get_by_role("option", name=option, exact=True).click()


@pytest.mark.slow
def test_lora_rows_and_a_brush_stroke_that_inpaints(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    init = tmp_path / "init.png"
    init.write_bytes(png_bytes(256, 192))
    with toolbox_comfy(tmp_path) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _open(page, url)
        page.locator("#prompt textarea").fill("a red door")
        page.get_by_label("Steps").fill("2")

        # Three rows added, the middle one removed: two LoRAs remain, in order, each with its strength.
        for row in range(3):
            page.locator("#lora-add").click()
            expect(page.locator(f"#lora-row-{row}")).to_be_visible()
        _pick(page, "#lora-0", LORAS[0])
        _pick(page, "#lora-1", LORAS[2])
        _pick(page, "#lora-2", LORAS[1])
        page.locator("#lora-strength-2 input[type=number]").fill("0.5")
        page.locator("#lora-strength-2 input[type=number]").press("Tab")
        shot(page, "toolbox-lora-rows-added", full=True)
        page.locator("#lora-remove-1").click()
        expect(page.locator("#lora-row-1")).to_be_hidden()
        expect(page.locator("#lora-row-0")).to_be_visible()
        page.locator("#toolbox").scroll_into_view_if_needed()
        shot(page, "toolbox-lora-row-removed")

        # Image to image: the editor takes the init image; one brush stroke is the mask.
        page.get_by_role("tab", name="Image to image").click()
        page.locator("#init-image input[type=file]").set_input_files(str(init))
        page.locator("#inpaint").get_by_text("Inpaint: paint what to repaint").click()
        editor = page.locator("#mask-editor")
        editor.get_by_role("button", name="Brush", exact=True).click()
        canvas = editor.locator("canvas").first
        canvas.scroll_into_view_if_needed()
        page.wait_for_timeout(500)  # the editor draws the background it was given
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x - 60, y)
        page.mouse.down()
        for i in range(20):
            page.mouse.move(x - 60 + i * 6, y + i * 2)
        page.mouse.up()
        shot(page, "toolbox-inpaint-stroke")
        page.locator("#generate-btn").click()
        expect(page.locator("#gallery img").first).to_be_visible(timeout=60_000)
        expect(page.locator("#progress")).to_contain_text("done", timeout=60_000)
        shot(page, "toolbox-inpaint-done", full=True)

        graph = fake.prompts[-1]["prompt"]
        assert "SetLatentNoiseMask" in classes(graph) and "LoadImageMask" in classes(graph)
        assert [inputs_of(graph, "LoraLoader", i)["lora_name"] for i in (0, 1)] == [LORAS[0], LORAS[1]]
        assert inputs_of(graph, "LoraLoader", 1)["strength_model"] == 0.5
        masks = [p for p in (tmp_path / "data").rglob("*.png") if _is_mask(p)]
        assert masks, "the stroke was kept as a mask"

        # A reload keeps the toolbox: the two rows, their LoRAs and strengths.
        page.reload()
        expect(page.locator("#lora-2 input")).to_have_value(LORAS[1], timeout=30_000)
        expect(page.locator("#lora-0 input")).to_have_value(LORAS[0])
        expect(page.locator("#lora-row-1")).to_be_hidden()
        expect(page.locator("#lora-strength-2 input[type=number]")).to_have_value("0.5")
        page.close()


def _is_mask(path: Path) -> bool:
    """A kept black-and-white mask of the init image's size with something painted."""
    if "inputs" not in path.parts:
        return False
    picture = Image.open(path)
    return picture.size == (256, 192) and picture.mode == "L" and picture.getbbox() is not None


@pytest.mark.slow
def test_a_2x2_plot_fills_in_then_shows_the_labelled_grid(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    with toolbox_comfy(tmp_path) as fake, running_app(fake.url, tmp_path / "data") as url:
        fake.step_time = 0.5  # slow enough to see the grid fill in
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        _open(page, url)
        page.locator("#prompt textarea").fill("a lighthouse at dawn")
        page.get_by_label("Width").fill("128")
        page.get_by_label("Height").fill("128")
        page.locator("#plot").get_by_text("X/Y/Z plot").first.click()

        # A bad axis first: a sentence, nothing queued.
        _pick(page, "#plot-x-param", "steps")
        page.locator("#plot-x-values textarea").fill("1-9")
        _pick(page, "#plot-y-param", "cfg")
        page.locator("#plot-y-values textarea").fill("1-8")
        page.locator("#run-plot").click()
        expect(page.get_by_text("more than 64: confirm").first).to_be_visible(timeout=30_000)
        assert fake.prompts == []

        page.locator("#plot-x-values textarea").fill("2, 4")
        page.locator("#plot-y-values textarea").fill("5-7 [2]")
        page.locator("#run-plot").click()
        status = page.locator("#plot-status")
        expect(status).to_contain_text(re.compile(r"[1-4] of 4 cell\(s\) finished"), timeout=60_000)
        fake.hold = True  # ComfyUI starts no more prompts: at most the one running ends, so the grid stays partial
        expect(page.locator("#plot-grid img")).to_be_visible(timeout=60_000)  # drawn from the first cells
        partial = status.inner_text()
        page.locator("#plot-grid").scroll_into_view_if_needed()
        shot(page, "toolbox-plot-filling-in")
        fake.hold = False
        expect(status).to_contain_text("the labelled grid", timeout=90_000)
        expect(status).to_contain_text("4 of 4")
        page.locator("#plot-grid").scroll_into_view_if_needed()
        shot(page, "toolbox-plot-grid")
        assert "labelled" not in partial  # it was seen before the end
        assert len(fake.prompts) == 4
        gallery = page.locator("#gallery").bounding_box()  # four bars, and the results still in their column
        assert gallery is not None and gallery["x"] + gallery["width"] <= 1400
        steps = sorted(inputs_of(p["prompt"], "KSampler")["steps"] for p in fake.prompts)
        assert steps == [2, 2, 4, 4]
        page.close()
