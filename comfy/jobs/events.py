"""Job events for subscribers in this process (UI sessions, API streams, the CLI's progress bar).

The queue on disk is the source of truth for a job's state; the bus adds what is too fast or too
large to store (every sampler step, preview images). Publishing never blocks the worker: each
subscriber has a bounded buffer, and a slow one loses old previews, never a state change.
Subscribers may live on other threads' event loops (Gradio runs handlers there).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["JobEvent", "EventBus", "Subscription", "EventKind"]

EventKind = Literal["queued", "started", "progress", "preview", "succeeded", "failed", "cancelled", "retrying"]
FINAL_KINDS = frozenset({"succeeded", "failed", "cancelled"})
#: Previews one subscriber keeps unread: the newest is what a late reader wants to see.
MAX_PREVIEWS = 2


@dataclass(frozen=True)
class JobEvent:
    """Something happened to a job. ``job`` is the stored record (as a dict) when the state changed."""

    job_id: str
    kind: EventKind
    progress: float | None = None
    node: str | None = None
    step: int | None = None
    steps: int | None = None
    preview: bytes | None = field(default=None, repr=False)
    preview_mime: str | None = None
    message: str | None = None
    job: dict[str, Any] | None = field(default=None, repr=False)
    #: On ``succeeded``: seconds spent waiting in our queue, executing on ComfyUI, downloading outputs.
    timings: dict[str, float] | None = None
    #: On ``failed`` / ``retrying``: the error's code (``prompt_rejected``, ``server_unavailable``...).
    error_code: str | None = None
    #: When the worker saw it (epoch seconds): how late a subscriber is, is ``time.time() - at``.
    at: float = field(default_factory=time.time)

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS


class Subscription:
    """An async iterator of :class:`JobEvent`; close it (or use ``async with``) when done.

    Bounded, so a subscriber that stops reading costs little: it keeps at most ``max_previews`` previews
    (the newest; a preview can be hundreds of KB) and ``maxsize`` events in all, dropping the oldest
    progress ticks first and never a final event.
    """

    def __init__(self, bus: EventBus, job_id: str | None, maxsize: int, max_previews: int = MAX_PREVIEWS) -> None:
        self._bus = bus
        self.job_id = job_id
        self._loop = asyncio.get_running_loop()
        self._events: deque[JobEvent] = deque()
        self._ready = asyncio.Event()
        self._maxsize = maxsize
        self._max_previews = max_previews
        self._previews = 0

    @property
    def buffered(self) -> int:
        """Events waiting to be read."""
        return len(self._events)

    def _offer(self, event: JobEvent) -> None:
        # Runs on the subscriber's loop.
        if event.kind == "preview":
            if self._previews >= self._max_previews:
                self._drop(lambda e: e.kind == "preview")
            self._previews += 1
        if len(self._events) >= self._maxsize:
            self._drop(lambda e: e.kind in ("preview", "progress")) or self._drop(lambda e: not e.final)
        self._events.append(event)
        self._ready.set()

    def _drop(self, which: Callable[[JobEvent], bool]) -> bool:
        """Remove the oldest event ``which`` accepts; False when there is none."""
        for index, old in enumerate(self._events):
            if which(old):
                del self._events[index]
                if old.kind == "preview":
                    self._previews -= 1
                return True
        return False

    def _pop(self) -> JobEvent:
        event = self._events.popleft()
        if event.kind == "preview":
            self._previews -= 1
        return event

    async def get(self, timeout: float | None = None) -> JobEvent:
        """The next event; raises ``TimeoutError`` when none comes within ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not self._events:
                self._ready.clear()
                await self._ready.wait()
        return self._pop()

    def drain(self) -> list[JobEvent]:
        """The events already waiting, without waiting for more."""
        return [self._pop() for _ in range(len(self._events))]

    def __aiter__(self) -> AsyncIterator[JobEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[JobEvent]:
        while True:
            yield await self.get()

    def close(self) -> None:
        self._bus._remove(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of job events; also remembers each running job's latest preview for late subscribers."""

    def __init__(self, *, buffer: int = 256) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._buffer = buffer
        self._latest_preview: dict[str, JobEvent] = {}

    def subscribe(self, job_id: str | None = None) -> Subscription:
        """Events of one job, or of every job when ``job_id`` is None. Call from a running loop."""
        sub = Subscription(self, job_id, self._buffer)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def latest_preview(self, job_id: str) -> JobEvent | None:
        return self._latest_preview.get(job_id)

    def publish(self, event: JobEvent) -> None:
        """Deliver to every matching subscriber; safe from any thread, never blocks."""
        if event.kind == "preview":
            self._latest_preview[event.job_id] = event
        elif event.final:
            self._latest_preview.pop(event.job_id, None)
        with self._lock:
            targets = [s for s in self._subs if s.job_id in (None, event.job_id)]
        for sub in targets:
            try:
                sub._loop.call_soon_threadsafe(sub._offer, event)
            except RuntimeError:  # that subscriber's loop has closed
                self._remove(sub)
