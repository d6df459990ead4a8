"""moto's S3 in server mode on a loopback port: the real S3 wire protocol (SigV4, XML errors, multipart).

It serves the same WSGI app as ``moto.server.ThreadedMotoServer`` (``DomainDispatcherApplication``), with one
difference that outages need: :meth:`MotoS3.stop` also cuts the keep-alive connections already open. With
``ThreadedMotoServer.stop()`` those stay served by their handler threads, so a client with a pooled
connection would never see the outage. A later :meth:`start` listens on the same port again.

moto keeps its state (buckets, objects, versions, IAM users) in this process, not in the server, so a
bucket survives a stop and start: exactly what a real outage looks like to the client. :meth:`reset` and
:meth:`require_auth` use moto's own ``/moto-api`` endpoints.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import ThreadedWSGIServer

__all__ = ["ADMIN_KEY", "ADMIN_SECRET", "REGION", "MotoS3"]

REGION = "us-east-1"
#: Any key works while moto does not check auth (its default).
ADMIN_KEY, ADMIN_SECRET = "AKIAMOTOADMIN0000000", "moto-admin-secret-not-checked"


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server, remembering its connections so an outage can cut them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        with self._lock:
            self.connections.add(conn)
        return conn, addr

    def cut(self) -> None:
        with self._lock:
            conns, self.connections = self.connections, set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()


class MotoS3:
    """``start()`` / ``stop()`` / ``start()`` again on the same port; ``url`` is the S3 endpoint."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = _Server("127.0.0.1", self.port, app)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="moto-s3", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """An outage: stop listening and cut every open connection (clients get refused or reset)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.cut()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def reset(self) -> None:
        """Forget every bucket, object and IAM user (moto's state is per process), and stop checking auth."""
        httpx.post(f"{self.url}/moto-api/reset").raise_for_status()
        self.require_auth(False)

    def require_auth(self, on: bool = True) -> None:
        """From now on, check every request's signature against moto's IAM users (or stop checking)."""
        httpx.post(f"{self.url}/moto-api/reset-auth", content=b"0" if on else b"inf").raise_for_status()

    def admin(self, service: str = "s3") -> Any:
        """A boto3 client for setting up and inspecting (create buckets, list versions, IAM users)."""
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=ADMIN_KEY,
                            aws_secret_access_key=ADMIN_SECRET,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
