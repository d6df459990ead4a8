"""Bad numbers typed on the real page, in headless Chromium: a sentence, nothing queued, the page keeps working."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.comfyui import FakeComfy
from tests.test_ui_browser import browser, sync_api  # noqa: F401 - the fixture
from tests.ui_support import running_app


@pytest.mark.slow
def test_a_huge_seed_and_steps_out_of_range_are_refused_and_the_page_still_generates(browser, tmp_path: Path) -> None:  # noqa: F811
    expect = sync_api.expect
    with FakeComfy(step_time=0.02, node_time=0.01) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#checkpoint input")).to_have_value("random-sd15.safetensors", timeout=30_000)
        page.locator("#prompt textarea").fill("a lighthouse at dawn")
        seed = page.get_by_label("Seed (-1 = random)")
        seed.fill("100000000000000000000000")
        seed.press("Tab")
        page.locator("#generate-btn").click()
        expect(page.get_by_text("cannot be typed exactly in a browser").first).to_be_visible(timeout=30_000)

        seed.fill("42")
        steps = page.get_by_label("Steps")
        steps.fill("10000")
        steps.press("Tab")
        expect(steps).to_have_value("10000")  # kept as typed, not clamped
        page.locator("#generate-btn").click()
        expect(page.get_by_text("steps is 10000; it must be between 1 and 150").first).to_be_visible(timeout=30_000)
        assert fake.prompts == []  # nothing was queued

        steps.fill("3")
        steps.press("Tab")
        page.locator("#generate-btn").click()
        expect(page.locator("#gallery img").first).to_be_visible(timeout=60_000)  # the page still works
        assert len(fake.prompts) == 1
