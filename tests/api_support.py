"""The REST API for real, as the API tests drive it: uvicorn on a free loopback port, httpx against it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api.app import create_api
from comfy.service import Studio
from comfy.settings import Settings
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy

SMALL = {"prompt": "a lighthouse at dawn", "steps": 3, "seed": 42, "width": 64, "height": 64}
ALPHA, BETA = "alpha-key-0123456789", "beta-key-9876543210"




@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on 127.0.0.1 (a free port) in this event loop; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn.run gets
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, ws="wsproto", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Api:
    url: str
    studio: Studio
    settings: Settings
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def running_api(settings: Settings, *, manage_studio: bool = False, keepalive: float = 15.0,
                      headers: dict[str, str] | None = None) -> AsyncIterator[Api]:
    studio = Studio(settings)
    studio.client.idle_check = 0.5
    studio.worker.poll_interval = 0.02
    if not manage_studio:
        await studio.start()
    try:
        app = create_api(studio, settings, manage_studio=manage_studio, keepalive=keepalive)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30, headers=headers) as http:
            yield Api(url, studio, settings, http)
    finally:
        if not manage_studio:
            await studio.aclose()


@pytest.fixture
def make_api(tmp_path: Path, fake_comfy: FakeComfy):
    counter = iter(range(100))

    def make(*, manage_studio: bool = False, keepalive: float = 15.0, headers: dict[str, str] | None = None,
             **overrides: Any) -> contextlib.AbstractAsyncContextManager[Api]:
        settings = make_settings(tmp_path / f"api{next(counter)}", fake_comfy.url, **overrides)
        return running_api(settings, manage_studio=manage_studio, keepalive=keepalive, headers=headers)

    return make


@pytest.fixture
async def api(make_api) -> AsyncIterator[Api]:
    async with make_api() as running:
        yield running


async def sse(http: httpx.AsyncClient, path: str, *, timeout: float = 30, **params: Any) -> AsyncIterator[dict]:
    """The messages of an event stream (``{"event", "data", "comment"}``) until the server ends it."""
    async with asyncio.timeout(timeout), http.stream("GET", path, params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith(":"):
                yield {"comment": line[1:].strip()}
            elif line.startswith("event:"):
                event["event"] = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                event["data"] = json.loads(line.split(":", 1)[1])
            elif not line and "data" in event:
                yield event
                event = {}


async def events_of(http: httpx.AsyncClient, job_id: str, **params: Any) -> list[dict]:
    return [m["data"] for m in [m async for m in sse(http, f"/api/v1/jobs/{job_id}/events", **params)] if "data" in m]


async def submit(http: httpx.AsyncClient, body: dict | None = None, **headers: str) -> str:
    response = await http.post("/api/v1/jobs", json=body or SMALL, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


async def until(predicate: Any, timeout: float = 15.0) -> None:
    """Wait for a condition on the fake's own records (it has no events to wait on)."""
    async with asyncio.timeout(timeout):
        while not ((await value) if inspect.isawaitable(value := predicate()) else value):
            await asyncio.sleep(0.01)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]

