"""Real studio processes for the multi-process tests (test_replicas.py, test_redis_outage.py); not collected.

:func:`start_replica` runs ``python app.py`` and :func:`start_worker` runs ``python -m comfy worker``, each with its
own environment on 127.0.0.1; their output goes to a temporary file (never a pipe a chatty process could fill),
read with :func:`output`. :func:`stop` ends one (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def studio_env(redis_url: str, prefix: str, comfy_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    keep = {name: value for name, value in os.environ.items()
            if not name.startswith(("STUDIO_", "REDIS_", "S3_", "AUTH_", "API_", "COMFYUI_", "RUNPOD_"))}
    return {**keep, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "COMFYUI_URL": comfy_url,
            "STUDIO_DATA_DIR": str(data_dir), "STUDIO_SHARED_DATA": "1", "STUDIO_LEASE_SECONDS": "3",
            "GRADIO_ANALYTICS_ENABLED": "False", "STUDIO_RATE_LIMIT_PER_MINUTE": "0", **extra}


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = log  # type: ignore[attr-defined]
    return process


def start_replica(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return _spawn(["app.py", "--port", str(port)], env)


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return _spawn(["-m", "comfy", "worker", *args], env)


def output(process: subprocess.Popen[bytes]) -> str:
    log = process.log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read().decode(errors="replace")


def wait_serving(process: subprocess.Popen[bytes], port: int, timeout: float = 90.0) -> str:
    """The base URL once ``/healthz`` answers; fails with the process's output if it exits or never does."""
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the replica exited ({process.returncode}):\n{output(process)}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the replica did not answer in {timeout:.0f} s:\n{output(process)}")


def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true (returned); AssertionError naming ``what`` else."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout:.0f} s")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode
