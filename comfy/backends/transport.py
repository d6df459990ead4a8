"""The one place where httpx, httpx-ws and anyio errors become :class:`~comfy.errors.ServerError` subclasses.

In the style of httpx's ``map_httpcore_exceptions``: every call to a ComfyUI server, HTTP or WebSocket, runs
inside :func:`map_errors`, so callers see only the studio's errors, each saying what failed and whether a
retry may help.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import anyio
import httpx
import httpx_ws

from comfy.errors import ComfyError, ServerError, ServerTimeout, ServerUnavailable, describe_transport_failure

__all__ = ["map_errors"]


@contextlib.contextmanager
def map_errors(what: str) -> Iterator[None]:
    """Turn httpx and httpx-ws exceptions into :class:`ServerError` subclasses (the one mapping point)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServerTimeout(f"ComfyUI did not answer in time ({what}).") from exc
    except httpx.TransportError as exc:
        raise ServerUnavailable(f"Cannot reach the ComfyUI server ({what}): {describe_transport_failure(exc)}.") from exc
    except httpx_ws.WebSocketUpgradeError as exc:
        status = exc.response.status_code
        hint = " Check COMFYUI_HEADERS if a proxy needs credentials." if status in (401, 403) else ""
        # An HTTP answer: the server (or a proxy in front of it) is up and refuses this, so it carries a status.
        raise ServerUnavailable(f"ComfyUI (or a proxy in front of it) refused the event WebSocket with HTTP "
                                f"{status}; without it no job can be followed.{hint}", status=status) from exc
    except httpx_ws.WebSocketDisconnect as exc:
        raise ServerUnavailable(f"ComfyUI closed the event WebSocket (code {exc.code}).") from exc
    except (httpx_ws.WebSocketNetworkError, httpx_ws.HTTPXWSException) as exc:
        raise ServerUnavailable(f"The event WebSocket to ComfyUI broke ({what}).") from exc
    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
        # A socket held by its own task (Spare) whose reader died: its frame stream is closed under us.
        raise ServerUnavailable(f"The event WebSocket to ComfyUI broke ({what}).") from exc
    except httpx.HTTPError as exc:  # the rest: invalid URLs, decoding errors, stream misuse
        raise ServerError(f"Talking to ComfyUI failed ({what}): {exc}") from exc


def unwrap_group(group: BaseExceptionGroup) -> BaseException:
    # httpx-ws runs the socket in an anyio task group, which wraps anything raised inside.
    leaves = list(_leaves(group))
    for leaf in leaves:
        if isinstance(leaf, ComfyError):
            return leaf
    return leaves[0] if leaves else group


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
