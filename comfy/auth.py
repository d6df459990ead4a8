"""Checking logins from ``AUTH_USERS``: plain passwords or PBKDF2 hashes, compared in constant time.

A hash looks like ``pbkdf2_sha256$<iterations>$<salt>$<hex digest>``; make one with
``python -m comfy hash-password``. Plain passwords work too, for a quick private share.

The same logins guard the page (Gradio's login form) and the REST API (HTTP Basic), through
:meth:`PasswordChecker.attempt`, which settles an attempt in this order:

1. **Rate limit first.** A token is taken from the bucket of the caller's address and from that of the
   user name (``STUDIO_RATE_LIMIT_PER_MINUTE`` each) *before* anything is compared, and given back when the
   login was right. An empty bucket refuses the attempt unchecked, right or wrong, so the limit is no
   oracle (were it charged after the check, a limited guess would say 429 when wrong and 200 when right).
   A login that succeeded before *from the same address* skips the user name's bucket (it still pays the
   address's): someone guessing a user's password elsewhere cannot lock out her remembered REST client or
   her browser, and the skip tells a guesser nothing (it needs the right password from that address first).
2. **Remembered logins** (an HMAC of name and password under a per-process secret) succeed at once, so a
   REST client sending Basic on every request pays the hash once.
3. **Bounded work.** A hash costs ~0.3 s of CPU and never runs on the event loop: it runs in a small pool
   of its own, with at most :data:`WAITING` checks waiting for it. One more is refused at once ("busy"),
   rather than queued behind a flood of wrong logins.
4. **Same cost for everyone.** Every check does the work of the costliest configured hash: an unknown
   name, a plain password or a cheaper hash is padded with PBKDF2 rounds up to it, so timing does not tell
   names apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from comfy.ratelimit import TokenBucket

__all__ = ["hash_password", "check_password", "PasswordChecker", "Attempt", "CHECKERS", "WAITING"]

_PREFIX = "pbkdf2_sha256"
_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256
_REMEMBERED = 1024  # successful logins kept; the oldest is forgotten first
#: Threads hashing passwords at once (the machine's other work keeps the rest).
CHECKERS = 2
#: Checks that may wait for a hashing thread; past this an attempt is refused as busy, at once.
WAITING = 6
#: What a busy refusal tells the caller to wait (seconds): a few hashes' time.
BUSY_RETRY = 2.0


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


@dataclass(frozen=True)
class Attempt:
    """What one login attempt came to.

    >>> Attempt("limited", 2.4).sentence()
    'Too many login attempts from this address or for this user. Try again in 3 s.'
    """

    #: ``ok``; ``wrong`` (unknown name or wrong password: never said which); ``limited`` (the rate limit,
    #: nothing checked); ``busy`` (too many checks waiting, nothing checked).
    outcome: Literal["ok", "wrong", "limited", "busy"]
    #: Seconds to wait before trying again (limited, busy).
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def refused(self) -> bool:
        """Turned away before any check (limited or busy): the caller should wait, not fix the password."""
        return self.outcome in ("limited", "busy")

    @property
    def wait_seconds(self) -> int:
        """:attr:`retry_after` in whole seconds, at least 1 (for a ``Retry-After`` header)."""
        return max(1, math.ceil(self.retry_after))

    def sentence(self) -> str:
        if self.outcome == "limited":
            return (f"Too many login attempts from this address or for this user. "
                    f"Try again in {self.wait_seconds} s.")
        if self.outcome == "busy":
            return f"The server is busy checking other logins. Try again in {self.wait_seconds} s."
        return "The user name or password is not valid." if self.outcome == "wrong" else "Logged in."


class PasswordChecker:
    """Checks (username, password) against ``AUTH_USERS``; see the module docstring for the order.

    ``attempts_per_minute`` is each address's and each user name's budget of login attempts (0 = no
    limit); ``checkers`` and ``waiting`` bound the hashing (threads, and checks waiting for them).
    Calling the object checks synchronously (blocking: never on the event loop).
    """

    def __init__(self, users: dict[str, str], *, attempts_per_minute: int = 0, checkers: int = CHECKERS,
                 waiting: int = WAITING) -> None:
        self._users = dict(users)
        rounds = [n for n in map(_iterations, self._users.values()) if n is not None]
        #: Every check does this many PBKDF2 rounds in all (the costliest configured hash), whoever is named.
        self.cost = max(rounds, default=0)
        self._secret = secrets.token_bytes(32)
        self._remembered: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._checkers = checkers
        self._max_in_flight = checkers + waiting
        self._in_flight = 0
        self.attempts = TokenBucket(attempts_per_minute)

    @property
    def users(self) -> list[str]:
        return list(self._users)

    @property
    def in_flight(self) -> int:
        """Checks hashing or waiting to hash now."""
        return self._in_flight

    def __call__(self, username: str, password: str) -> bool:
        stored = self._users.get(username)
        spent = (_iterations(stored) or 0) if stored is not None else 0
        if spent < self.cost:  # pad up to the costliest hash: an unknown name, a plain or a cheaper one
            hashlib.pbkdf2_hmac("sha256", password.encode(), self._secret, self.cost - spent)
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

    def _known_at(self, username: str, password: str, address: str) -> bool:
        fingerprint = self._fingerprint(f"{username}\0{address}", password)
        with self._lock:
            return self._remembered.get(fingerprint) == username

    def _remember_at(self, username: str, password: str, address: str) -> None:
        fingerprint = self._fingerprint(f"{username}\0{address}", password)
        with self._lock:
            self._remembered[fingerprint] = username
            while len(self._remembered) > _REMEMBERED:
                self._remembered.popitem(last=False)

    async def attempt(self, username: str, password: str, *, address: str | None = None) -> Attempt:
        """Settle one login attempt without blocking the event loop (the order is the module docstring's)."""
        known_here = address is not None and self._known_at(username, password, address)
        buckets = ([] if known_here else [f"user:{username}"]) + ([f"ip:{address}"] if address else [])
        wait = self._take(buckets)
        if wait:
            return Attempt("limited", wait)
        if self.remembered(username, password):
            self._give_back(buckets)
            if address is not None and not known_here:
                self._remember_at(username, password, address)
            return Attempt("ok")
        if not self._enter():
            self._give_back(buckets)  # nothing was checked: it was no guess
            return Attempt("busy", BUSY_RETRY)
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._checkers, thread_name_prefix="password-check")
            ok = await asyncio.get_running_loop().run_in_executor(self._pool, self.verify, username, password)
        finally:
            self._leave()
        if ok:
            self._give_back(buckets)
            if address is not None:
                self._remember_at(username, password, address)
        return Attempt("ok" if ok else "wrong")

    async def check(self, username: str, password: str) -> bool:
        """Whether the login is right (``attempt`` with no address; refused attempts are False)."""
        return (await self.attempt(username, password)).ok

    def _take(self, buckets: list[str]) -> float:
        """Take a token from each bucket, or from none: the longest wait when one is empty (0 when taken)."""
        taken: list[str] = []
        for bucket in buckets:
            wait = self.attempts.acquire(bucket)
            if wait:
                self._give_back(taken)
                return wait
            taken.append(bucket)
        return 0.0

    def _give_back(self, buckets: list[str]) -> None:
        for bucket in buckets:
            self.attempts.give_back(bucket)

    def _enter(self) -> bool:
        with self._lock:
            if self._in_flight >= self._max_in_flight:
                return False
            self._in_flight += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
