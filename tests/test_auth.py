"""Logins: a wrong one costs the same whoever is named, no password check ever runs on the event loop, the
rate limit is paid before a password is looked at (on the page's login form and on HTTP Basic alike), and a
flood of logins is refused at once rather than queued."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from pathlib import Path

import httpx
import pytest

from app import create_app
from comfy.auth import CHECKERS, WAITING, PasswordChecker, hash_password
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


def test_a_wrong_login_costs_the_costliest_hash_whoever_is_named(rounds_seen) -> None:
    """A user with a cheaper hash (fewer rounds) or a plain password costs as much as the costliest one."""
    checker = PasswordChecker({"ann": hash_password("pw1", iterations=ROUNDS),
                               "bob": hash_password("pw2", iterations=ROUNDS // 20), "carol": "plain-pw3"})
    rounds_seen.clear()
    for name in ("ann", "bob", "carol", "nobody"):
        assert checker(name, "wrong-guess") is False
        assert sum(n for n, _ in rounds_seen) == ROUNDS, (name, rounds_seen)
        rounds_seen.clear()
    assert checker("bob", "pw2") and checker("carol", "plain-pw3")


def basic(user: str, password: str, address: str | None = None) -> dict[str, str]:
    headers = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return headers | ({"X-Forwarded-For": address} if address else {})  # uvicorn takes it from 127.0.0.1


async def test_a_limited_login_is_refused_before_its_password_is_checked(tmp_path: Path, fake_comfy: FakeComfy,
                                                                         rounds_seen) -> None:
    """3 attempts a minute: the 4th is refused unchecked (right or wrong: 429 says nothing), on the page's
    form and on HTTP Basic, which share the budget of the user name and of the address."""
    settings = make_settings(tmp_path, fake_comfy.url, rate_limit_per_minute=3,
                             auth_users=f"ann:{hash_password('pw1', iterations=ROUNDS)},bob:pw2")
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        for _ in range(2):
            assert (await http.post("/login/", data={"username": "ann", "password": "guess"})).status_code == 400
        assert (await http.get("/api/v1/jobs", headers=basic("ann", "guess", "10.0.0.7"))).status_code == 401
        rounds_seen.clear()
        right = await http.post("/login/", data={"username": "ann", "password": "pw1"})
        assert right.status_code == 429 and 1 <= int(right.headers["retry-after"]) <= 20, right.text
        assert "Too many login attempts" in right.json()["detail"]
        api = await http.get("/api/v1/jobs", headers=basic("ann", "pw1", "10.0.0.8"))  # the user's budget
        assert api.status_code == 429 and "Too many login attempts" in api.json()["error"]["message"]
        assert rounds_seen == []  # nothing was hashed: refused before the check
        page_html = (await http.get("/")).text
        assert "studio-login-note" in page_html  # the login form shows that sentence

        # Another user is not limited by ann's budget, but this address has spent its own (2 wrong here).
        assert (await http.post("/login/", data={"username": "bob", "password": "pw2"})).status_code == 200
        assert (await http.get("/api/v1/jobs", headers=basic("bob", "pw2", "10.0.0.9"))).status_code == 200
        assert (await http.post("/login/", data={"username": "bob", "password": "no"})).status_code == 400
        assert (await http.post("/login/", data={"username": "bob", "password": "pw2"})).status_code == 429


async def test_a_flood_of_logins_is_refused_at_once_not_queued(tmp_path: Path, fake_comfy: FakeComfy,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """While CHECKERS + WAITING checks are in flight, one more login answers 503 at once with a sentence.

    The flood's hashes are held until the extra logins have answered; were they queued behind the flood,
    they would not answer until the hold ran out (``released`` False).
    """
    users = {"ann": hash_password("pw1", iterations=1000)}
    settings = make_settings(tmp_path, fake_comfy.url, rate_limit_per_minute=0, auth_users=f"ann:{users['ann']}")
    checker = PasswordChecker(users)
    release = threading.Event()
    released: list[bool] = []
    real = hashlib.pbkdf2_hmac

    def held(name: str, password: bytes, salt: bytes, iterations: int, *args: object) -> bytes:
        if password == b"flood":
            released.append(release.wait(timeout=20))
        return real(name, password, salt, iterations, *args)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", held)
    async with serve(create_app(settings, passwords=checker)) as url, \
            httpx.AsyncClient(base_url=url, timeout=60) as http:
        flood = [asyncio.create_task(http.post("/login/", data={"username": "ann", "password": "flood"}))
                 for _ in range(CHECKERS + WAITING)]
        async with asyncio.timeout(15):
            while checker.in_flight < CHECKERS + WAITING:
                await asyncio.sleep(0.01)
        page = await http.post("/login/", data={"username": "ann", "password": "pw1"})
        api = await http.get("/api/v1/jobs", headers=basic("ann", "pw1"))
        release.set()
        assert page.status_code == 503 and "busy checking other logins" in page.json()["detail"], page.text
        assert api.status_code == 503 and api.headers["retry-after"] and "busy" in api.json()["error"]["message"]
        assert [r.status_code for r in await asyncio.gather(*flood)] == [400] * (CHECKERS + WAITING)
        assert released == [True] * (CHECKERS + WAITING)
        assert (await http.post("/login/", data={"username": "ann", "password": "pw1"})).status_code == 200


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


async def test_guesses_at_a_name_from_elsewhere_do_not_lock_out_her_remembered_login() -> None:
    checker = PasswordChecker({"ann": hash_password("pw1", iterations=1000)}, attempts_per_minute=10)
    assert (await checker.attempt("ann", "pw1", address="10.0.0.5")).ok  # her client, remembered from now on
    for i in range(12):  # a stranger spends ann's name budget from many addresses
        await checker.attempt("ann", f"guess{i}", address=f"203.0.113.{i}")
    assert (await checker.attempt("ann", "wrong", address="203.0.113.99")).outcome == "limited"
    assert (await checker.attempt("ann", "pw1", address="10.0.0.5")).outcome == "ok"  # not held up
    # The skip is no oracle: the right password from an address it never succeeded from is still limited.
    assert (await checker.attempt("ann", "pw1", address="198.51.100.7")).outcome == "limited"


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
