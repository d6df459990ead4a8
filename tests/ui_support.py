"""Running the real app (python app.py) in a subprocess against the fake ComfyUI, for UI and API tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(comfy_url: str, data_dir: Path, **env: str) -> Iterator[str]:
    """Start ``python app.py`` on a free loopback port; yields its base URL; stops it afterwards."""
    with app_process(comfy_url, data_dir, **env) as (url, _proc):
        yield url


@contextmanager
def app_process(comfy_url: str, data_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like :func:`running_app`, also yielding the process (for its memory use)."""
    port = free_port()
    environ = {**os.environ, "COMFYUI_URL": comfy_url, "STUDIO_DATA_DIR": str(data_dir),
               "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
               "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(data_dir / "gradio-tmp"),
               "PYTHONPATH": str(ROOT), **env}
    log = open(data_dir.parent / f"app-{port}.log", "wb")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine takes long to import gradio
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited: {(data_dir.parent / f'app-{port}.log').read_text()[-3000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("app did not start in 180 s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def app_log(data_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in data_dir.parent.glob("app-*.log"))


async def call_page(http: httpx.AsyncClient, api_name: str, data: list, session: str | None = None) -> dict:
    """Run one of the page's event handlers as the browser does (``/gradio_api/queue/join``); the final message."""
    import json
    import secrets

    config = (await http.get("/config")).json()
    fn_index = next(d["id"] for d in config["dependencies"] if d["api_name"] == api_name)
    session = session or secrets.token_hex(8)
    joined = await http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index,
                                                             "session_hash": session, "event_data": None,
                                                             "trigger_id": None})
    assert joined.status_code == 200, joined.text
    async with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the queue never completed the call")
