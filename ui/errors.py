"""Engine errors as the page shows them: one readable sentence (``gr.Error``), the trace only in the log."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from comfy import ComfyError, JobNotFound, WorkflowError

__all__ = ["friendly"]

logger = logging.getLogger("ui.handlers")


def _to_gr_error(exc: Exception) -> gr.Error:
    if isinstance(exc, ComfyError):
        # An ordinary error is one line in the log; Gradio would print the whole chained traceback. A job
        # id that is not there (or another user's) is a caller's guess: not worth a line at all.
        user = isinstance(exc, (WorkflowError, JobNotFound))
        level = logging.DEBUG if isinstance(exc, JobNotFound) else logging.INFO if user else logging.WARNING
        logger.log(level, "%s: %s", "Refused" if user else "Backend problem", exc)
        return gr.Error(str(exc), title="Cannot do that" if user else "Backend problem", print_exception=False)
    logger.exception("Unexpected error in a UI handler")
    return gr.Error(f"Something went wrong ({type(exc).__name__}); the details are in the server log.")


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine errors into readable ``gr.Error`` modals, for plain and async handlers."""
    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - shown as a sentence, logged with its trace
                raise _to_gr_error(exc) from exc
        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _to_gr_error(exc) from exc
    return run


def _owner(request: gr.Request | None, auth_on: bool) -> str | None:
    """With logins on, each user has their own jobs; without, the studio is one shared workspace.

    A request with a Gradio login acts as it even without ``AUTH_USERS``: then only an MCP tool's call,
    with an API key, has one (:mod:`api.mcp_logins`), and acts as that key, as on the REST API.
    """
    username = getattr(request, "username", None)
    if username:
        return username
    if auth_on:  # Gradio lets no one in without a login; refuse rather than fall back to "shared"
        raise gr.Error("Log in first: this studio has logins.")
    return None
