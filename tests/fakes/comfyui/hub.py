"""The fake's WebSocket side: server.PromptServer's sockets and its publish loop, and abrupt drops.

Imports nothing from the rest of the package.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

logger = logging.getLogger(__name__)

_TRANSPORT_KEY = "comfy_fake.transport"


class _TransportWSProtocol(WSProtocol):
    """uvicorn's wsproto protocol, exposing its transport so the fake can drop a socket abruptly."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        self.scope["extensions"][_TRANSPORT_KEY] = self.transport


@dataclass(eq=False)
class _Conn:
    ws: WebSocket
    sid: str
    transport: asyncio.Transport | None
    dropped: bool = False


def _text_frame(event: str, data: Any) -> str:
    return json.dumps({"type": event, "data": data})


class _Hub:
    """server.PromptServer's sockets + its publish loop: one queue, frames written one at a time.

    Frames are encoded when queued (the data may change afterwards) and addressed by sid when sent:
    ``None`` means every socket; an sid without a socket means nobody.
    """

    def __init__(self, on_written: Callable[[bool], bool]) -> None:
        self.sockets: dict[str, _Conn] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        self.conns: set[_Conn] = set()
        self.lock = asyncio.Lock()
        self._outbox: asyncio.Queue[tuple[str | bytes, str | None, bool]] = asyncio.Queue()
        self._on_written = on_written

    def send(self, frame: str | bytes, sid: str | None, in_run: bool) -> None:
        self._outbox.put_nowait((frame, sid, in_run))

    def supports_preview_metadata(self, sid: str | None) -> bool:
        """comfy_api.feature_flags.supports_feature, evaluated for the prompt's client at send time."""
        return sid is not None and self.flags.get(sid, {}).get("supports_preview_metadata", False) is True

    async def publish(self) -> None:
        while True:
            frame, sid, in_run = await self._outbox.get()
            async with self.lock:
                if sid is None:
                    targets = list(self.sockets.values())
                else:
                    targets = [self.sockets[sid]] if sid in self.sockets else []
                for conn in targets:
                    await self.write(conn, frame, in_run)

    async def write(self, conn: _Conn, frame: str | bytes, in_run: bool) -> None:
        """Write one frame; the owner may then decide every socket must drop (``drop_sockets_after``)."""
        if conn.dropped:
            return
        if in_run and self._on_written(False):
            self.drop_all()
            return
        try:
            if isinstance(frame, str):
                await conn.ws.send_text(frame)
            else:
                await conn.ws.send_bytes(frame)
        except Exception:  # noqa: BLE001 - like send_socket_catch_exception: a dead socket is not our problem
            logger.debug("fake comfy: send to %s failed", conn.sid, exc_info=True)
            return
        if in_run and self._on_written(True):
            self.drop_all()

    def register(self, conn: _Conn) -> None:
        """A new socket takes over its sid; the previous one stays open but is no longer addressed."""
        self.sockets.pop(conn.sid, None)
        self.sockets[conn.sid] = conn
        self.flags[conn.sid] = {}
        self.conns.add(conn)

    def release(self, conn: _Conn) -> None:
        """ComfyUI pops the sid unconditionally when a socket closes, even if a newer socket owns it."""
        self.conns.discard(conn)
        if not conn.dropped:
            self.sockets.pop(conn.sid, None)
            self.flags.pop(conn.sid, None)

    def drop_all(self) -> None:
        """Close every socket abruptly (no close frame), as a crash or a network cut would."""
        for conn in list(self.conns):
            conn.dropped = True
            if self.sockets.get(conn.sid) is conn:
                del self.sockets[conn.sid]
                self.flags.pop(conn.sid, None)
            if conn.transport is not None:
                conn.transport.abort()
            else:  # not under uvicorn: the best we can do is a close frame
                asyncio.ensure_future(conn.ws.close(code=1011))
        self.conns.clear()
