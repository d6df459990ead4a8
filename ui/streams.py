"""How many of the page's streams (``watch``, the Gradio API's ``job_status``) one caller holds at once.

Each stream subscribes to every job event and reads the queue while it waits, so a caller opening hundreds
(under made-up session hashes, through ``/gradio_api/queue/join``) would cost every other user. A caller is
the logged-in user, or the address of an open page's visitor. The REST streams have their own bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gradio as gr

__all__ = ["PageStreams", "STREAMS_PER_CALLER"]

#: Streams one caller may hold open at once: a few tabs, each with its page's stream and some API followers.
STREAMS_PER_CALLER = 16


class PageStreams:
    """Open streams per caller (one event loop: no lock needed)."""

    def __init__(self, limit: int = STREAMS_PER_CALLER) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    @staticmethod
    def caller(request: Any, owner: str | None) -> str:
        if owner is not None:
            return f"user:{owner}"
        client = getattr(request, "client", None)
        return f"ip:{getattr(client, 'host', None) or 'unknown'}"

    @contextlib.contextmanager
    def slot(self, caller: str) -> Iterator[None]:
        """Hold one of ``caller``'s slots for the stream's life; refused with a sentence past the limit."""
        if self._open.get(caller, 0) >= self.limit:
            raise gr.Error(f"You already follow jobs in {self.limit} streams (tabs or API calls); close some "
                           "before opening more.")
        self._open[caller] = self._open.get(caller, 0) + 1
        try:
            yield
        finally:
            left = self._open[caller] - 1
            if left:
                self._open[caller] = left
            else:
                del self._open[caller]
