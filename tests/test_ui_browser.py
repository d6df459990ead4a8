"""End to end in a real headless Chromium (Debian's package) driven by Playwright, against the real app.

Open the page, type a prompt, Generate, see progress advance and a preview appear, see the image land
in the gallery, reload and find the job in the history. Screenshots go to tests/screenshots/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fakes.comfyui import FakeComfy
from tests.ui_support import running_app
from tests.toolbox_support import inputs_of

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parent / "screenshots"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium (see .ci/run)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        try:
            yield browser
        finally:
            browser.close()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.mark.slow
def test_generate_in_the_browser_then_reload_and_find_it(browser, tmp_path: Path) -> None:
    expect = sync_api.expect
    with FakeComfy(step_time=0.25, node_time=0.02) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        expect(page.locator("#status")).to_contain_text("Connected", timeout=30_000)
        expect(page.locator("#checkpoint input")).to_have_value("random-sd15.safetensors", timeout=30_000)
        page.locator("#prompt textarea").fill("a lighthouse at dawn, oil painting")
        page.locator("#generate-btn").click()

        # Progress advances step by step, and a latent preview appears.
        progress = page.locator("#progress .job.running .detail")
        expect(progress).to_contain_text("step", timeout=30_000)
        first = progress.inner_text()
        expect(progress).not_to_have_text(first, timeout=15_000)
        expect(page.locator("#preview img")).to_be_visible(timeout=15_000)
        _shot(page, "01-generating")

        # The finished image lands in the gallery, served as the saved PNG.
        gallery_img = page.locator("#gallery img").first
        expect(gallery_img).to_be_visible(timeout=60_000)
        expect(page.locator("#progress")).to_contain_text("done", timeout=30_000)
        src = gallery_img.get_attribute("src") or ""
        assert ".png" in src and "webp" not in src, src
        _shot(page, "02-done")

        # Reload: the settings are still there and the job is in the history.
        page.locator("#prompt textarea").fill("a lighthouse at dawn, oil painting, reload me")
        page.wait_for_timeout(500)  # the browser stores form values on change
        page.reload()
        expect(page.locator("#prompt textarea")).to_have_value("a lighthouse at dawn, oil painting, reload me",
                                                               timeout=30_000)
        page.get_by_role("tab", name="Queue & history").click()
        table = page.locator("#jobs-table")
        expect(table).to_contain_text("succeeded", timeout=30_000)
        expect(table).to_contain_text("a lighthouse at dawn, oil painting")
        _shot(page, "03-history")

        # Pick the job: its images and settings; "Use these settings" fills the Generate form.
        table.locator("[role=gridcell]").filter(has_text="succeeded").first.click()
        expect(page.locator("#job-detail")).to_contain_text("succeeded", timeout=15_000)
        expect(page.locator("#job-images img").first).to_be_visible(timeout=15_000)
        _shot(page, "04-job-detail")
        page.get_by_role("button", name="Use these settings").click()
        expect(page.locator("#prompt textarea")).to_have_value("a lighthouse at dawn, oil painting", timeout=15_000)
        assert len(fake.prompts) == 1



@pytest.mark.slow
def test_load_a_workflow_edit_an_input_and_run_it(browser, tmp_path: Path) -> None:
    expect = sync_api.expect
    flow = Path(__file__).parent / "fixtures" / "comfyui" / "workflows" / "txt2img_api.json"
    with FakeComfy(step_time=0.05, node_time=0.01) as fake, running_app(fake.url, tmp_path / "data") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url)
        expect(page.locator("#status")).to_contain_text("Connected", timeout=30_000)
        page.get_by_role("tab", name="Workflow").click()
        page.locator("input[type=file]").first.set_input_files(str(flow))
        page.get_by_role("button", name="Load workflow").click()
        prompt_box = page.locator("#wf-6-text textarea")
        expect(prompt_box).to_have_value("a watercolor painting of a lighthouse at dusk", timeout=30_000)
        expect(page.locator("#wf-3-sampler_name input")).to_have_value("euler")
        prompt_box.fill("a paper boat on a pond")
        _shot(page, "05-workflow")
        page.locator("#run-workflow").click()
        expect(page.locator("#gallery img").first).to_be_visible(timeout=60_000)
        assert inputs_of(fake.prompts[-1]["prompt"], "CLIPTextEncode")["text"] == "a paper boat on a pond"


@pytest.mark.slow
def test_a_pool_of_a_pod_and_runpod_serverless_in_the_browser(browser, tmp_path: Path) -> None:
    from tests.fakes.runpod_server import FakeRunPod

    expect = sync_api.expect
    with (FakeComfy(step_time=0.2, node_time=0.02) as pod, FakeRunPod(cold_start=1.0, step_time=0.2) as serverless,
          running_app(pod.url, tmp_path / "data", RUNPOD_ENDPOINT_ID=serverless.endpoint_id,
                      RUNPOD_API_KEY=serverless.api_key, RUNPOD_BASE_URL=serverless.url) as url):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        status = page.locator("#status")
        expect(status).to_contain_text("2 of 2 backends up", timeout=30_000)
        expect(status).to_contain_text("RunPod Serverless")
        assert serverless.api_key not in status.inner_html()
        page.locator("#prompt textarea").fill("a lighthouse at dawn, oil painting")
        count = page.get_by_label("Batch count")
        count.fill("3")  # two fill the pod's slots, the third goes to RunPod
        count.press("Enter")
        page.locator("#generate-btn").click()
        expect(page.locator("#progress")).to_contain_text("waiting for a GPU worker", timeout=30_000)
        expect(page.locator("#progress")).to_contain_text(f"on runpod:{serverless.endpoint_id}")
        expect(page.locator("#progress")).to_contain_text(f"on {pod.url}")
        _shot(page, "06-pool-running")
        expect(page.locator("#gallery img")).to_have_count(3, timeout=60_000)
        assert len(pod.prompts) == 2 and len(serverless.runs) == 1

        pod.stop()  # the header says so at its next refresh
        expect(status).to_contain_text("1 of 2 backends up", timeout=30_000)
        expect(status.locator("li.down")).to_contain_text(pod.url)
        _shot(page, "07-pool-one-down")


@pytest.mark.slow
def test_with_logins_each_user_sees_only_their_own_work_in_the_browser(browser, tmp_path: Path) -> None:
    expect = sync_api.expect
    with FakeComfy(step_time=0.05, node_time=0.01) as fake, \
            running_app(fake.url, tmp_path / "data", AUTH_USERS="ann:pw1,bob:pw2") as url:

        def log_in(user: str, password: str):
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.goto(url)
            page.get_by_label("username").fill(user)
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            expect(page.locator("#status")).to_contain_text("Connected", timeout=30_000)
            return page

        ann = log_in("ann", "pw1")
        ann.locator("#prompt textarea").fill("ann's lighthouse")
        ann.locator("#generate-btn").click()
        gallery_img = ann.locator("#gallery img").first
        expect(gallery_img).to_be_visible(timeout=60_000)  # her own images reach her browser
        assert gallery_img.evaluate("img => img.naturalWidth") > 0
        ann.get_by_role("tab", name="Queue & history").click()
        expect(ann.locator("#jobs-table")).to_contain_text("ann's lighthouse", timeout=30_000)
        _shot(ann, "08-logins-ann")

        bob = log_in("bob", "pw2")
        bob.get_by_role("tab", name="Queue & history").click()
        bob.wait_for_timeout(2500)  # a refresh of the history table
        assert "lighthouse" not in bob.locator("#jobs-table").inner_text()
        assert bob.locator("#gallery img").count() == 0
        _shot(bob, "09-logins-bob")
