"""Schema fuzzing: schemathesis generates requests from /openapi.json and the API must never answer 5xx.

The app runs for real (uvicorn in a thread, the fake ComfyUI behind it) with small limits, so valid
requests make small, fast jobs, and a short STUDIO_SYNC_WAIT_SECONDS, so the synchronous endpoints
answer 202 instead of waiting. Responses must also match the documented schemas and status codes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_api
from comfy.service import Studio
from tests.conftest import make_settings
from tests.fakes.comfyui import FakeComfy

KEY = "fuzz-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def fuzz_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    fake = FakeComfy(step_time=0.001, previews=False)
    fake.start()
    studio_settings = make_settings(
        Path(tmp_path_factory.mktemp("fuzz")), fake.url, api_keys=KEY, rate_limit_per_minute=0,
        sync_wait_seconds=0.05, max_steps=20, max_width=512, max_height=512, max_batch_size=2,
    )
    studio = Studio(studio_settings)
    studio.worker.poll_interval = 0.02
    app = create_api(studio, studio_settings, keepalive=0.2)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn.run gets
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, ws="wsproto", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        fake.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_url: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.generate], derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=AUTH, timeout=10, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
    ])
