"""Shared fixtures: a fake ComfyUI on loopback that replays the captured protocol, and a studio on it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from comfy.backends.runpod import RunPodBackend
from comfy.jobs.records import Job
from comfy.service import Studio
from comfy.settings import Settings
from tests.fakes.comfyui import FakeComfy


@pytest.fixture
def fake_comfy() -> Iterator[FakeComfy]:
    server = FakeComfy(step_time=0.005, node_time=0.001)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def make_settings(tmp_path, url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"comfyui_url": url, "data_dir": tmp_path / "data", "lease_seconds": 5.0}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path, fake_comfy: FakeComfy) -> Settings:
    return make_settings(tmp_path, fake_comfy.url)


@pytest.fixture
async def studio(settings: Settings) -> AsyncIterator[Studio]:
    service = Studio(settings)
    service.client.idle_check = 0.5  # reconcile quickly when a test drops sockets
    service.worker.poll_interval = 0.02
    await service.start()
    try:
        yield service
    finally:
        await service.aclose()


def quick(studio: Studio) -> Studio:
    """Poll, probe and retry in milliseconds: the fakes answer at once."""
    studio.worker.poll_interval = 0.02
    studio.pool.refresh_interval = 0.2
    for backend in studio.pool.backends:
        if isinstance(backend, RunPodBackend):
            backend.poll_min, backend.poll_max, backend.api.backoff = 0.005, 0.03, 0.01
        elif backend.kind == "comfyui":
            backend.client.idle_check = 0.5
    return studio


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Studio]:
    """A quick studio with its worker started, closed afterwards."""
    studio = quick(Studio(settings))
    await studio.start()
    try:
        yield studio
    finally:
        await studio.aclose()


async def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    """Until ``predicate()`` is true; it may be a coroutine function (a read of the job store)."""
    deadline = time.monotonic() + timeout
    while not await _value(predicate()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def job_where(studio: Studio, job_id: str, accept: Callable[[Job], object], timeout: float = 20.0) -> Job:
    """The studio's record of ``job_id`` once ``accept`` takes it."""
    deadline = time.monotonic() + timeout
    while not accept(job := await studio.job(job_id)):
        assert time.monotonic() < deadline, f"job {job_id} did not reach the state in time: {job}"
        await asyncio.sleep(0.01)
    return job


async def _value(value: object) -> object:
    return await value if inspect.isawaitable(value) else value


from tests.api_support import api, make_api  # noqa: E402, F401  (the REST API fixtures, for every API test file)
from tests.graph_support import info  # noqa: E402, F401  (the real /object_info capture, for the graph tests)
