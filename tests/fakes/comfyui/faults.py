"""What goes wrong between a client and ComfyUI that ComfyUI itself does not do: a lost reply, a cut connection.

A proxy or a flaky network loses the answer to a request the server has already handled (ComfyUI has
queued the prompt; the client sees a reset), or a proxy refuses the WebSocket upgrade. The fake does these
through the transport of the HTTP connection, which uvicorn's h11 protocol does not expose: this subclass
puts it in the request's scope, as ``hub._TransportWSProtocol`` does for sockets.

``_Faults`` is the part of ``FakeComfy`` that stages them on purpose (a mixin, like ``_Knobs``): sockets cut
at once, or a network outage during which ComfyUI itself goes on running its queue. Imports nothing from
the rest of the package.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

_HTTP_TRANSPORT_KEY = "comfy_fake.http_transport"


class _TransportH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, exposing the connection's transport to the route handlers."""

    def handle_events(self) -> None:
        super().handle_events()
        # The request's task is created above but runs later: the scope it will read can still be amended.
        scope = getattr(self, "scope", None)
        if scope is not None and scope.get("type") == "http":
            scope.setdefault("extensions", {})[_HTTP_TRANSPORT_KEY] = self.transport


def cut_connection(scope: dict[str, Any]) -> bool:
    """Reset the request's connection now (RST, no answer); False when the transport is not known."""
    transport: asyncio.Transport | None = scope.get("extensions", {}).get(_HTTP_TRANSPORT_KEY)
    if transport is None:
        return False
    transport.abort()
    logger.info("fake ComfyUI: cut the connection before answering %s", scope.get("path"))
    return True


class _Faults:
    """FakeComfy's network faults, called from the test thread; the host provides the server's parts."""

    _loop: asyncio.AbstractEventLoop | None
    _hub: Any

    def drop_sockets(self) -> None:
        """Cut every WebSocket now, without a close frame (a network blip); prompts go on running."""
        if self._loop is not None and self._hub is not None:
            self._loop.call_soon_threadsafe(self._hub.drop_all)

    def outage(self, seconds: float) -> None:
        """No connection reaches the server for ``seconds`` (sockets cut, connections refused), while ComfyUI
        goes on running its queue and writing its history: a tunnel or a proxy in front of it went away."""
        self._run_sync(self._outage(seconds))  # type: ignore[attr-defined]

    async def _outage(self, seconds: float) -> None:
        if self._hub is not None:
            self._hub.drop_all()
        await self._stop_server()  # type: ignore[attr-defined]
        await asyncio.sleep(seconds)
        await self._start_server()  # type: ignore[attr-defined]

    def _gateway_answer(self, body: dict[str, Any]) -> Response:
        """``gateway_next``: a proxy's page now, the prompt queued by ComfyUI later (see ``_Knobs``)."""
        (status, queue_after), self.gateway_next = self.gateway_next, None  # type: ignore[has-type]
        asyncio.get_running_loop().create_task(self._take_late(body, queue_after))
        return Response(f"<html><body><h1>{status} Bad Gateway</h1></body></html>", status_code=status,
                        media_type="text/html")

    async def _take_late(self, body: dict[str, Any], queue_after: float) -> None:
        await asyncio.sleep(queue_after)
        answer = await self._take_prompt(body, None)  # type: ignore[attr-defined]
        if answer.status_code == 200:
            self.late_prompts.append(json.loads(answer.body)["prompt_id"])  # type: ignore[attr-defined]
