"""Checking logins from ``AUTH_USERS``: plain passwords or PBKDF2 hashes, compared in constant time.

A hash looks like ``pbkdf2_sha256$<iterations>$<salt>$<hex digest>``; make one with
``python -m comfy hash-password``. Plain passwords work too, for a quick private share.

The same logins guard the page (Gradio calls :meth:`PasswordChecker.check`) and the REST API (HTTP Basic).
A hash costs ~0.3 s of CPU, so the work never runs on the event loop: it runs in a small pool of its own
(a flood of wrong logins queues there, it does not starve other threads). A wrong login costs the same
whether or not the user exists: an unknown name is checked against a dummy hash of the configured cost.
Logins that succeeded are remembered (an HMAC of name and password under a per-process secret), so a
REST client sending Basic on every request pays the hash once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

__all__ = ["hash_password", "check_password", "PasswordChecker"]

_PREFIX = "pbkdf2_sha256"
_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
_REMEMBERED = 1024  # successful logins kept; the oldest is forgotten first
_CHECKERS = 2  # threads hashing passwords at once (the machine's other work keeps the rest)


def hash_password(password: str, *, iterations: int = _ITERATIONS, salt: str | None = None) -> str:
    """A ``pbkdf2_sha256$...`` string to put in AUTH_USERS instead of the password.

    >>> check_password("s3cret", hash_password("s3cret", iterations=1000))
    True
    """
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{_PREFIX}${iterations}${salt}${digest}"


def _iterations(stored: str) -> int | None:
    parts = stored.split("$")
    if len(parts) == 4 and parts[0] == _PREFIX and parts[1].isdigit():
        return int(parts[1])
    return None


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash, or a plain password)."""
    parts = stored.split("$")
    if _iterations(stored) is not None:
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), parts[2].encode(), int(parts[1])).hex()
        return hmac.compare_digest(digest, parts[3])
    return hmac.compare_digest(password.encode(), stored.encode())


class PasswordChecker:
    """Checks (username, password) against ``AUTH_USERS``.

    :meth:`check` is what Gradio's login route and the REST API await; calling the object checks
    synchronously (blocking: never on the event loop).
    """

    def __init__(self, users: dict[str, str]) -> None:
        self._users = dict(users)
        rounds = [n for n in map(_iterations, self._users.values()) if n is not None]
        # An unknown name does the work of the costliest configured hash, so timing does not tell names apart.
        self._dummy = hash_password(secrets.token_urlsafe(16), iterations=max(rounds), salt=secrets.token_hex(16)) \
            if rounds else secrets.token_urlsafe(16)
        self._secret = secrets.token_bytes(32)
        self._remembered: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def users(self) -> list[str]:
        return list(self._users)

    def __call__(self, username: str, password: str) -> bool:
        stored = self._users.get(username)
        if stored is None or _iterations(stored) is None:
            check_password(password, self._dummy)  # every check costs one hash, whoever is asked about
        return stored is not None and check_password(password, stored)

    def _fingerprint(self, username: str, password: str) -> bytes:
        return hmac.new(self._secret, f"{username}\0{password}".encode(), hashlib.sha256).digest()

    def remembered(self, username: str, password: str) -> bool:
        """Whether this exact login succeeded before (cheap: safe to call on the event loop)."""
        fingerprint = self._fingerprint(username, password)  # keyed by a secret: a lookup's timing tells nothing
        with self._lock:
            if self._remembered.get(fingerprint) != username:
                return False
            self._remembered.move_to_end(fingerprint)
            return True

    def verify(self, username: str, password: str) -> bool:
        """Check (blocking) and remember a success."""
        if self.remembered(username, password):
            return True
        ok = self(username, password)
        if ok:
            fingerprint = self._fingerprint(username, password)
            with self._lock:
                self._remembered[fingerprint] = username
                while len(self._remembered) > _REMEMBERED:
                    self._remembered.popitem(last=False)
        return ok

    async def check(self, username: str, password: str) -> bool:
        """Check without blocking the event loop: a remembered login at once, else in the checkers' threads."""
        if self.remembered(username, password):
            return True
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_CHECKERS, thread_name_prefix="password-check")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.verify, username, password)
