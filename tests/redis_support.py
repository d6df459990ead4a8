"""A real redis-server (Debian's package) for the tests: on 127.0.0.1, a free port, no persistence.

One server per test session (:func:`redis_server`); each test takes its own key prefix
(:func:`redis_prefix`), so tests never see each other's keys. Without redis-server the Redis tests are
skipped with a sentence saying how to install it, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

INSTALL_HINT = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(directory: str, *, port: int | None = None, persist: bool = False) -> RedisServer:
    """Start redis-server in ``directory``; stop it with :func:`stop_redis`.

    ``port`` starts it on that port (a restart of a stopped server); ``persist`` keeps an append-only file in
    ``directory``, synced at every write, so a server stopped and started again there has every key back.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    given = port
    for _attempt in range(5):  # another process may take the free port before the server binds it
        port = given or _free_port()
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if persist else ["--appendonly", "no"]
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *durability,
             "--dir", directory, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(port):
                return RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
            time.sleep(0.02)
        stop_redis(RedisServer("", port, process))
    pytest.fail("redis-server did not start on a free loopback port")


def stop_redis(server: RedisServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="studio-redis-") as directory:
        server = start_redis(directory)
        try:
            yield server
        finally:
            stop_redis(server)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own (REDIS_PREFIX)."""
    return f"test-{uuid.uuid4().hex[:12]}"
