"""ComfyUI's event WebSocket (``/ws?clientId=...``): one open socket, decoded frames, and a spare kept warm.

The socket is opened before a prompt is submitted (so no event is missed) and read until the run ends;
see :mod:`comfy.backends.protocol` for the frames and :mod:`comfy.backends.client` for its use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import httpx
import httpx_ws
import wsproto.events

from comfy.backends import protocol
from comfy.backends.protocol import Event
from comfy.backends.transport import map_errors, unwrap_group
from comfy.errors import ServerError

if TYPE_CHECKING:  # the client owns its sockets; this module only holds one
    from comfy.backends.client import ComfyClient

__all__ = ["EventStream", "MAX_FRAME_BYTES"]


#: Previews are 512×512 JPEGs of ~35 KB by default, but ``--preview-size`` can make them larger.
MAX_FRAME_BYTES = 16 * 1024 * 1024
EventHandler = Callable[[Event], Awaitable[None] | None]


class EventStream:
    """The event WebSocket of one client id; iterate it for typed :mod:`comfy.backends.protocol` events."""

    def __init__(self, client: ComfyClient, client_id: str, *, feature_flags: bool = True) -> None:
        self._client = client
        self.client_id = client_id
        self._feature_flags = feature_flags
        self._stack = AsyncExitStack()
        self._ws: httpx_ws.AsyncWebSocketSession | None = None
        #: Set when the socket lives in a task of its own (opened ahead); closing then goes through it.
        self._holder: Spare | None = None

    async def __aenter__(self) -> EventStream:
        await self._open()
        return self

    async def _open(self) -> None:
        url = self._client.url("/ws") + f"?clientId={self.client_id}"
        try:
            with map_errors("opening the event WebSocket"):
                self._ws = await self._stack.enter_async_context(httpx_ws.aconnect_ws(
                    url, self._client.http, max_message_size_bytes=MAX_FRAME_BYTES,
                    keepalive_ping_interval_seconds=self._client.ping_interval,
                    keepalive_ping_timeout_seconds=self._client.ping_interval,
                ))
                if self._feature_flags:
                    # Must be the first frame on the socket, or the server ignores it (protocol note 4).
                    await self._ws.send_text(json.dumps(protocol.FEATURE_FLAGS_HELLO))
        except BaseException:
            await self._close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket and wait until it is closed (ComfyUI then forgets its client id)."""
        if self._holder is not None:
            await self._holder.aclose()  # anyio must leave the socket's task group in the task that entered it
        else:
            await self._close()

    async def _close(self) -> None:
        try:
            await self._stack.aclose()
        except BaseExceptionGroup as group:
            leaf = unwrap_group(group)
            if not isinstance(leaf, (httpx_ws.HTTPXWSException, httpx.HTTPError, OSError)):
                raise leaf from None
        except (httpx_ws.HTTPXWSException, httpx.HTTPError, OSError):
            pass  # closing a socket that already broke

    async def receive(self, timeout: float | None = None) -> Event:
        """The next event; raises TimeoutError when none came in ``timeout`` s, ServerUnavailable on a drop."""
        assert self._ws is not None, "use the stream inside 'async with'"
        with map_errors("reading the event WebSocket"):
            while True:
                frame = await self._ws.receive(timeout=timeout)
                if isinstance(frame, wsproto.events.TextMessage):
                    return protocol.decode_text(frame.data)
                if isinstance(frame, wsproto.events.BytesMessage):
                    return protocol.decode_binary(bytes(frame.data))

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.receive()


class Spare:
    """An event socket opened ahead of the prompt that will use it, by a task of its own.

    The WebSocket handshake is then off a job's path. anyio (under httpx-ws) must leave a socket's
    task group in the task that entered it, so this task opens the socket, reads and drops its frames
    while it waits (only broadcasts reach an id nobody has submitted with, and reading keeps the
    keepalive pongs flowing), and closes it once released: after the run, off the job's path too.
    """

    def __init__(self, client: ComfyClient) -> None:
        self.stream = EventStream(client, uuid.uuid4().hex)
        self.stream._holder = self
        self.loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._released = asyncio.Event()
        self._idle: asyncio.Task[None] | None = None
        client._spares.add(self)
        self._task = asyncio.create_task(self._hold(client), name=f"comfy-ws-{self.stream.client_id[:8]}")

    async def _hold(self, client: ComfyClient) -> None:
        try:
            if await self._open():
                try:
                    await self._released.wait()
                finally:
                    assert self._idle is not None
                    self._idle.cancel()
                    await self.stream._close()
        finally:
            client._spares.discard(self)

    async def _open(self) -> bool:
        try:
            await self.stream._open()
        except Exception:  # noqa: BLE001 - not swallowed: take() returns None and the caller opens a socket itself
            return False
        else:
            self._idle = asyncio.create_task(self._discard())
            return True
        finally:
            self._ready.set()

    async def _discard(self) -> None:
        with contextlib.suppress(ServerError):
            while True:
                await self.stream.receive()

    async def take(self) -> EventStream | None:
        """The open socket, no longer read by anyone else; None if it did not open or has closed since."""
        await self._ready.wait()
        idle = self._idle
        if idle is None:
            return None
        idle.cancel()
        await asyncio.wait({idle})
        if not idle.cancelled():  # it ended on its own: the server closed the socket while it waited
            self.release()
            return None
        return self.stream

    def release(self) -> None:
        """Let the socket's task close it (the caller does not wait)."""
        self._released.set()

    async def aclose(self) -> None:
        self._released.set()
        if not self._ready.is_set():
            self._task.cancel()
        await asyncio.wait({self._task})
