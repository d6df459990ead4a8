"""A token-bucket rate limiter, one bucket per caller (an API key's id, a login, or a client IP).

Each bucket holds up to ``per_minute`` tokens and refills at ``per_minute / 60`` tokens a second, so
a caller may burst a minute's worth of requests and then keeps to the rate. Buckets live in memory,
per process; the least recently seen are dropped past ``max_keys`` (a dropped bucket is full again,
which only ever errs on the side of letting a request through). The REST API limits requests with it,
and :mod:`comfy.auth` limits login attempts (a token taken before a password is hashed, given back when
the login was right).

>>> clock = iter([0.0, 0.0, 0.0, 30.0]).__next__
>>> limiter = TokenBucket(2, clock=clock)
>>> limiter.acquire("k"), limiter.acquire("k"), round(limiter.acquire("k"), 1), limiter.acquire("k")
(0.0, 0.0, 30.0, 0.0)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``acquire(key)`` returns 0.0 when the request may go ahead, else the seconds until it may."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        if per_minute < 0:
            raise ValueError("per_minute must be >= 0 (0 turns the limit off)")
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, updated)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def acquire(self, key: str) -> float:
        """Take one token from ``key``'s bucket; the wait in seconds if there is none (nothing is taken)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.pop(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - updated) * self._rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self._rate
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        return wait

    def give_back(self, key: str) -> None:
        """Return a token taken by :meth:`acquire` (the attempt it paid for did not count)."""
        if not self.enabled:
            return
        now = self._clock()
        with self._lock:
            tokens, updated = self._buckets.get(key, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - updated) * self._rate + 1.0)
            self._buckets[key] = (tokens, now)

    def remaining(self, key: str) -> int:
        """Whole tokens left in ``key``'s bucket now (``per_minute`` for a caller not seen yet)."""
        with self._lock:
            tokens, updated = self._buckets.get(key, (float(self.per_minute), self._clock()))
        return int(min(float(self.per_minute), tokens + (self._clock() - updated) * self._rate))
