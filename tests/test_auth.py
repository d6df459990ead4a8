"""Logins: a wrong one costs the same whoever is named, and no password check ever runs on the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path

import httpx
import pytest

from app import create_app
from comfy.auth import PasswordChecker, hash_password
from tests.api_support import serve
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy

ROUNDS = 20_000  # cheap for a test; the real default is 600k


@pytest.fixture
def rounds_seen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every PBKDF2 run: (iterations, thread id). The standard library's function, counted."""
    seen: list[tuple[int, int]] = []
    real = hashlib.pbkdf2_hmac

    def counted(name: str, password: bytes, salt: bytes, iterations: int, *args: object) -> bytes:
        seen.append((iterations, threading.get_ident()))
        return real(name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
    return seen


def test_a_wrong_login_does_the_same_work_for_a_known_and_an_unknown_name(rounds_seen) -> None:
    checker = PasswordChecker({"ann": hash_password("pw1", iterations=ROUNDS), "bob": "plain-pw2"})
    rounds_seen.clear()
    for name in ("ann", "nobody", "bob"):
        assert checker(name, "wrong-guess") is False
        assert [n for n, _ in rounds_seen] == [ROUNDS], name  # one hash of the configured cost, whoever it is
        rounds_seen.clear()
    assert checker("ann", "pw1") and checker("bob", "plain-pw2")


async def test_checks_run_off_the_loop_and_a_success_is_remembered(rounds_seen) -> None:
    checker = PasswordChecker({"ann": hash_password("pw1", iterations=ROUNDS)})
    rounds_seen.clear()
    assert await checker.check("ann", "pw1") is True
    assert await checker.check("nobody", "pw1") is False
    assert len(rounds_seen) == 2 and threading.get_ident() not in {t for _, t in rounds_seen}
    rounds_seen.clear()
    assert await checker.check("ann", "pw1") is True  # remembered: no second hash
    assert await checker.check("ann", "pw1-wrong") is False
    assert [n for n, _ in rounds_seen] == [ROUNDS]


async def test_the_page_login_never_blocks_the_event_loop(tmp_path: Path, fake_comfy: FakeComfy,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradio's /login awaits our check: while a wrong login's hash is still running, /healthz answers.

    The hash is held until /healthz has answered; were it on the event loop, nothing would answer and
    the hold would run out (``released`` False).
    """
    settings = make_settings(tmp_path, fake_comfy.url, auth_users=f"ann:{hash_password('pw1', iterations=1000)}")
    entered, release = threading.Event(), threading.Event()
    released: list[bool] = []
    real = hashlib.pbkdf2_hmac

    def held(name: str, password: bytes, salt: bytes, iterations: int, *args: object) -> bytes:
        if password == b"wrong-guess":
            entered.set()
            released.append(release.wait(timeout=10))
        return real(name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", held)
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        login = asyncio.create_task(http.post("/login/", data={"username": "ann", "password": "wrong-guess"}))
        async with asyncio.timeout(15):
            while not entered.is_set():
                await asyncio.sleep(0.01)
        assert (await http.get("/healthz")).status_code == 200
        release.set()
        assert (await login).status_code == 400
        assert released == [True]
        ok = await http.post("/login/", data={"username": "ann", "password": "pw1"})
        assert ok.status_code == 200 and ok.json() == {"success": True}


@pytest.mark.parametrize(("given", "says", "never"), [
    ({}, ["open to anyone"], ["needs"]),
    ({"api_keys": "k1,k2"}, ["page is OPEN", "2 API key(s) as Bearer"], ["HTTP Basic"]),
    ({"auth_users": "ann:pw1"}, ["page needs a login (1 user(s)", "the same logins as HTTP Basic"], ["OPEN", "Bearer"]),
    ({"auth_users": "ann:pw1", "api_keys": "k1"}, ["1 API key(s) as Bearer or the same logins as HTTP Basic"],
     ["OPEN"]),
])
def test_the_start_up_line_says_what_is_protected(tmp_path: Path, given: dict, says: list[str],
                                                  never: list[str]) -> None:
    from app import protection

    line = protection(make_settings(tmp_path, "http://127.0.0.1:1", **given))
    assert all(words in line for words in says) and not any(words in line for words in never), line
    assert "pw1" not in line and "k1" not in line and "ann" not in line
