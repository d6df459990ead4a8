"""Checking UI logins from ``AUTH_USERS``: plain passwords or PBKDF2 hashes, compared in constant time.

A hash looks like ``pbkdf2_sha256$<iterations>$<salt>$<hex digest>``; make one with
``python -m comfy hash-password``. Plain passwords work too, for a quick private share.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["hash_password", "check_password", "PasswordChecker"]

_PREFIX = "pbkdf2_sha256"
_ITERATIONS = 600_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256


def hash_password(password: str, *, iterations: int = _ITERATIONS, salt: str | None = None) -> str:
    """A ``pbkdf2_sha256$...`` string to put in AUTH_USERS instead of the password.

    >>> check_password("s3cret", hash_password("s3cret", iterations=1000))
    True
    """
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"{_PREFIX}${iterations}${salt}${digest}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash, or a plain password)."""
    parts = stored.split("$")
    if len(parts) == 4 and parts[0] == _PREFIX and parts[1].isdigit():
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), parts[2].encode(), int(parts[1])).hex()
        return hmac.compare_digest(digest, parts[3])
    return hmac.compare_digest(password.encode(), stored.encode())


class PasswordChecker:
    """The ``auth`` callable Gradio calls with (username, password)."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = dict(users)

    def __call__(self, username: str, password: str) -> bool:
        stored = self._users.get(username)
        if stored is None:
            check_password(password, hash_password("x", iterations=1000))  # same work either way
            return False
        return check_password(password, stored)
