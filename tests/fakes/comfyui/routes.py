"""``FakeComfy``: the process state, the HTTP and WebSocket routes, and the server's lifecycle.

What the fake reproduces, and how to use it, is in the package docstring (``__init__.py``). May import
every other module of the package.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import io
import json
import logging
import mimetypes
import posixpath
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from email.utils import formatdate
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.fakes import loopback
from tests.fakes.comfyui.executor import _Cached, _Executor, _now_ms
from tests.fakes.comfyui.faults import _Faults, _TransportH11Protocol, cut_connection
from tests.fakes.comfyui.files import _Files, _norm_subfolder, _parse_multipart, _PngFactory, _StoredFile
from tests.fakes.comfyui.fixtures import FIXTURES_DIR, _Fixtures
from tests.fakes.comfyui.hub import _TRANSPORT_KEY, _Conn, _Hub, _text_frame, _TransportWSProtocol
from tests.fakes.comfyui.knobs import _Knobs
from tests.fakes.comfyui.nodes import _Nodes
from tests.fakes.comfyui.validation import _error, _Validator

__all__ = ["FakeComfy"]

logger = logging.getLogger(__name__)

#: execution.SENSITIVE_EXTRA_DATA_KEYS: moved out of extra_data before it is queued or stored.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

_T = TypeVar("_T")


def _json_response(data: Any, status: int = 200) -> Response:
    """aiohttp's web.json_response: json.dumps defaults and this exact Content-Type."""
    return Response(json.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


# --------------------------------------------------------------------------- the server


class FakeComfy(_Knobs, _Faults, _Executor, _Nodes):
    """A ComfyUI 0.8.0 look-alike on a real loopback port (see the package docstring).

    The knobs a test turns (``step_time``, ``reject_next``, ``hold``...) and the observations it asserts
    on (``prompts``, ``interrupts``, ``deleted``) are ``_Knobs``' (knobs.py, which lists them all); the
    queue and the executor are ``_Executor``'s (executor.py), what the nodes do ``_Nodes``' (nodes.py).
    This class keeps the process state, serves the routes and runs the server.
    """

    def __init__(
        self,
        *,
        step_time: float = 0.0,
        node_time: float = 0.0,
        previews: bool = True,
        object_info_path: Path | None = None,
    ) -> None:
        _Knobs.__init__(self, step_time=step_time, node_time=node_time, previews=previews)

        self._fx = _Fixtures(FIXTURES_DIR, object_info_path)
        self._classes: dict[str, Any] = self._fx.object_info
        self._validator = _Validator(self._classes, self._image_exists, self._fx.validation_traceback)
        self._png = _PngFactory()
        self._files = _Files()
        # ComfyUI ships input/example.png, which object_info lists for LoadImage.
        self._files.put("input", "", "example.png", self._png.make(512, 512, []))
        self._app = self._build_app()
        self._cond = threading.Condition()
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ticker: asyncio.Task[Any] | None = None
        self._reset_process()

    # ----------------------------------------------------------------- public API

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; stays the same across ``restart()`` and ``stop()``/``start()``."""
        if not self._port:
            raise RuntimeError("FakeComfy.url is known only after start()")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> FakeComfy:
        """Serve (again) in a daemon thread; returns once the port accepts connections.

        After ``stop()`` this is a fresh process on the same port: queue, history and cache are gone.
        """
        if self._thread is not None:
            return self
        fresh = self._port != 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-comfy", daemon=True)
        self._thread.start()
        self._run_sync(self._boot(fresh=fresh))
        logger.info("fake ComfyUI serving on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop answering: every socket is cut and further connections are refused. Idempotent."""
        if self._thread is None or self._loop is None:
            return
        try:
            self._run_sync(self._halt())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
            self._thread, self._loop = None, None

    def restart(self, *, lose_queue: bool = True) -> None:
        """Like a ComfyUI process restart on the same port: all sockets are cut, then it serves again.

        With ``lose_queue`` (the default) pending and running prompts, history, the output cache, temp
        files and the ``number`` counter are forgotten, since ComfyUI keeps them in memory. Output and
        input files survive (they are on disk). With ``lose_queue=False`` only the sockets and the
        listener bounce (a proxy restart): a running prompt keeps running and its history is written.
        """
        if self._thread is None:
            raise RuntimeError("restart() needs a started FakeComfy")
        self._run_sync(self._restart(lose_queue))

    def wait_idle(self, timeout: float = 10) -> None:
        """Block until nothing is pending or running (``executing null`` of the last prompt is queued).

        Raises TimeoutError otherwise, e.g. when ``hold`` keeps prompts pending.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: not self._queue and self._running is None, timeout):
                raise TimeoutError(f"fake ComfyUI still busy after {timeout}s: {self._queue_remaining()} left")

    async def wait_idle_async(self, timeout: float = 10) -> None:
        """``wait_idle`` for async tests, without blocking their event loop."""
        await asyncio.to_thread(self.wait_idle, timeout)

    @property
    def client_ids(self) -> list[str]:
        """The clientIds that currently have a registered (addressable) WebSocket."""
        hub = self._hub
        return list(hub.sockets) if hub is not None else []

    def file_names(self, kind: str = "output") -> list[str]:
        """Names (``subfolder/name``) of the files in input/, output/ or temp/."""
        return self._files.names(kind)

    def __enter__(self) -> FakeComfy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- process lifecycle (loop thread)

    def _reset_process(self) -> None:
        """Everything a ComfyUI process keeps in memory only."""
        with self._cond:
            self._queue: list[tuple[Any, ...]] = []
            self._running: tuple[Any, ...] | None = None
            self._cond.notify_all()
        self._history: dict[str, dict[str, Any]] = {}
        self._number = 0
        self._cache: dict[Hashable, _Cached] = {}
        self._client_id: str | None = None
        self._last_node: str | None = None
        self._free_memory = False
        self._files.wipe("temp")  # ComfyUI empties temp/ at startup
        self._hub: _Hub | None = None
        self._wake: asyncio.Event | None = None
        self._interrupt: asyncio.Event | None = None

    def _run_sync(self, coro: Awaitable[_T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    def _call_soon(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(callback)

    async def _boot(self, *, fresh: bool) -> None:
        if fresh:
            self._reset_process()
        self._start_background()
        await self._start_server()

    async def _restart(self, lose_queue: bool) -> None:
        assert self._hub is not None
        self._hub.drop_all()
        await self._stop_server()
        if lose_queue:
            await self._stop_background()
            self._reset_process()
            self._start_background()
        await self._start_server()

    async def _halt(self) -> None:
        if self._hub is not None:
            self._hub.drop_all()
        await self._stop_server()
        await self._stop_background()
        await loopback.cancel_the_rest()

    async def _start_server(self) -> None:
        config = uvicorn.Config(
            self._app,
            http=_TransportH11Protocol,
            ws=_TransportWSProtocol,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            ws_ping_interval=None,  # aiohttp's WebSocketResponse() sends no heartbeat
            ws_ping_timeout=None,
            ws_per_message_deflate=False,
            headers=[
                ("Content-Security-Policy", self._fx.header("system_stats", "Content-Security-Policy")),
                ("Server", self._fx.header("system_stats", "Server")),
            ],
        )
        sock = loopback.bind(self._port)
        self._port = sock.getsockname()[1]
        server = await loopback.start(config, sock)
        await server.on_tick(0)  # default headers (Date, CSP, Server) before the first request
        self._server = server
        self._ticker = asyncio.create_task(self._tick(server))

    @staticmethod
    async def _tick(server: uvicorn.Server) -> None:
        """uvicorn's main loop refreshes the Date header; we run its tick without the rest."""
        while True:
            await server.on_tick(0)
            await asyncio.sleep(1)

    async def _stop_server(self) -> None:
        server, self._server = self._server, None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if server is not None:
            await loopback.halt(server)

    # ----------------------------------------------------------------- HTTP

    def _build_app(self) -> Starlette:
        routes: list[Route | WebSocketRoute] = []
        table: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
            ("/system_stats", self._static("system_stats"), "GET"),
            ("/features", self._static("features"), "GET"),
            ("/embeddings", self._static("embeddings"), "GET"),
            ("/extensions", self._static("extensions"), "GET"),
            ("/models", self._static("models"), "GET"),
            ("/models/{folder}", self._get_models_folder, "GET"),
            ("/object_info", self._get_object_info, "GET"),
            ("/object_info/{node_class}", self._get_object_info_class, "GET"),
            ("/prompt", self._get_prompt, "GET"),
            ("/prompt", self._post_prompt, "POST"),
            ("/queue", self._get_queue, "GET"),
            ("/queue", self._post_queue, "POST"),
            ("/interrupt", self._post_interrupt, "POST"),
            ("/free", self._post_free, "POST"),
            ("/history", self._get_history, "GET"),
            ("/history", self._post_history, "POST"),
            ("/history/{prompt_id}", self._get_history_item, "GET"),
            ("/view", self._get_view, "GET"),
            ("/view_metadata/{folder}", self._get_view_metadata, "GET"),
            ("/upload/image", self._post_upload_image, "POST"),
        ]
        for prefix in ("", "/api"):  # server.py registers every route again under /api
            for path, handler, method in table:
                routes.append(Route(prefix + path, self._guarded(handler), methods=[method]))
            routes.append(WebSocketRoute(prefix + "/ws", self._websocket))
        return Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})

    def _guarded(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Any exception becomes aiohttp's text/plain 500 (what a malformed body gets from ComfyUI)."""

        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception:  # noqa: BLE001 - aiohttp answers every unhandled exception the same way
                logger.debug("fake ComfyUI: %s %s -> 500", request.method, request.url.path, exc_info=True)
                return self._server_error()

        return endpoint

    def _server_error(self) -> Response:
        response = self._fx.envelope("post_prompt_malformed_json")["response"]
        return Response(response["body"], status_code=500,
                        headers={"Content-Type": response["headers"]["Content-Type"], "Connection": "close"})

    @staticmethod
    async def _not_found(request: Request, exc: Exception) -> Response:
        return Response("404: Not Found", status_code=404, media_type="text/plain")

    @staticmethod
    async def _not_allowed(request: Request, exc: Exception) -> Response:
        return Response("405: Method Not Allowed", status_code=405, media_type="text/plain")

    def _static(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            return _json_response(self._fx.body(name))

        return handler

    async def _get_models_folder(self, request: Request) -> Response:
        folder = request.path_params["folder"]
        if folder == "checkpoints":
            return _json_response(self._fx.body("models_checkpoints"))
        if folder in self._fx.body("models"):
            return _json_response([])
        return Response(status_code=404)

    async def _get_object_info(self, request: Request) -> Response:
        return Response(self._fx.object_info_bytes, media_type="application/json; charset=utf-8")

    async def _get_object_info_class(self, request: Request) -> Response:
        name = request.path_params["node_class"]
        return _json_response({name: self._classes[name]} if name in self._classes else {})

    async def _get_prompt(self, request: Request) -> Response:
        return _json_response({"exec_info": {"queue_remaining": self._queue_remaining()}})

    def _claim_number(self, body: Any) -> Any:
        """``number`` is the queue priority: the global counter (negated with ``front``) unless given."""
        if "number" in body:
            return float(body["number"])
        number = -self._number if "front" in body and body["front"] else self._number
        self._number += 1
        return number

    async def _post_prompt(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if self.gateway_next is not None:
            return self._gateway_answer(body)
        return await self._take_prompt(body, request)

    async def _take_prompt(self, body: dict[str, Any], request: Request | None) -> Response:
        number = self._claim_number(body)
        if self.reject_next is not None:
            name, self.reject_next = self.reject_next, None
            return self._rejection(name)
        if "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return _json_response({"error": error, "node_errors": {}}, 400)
        original = copy.deepcopy(body)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        partial = body.get("partial_execution_targets")
        valid, error, outputs, node_errors = self._validator.validate_prompt(prompt, partial)
        extra = body.get("extra_data", {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        if not valid:
            logger.info("fake ComfyUI: invalid prompt: %s", error)
            return _json_response({"error": error, "node_errors": node_errors}, 400)
        sensitive = {key: extra.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra}
        extra["create_time"] = _now_ms()
        self._enqueue((number, prompt_id, prompt, extra, outputs, sensitive))
        self.prompts.append(original)
        if self.prompt_answer_delay > 0:  # queued (it runs) and the answer is late: past a client's read timeout
            await asyncio.sleep(self.prompt_answer_delay)
        if request is not None and self._lose_this_reply(prompt_id) and cut_connection(request.scope):
            return Response(status_code=200)  # goes nowhere: the connection is gone, the prompt is queued
        return _json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _rejection(self, name: str) -> Response:
        response = self._fx.rejection(name)
        if response is None:
            logger.error("fake ComfyUI: reject_next=%r matches no http/post_prompt_*.json fixture", name)
            return self._server_error()
        if response["status"] == 500:
            return self._server_error()
        return _json_response(copy.deepcopy(response["body"]), response["status"])

    async def _get_queue(self, request: Request) -> Response:
        running = [list(self._running[:5])] if self._running is not None else []
        return _json_response({"queue_running": running, "queue_pending": [list(x[:5]) for x in self._queue]})

    async def _post_queue(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if "clear" in body and body["clear"]:
            self._wipe_queue()
        if "delete" in body and not self.ignore_deletes:
            for prompt_id in body["delete"]:
                self._delete_pending(prompt_id)
        return Response(status_code=200)

    async def _post_interrupt(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.interrupts.append(body)
        target = (body or {}).get("prompt_id")
        assert self._interrupt is not None
        if not target or (self._running is not None and self._running[1] == target):
            self._interrupt.set()
        else:
            logger.info("fake ComfyUI: prompt %s is not running, interrupt skipped", target)
        return Response(status_code=200)

    async def _post_free(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if body.get("free_memory", False):
            self._free_memory = True
        return Response(status_code=200)

    async def _get_history(self, request: Request) -> Response:
        max_items = request.query_params.get("max_items")
        offset = request.query_params.get("offset")
        limit = int(max_items) if max_items is not None else None
        start = int(offset) if offset is not None else -1
        if start < 0 and limit is not None:
            start = len(self._history) - limit
        out: dict[str, Any] = {}
        for index, key in enumerate(self._history):
            if index >= start:
                out[key] = self._history[key]
                if limit is not None and len(out) >= limit:
                    break
        return _json_response(out)

    async def _get_history_item(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        entry = self._history.get(prompt_id)
        return _json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: Request) -> Response:
        body = json.loads(await request.body())
        if "clear" in body and body["clear"]:
            self._history = {}
        if "delete" in body:
            for prompt_id in body["delete"]:
                self._history.pop(prompt_id, None)
        return Response(status_code=200)

    async def _get_view(self, request: Request) -> Response:
        """server.view_image: FileResponse headers, ``preview=fmt;quality`` re-encoding, 404 empty."""
        if self.view_delay > 0:
            await asyncio.sleep(self.view_delay)
        query = request.query_params
        if "filename" not in query:
            return Response(status_code=404)
        value = query["filename"]
        match = re.fullmatch(r"(.*) \[(input|output|temp)\]", value)
        filename, kind = (match.group(1), match.group(2)) if match else (value, query.get("type", "output"))
        if not filename or filename[0] == "/" or ".." in filename or kind not in _Files.KINDS:
            return Response(status_code=400)
        subfolder = query.get("subfolder", "")
        if _norm_subfolder(subfolder).startswith(".."):
            return Response(status_code=403)
        name = posixpath.basename(filename)
        stored = self._files.get(kind, subfolder, name)
        if stored is None:
            return Response(status_code=404)
        if "preview" in query:
            return self._preview(stored, name, query["preview"], query.get("channel", ""))
        headers = {
            "Content-Disposition": f'filename="{name}"',
            "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
            "Etag": f'"{int(stored.mtime * 1e9):x}-{len(stored.data):x}"',
            "Last-Modified": formatdate(stored.mtime, usegmt=True),
            "Content-Length": str(len(stored.data)),
            "Accept-Ranges": "bytes",
        }
        return StreamingResponse(self._chunks(stored.data), headers=headers)

    @staticmethod
    async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    @staticmethod
    def _preview(stored: _StoredFile, name: str, preview: str, channel: str) -> Response:
        info = preview.split(";")
        image_format = info[0] if info[0] in ("webp", "jpeg") and "a" not in channel else "webp"
        quality = int(info[-1]) if info[-1].isdigit() else 90
        buffer = io.BytesIO()
        with Image.open(io.BytesIO(stored.data)) as img:
            converted = img.convert("RGB") if image_format == "jpeg" or channel == "rgb" else img
            converted.save(buffer, format=image_format, quality=quality)
        return Response(buffer.getvalue(), media_type=f"image/{image_format}",
                        headers={"Content-Disposition": f'filename="{name}"'})

    async def _get_view_metadata(self, request: Request) -> Response:
        envelope = self._fx.envelope("view_metadata_checkpoint")
        wanted = envelope["request"]["path"].split("?")[0].rsplit("/", 1)[-1]
        known = self._fx.body("models_checkpoints")
        if request.path_params["folder"] == wanted and request.query_params.get("filename") in known:
            return _json_response(self._fx.body("view_metadata_checkpoint"))
        return Response(status_code=404)

    async def _post_upload_image(self, request: Request) -> Response:
        """server.image_upload: same name + same bytes deduplicates, different bytes get `` (i)``."""
        fields = _parse_multipart(request.headers.get("content-type", ""), await request.body())
        filename, data = fields.get("image", (None, b""))
        if not filename:
            return Response(status_code=400)
        kind = fields["type"][1].decode() if "type" in fields else "input"
        if kind not in _Files.KINDS:
            raise ValueError(f"upload type {kind!r}")  # ComfyUI fails with an UnboundLocalError: a 500
        subfolder = fields["subfolder"][1].decode() if "subfolder" in fields else ""
        target = posixpath.normpath(posixpath.join(subfolder, filename))
        if target.startswith("..") or target.startswith("/"):
            return Response(status_code=400)
        overwrite = fields["overwrite"][1].decode() if "overwrite" in fields else None
        duplicate = False
        if overwrite not in ("true", "1"):
            stem, dot, ext = filename.rpartition(".")
            stem, ext = (stem, dot + ext) if dot else (filename, "")
            index = 1
            while (existing := self._files.get(kind, subfolder, filename)) is not None:
                if existing.data == data:
                    duplicate = True
                    break
                filename = f"{stem} ({index}){ext}"
                index += 1
        if not duplicate:
            self._files.put(kind, subfolder, filename, data)
        return _json_response({"name": filename, "subfolder": subfolder, "type": kind})

    # ----------------------------------------------------------------- WebSocket

    async def _websocket(self, websocket: WebSocket) -> None:
        """server.websocket_handler: status(sid) first, catch-up ``executing``, feature-flags hello."""
        if self.refuse_websocket:  # a proxy that passes HTTP but not the upgrade: 403, no socket
            await websocket.close()
            return
        await websocket.accept()
        hub = self._hub
        assert hub is not None
        sid = websocket.query_params.get("clientId", "") or uuid.uuid4().hex
        conn = _Conn(websocket, sid, websocket.scope.get("extensions", {}).get(_TRANSPORT_KEY))
        in_run = self._busy()
        async with hub.lock:
            hub.register(conn)
            status = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}, "sid": sid}
            await hub.write(conn, _text_frame("status", status), in_run)
            if self._client_id == sid and self._last_node is not None:
                await hub.write(conn, _text_frame("executing", {"node": self._last_node}), in_run)
        try:
            await self._read_client(hub, conn)
        finally:
            hub.release(conn)

    async def _read_client(self, hub: _Hub, conn: _Conn) -> None:
        first_message = True
        while True:
            message = await conn.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            try:
                data = json.loads(text)
                if first_message and data.get("type") == "feature_flags":
                    hub.flags[conn.sid] = data.get("data", {})
                    reply = _text_frame("feature_flags", self._fx.body("features"))
                    async with hub.lock:
                        if conn.sid in hub.sockets:
                            await hub.write(hub.sockets[conn.sid], reply, self._busy())
                first_message = False
            except Exception:  # noqa: BLE001 - ComfyUI logs bad client frames and carries on
                logger.debug("fake ComfyUI: ignoring client frame %r", text[:200], exc_info=True)
