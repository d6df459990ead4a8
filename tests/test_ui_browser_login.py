"""The login form in a real Chromium: a refused attempt (rate limited) says why, on the form itself."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.comfyui import FakeComfy
from tests.test_ui_browser import SHOTS, browser, sync_api  # noqa: F401 - the fixture
from tests.ui_support import running_app


def test_a_rate_limited_login_says_so_on_the_form(browser, tmp_path: Path) -> None:  # noqa: F811
    with FakeComfy() as comfy, running_app(comfy.url, tmp_path / "data", AUTH_USERS="ann:pw1",
                                           STUDIO_RATE_LIMIT_PER_MINUTE="2") as url:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(url)
        for password in ("guess-1", "guess-2", "pw1"):  # the third is right, but the budget is spent
            page.fill("input[type=text]", "ann")
            page.fill("input[type=password]", password)
            with page.expect_response(lambda r: r.url.rstrip("/").endswith("/login")) as answer:
                page.get_by_role("button", name="Login").click()
        assert answer.value.status == 429
        note = page.locator("#studio-login-note")
        sync_api.expect(note).to_contain_text("Too many login attempts")
        sync_api.expect(page.locator("p.creds")).to_be_hidden()  # not "Incorrect Credentials": it may be right
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "login_rate_limited.png"))
