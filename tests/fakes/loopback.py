"""Serving a fake on 127.0.0.1 with uvicorn's parts, so a test can stop it abruptly and start it again."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

__all__ = ["bind", "start", "halt", "cancel_the_rest"]


def bind(port: int = 0) -> socket.socket:
    """A listening-ready TCP socket on loopback (``port`` 0: any free one; else the same one again)."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and without it
    # every answer waits ~40 ms for a delayed ACK (aiohttp, as the real ComfyUI uses, sets it).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


async def start(config: uvicorn.Config, sock: socket.socket) -> uvicorn.Server:
    """Start serving on ``sock`` without uvicorn's main loop (no signal handlers: we run in a thread)."""
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    return server


async def halt(server: uvicorn.Server) -> None:
    """Stop at once, like a killed process: listeners closed, open connections reset."""
    for listener in server.servers:
        listener.close()
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()
    for listener in server.servers:
        await listener.wait_closed()
    for _ in range(3):  # let the aborted transports run connection_lost and close their sockets
        await asyncio.sleep(0)


async def cancel_the_rest() -> None:
    """Cancel every other task of this loop (the fake's own work) and wait for them to end."""
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
