"""A faithful fake ComfyUI 0.8.0 server: real HTTP + WebSocket on 127.0.0.1, driven by captured fixtures.

Why a fake and not a mock: the client must survive what only real sockets show (dropped sockets, a
restart on the same port, slow downloads, a second socket taking over a clientId). So this runs a real
uvicorn server in a daemon thread and reproduces, message for message, what
``tests/fixtures/comfyui/`` recorded from a real ComfyUI (see that folder's README):

* every static body (``/system_stats``, ``/features``, ``/object_info`` byte-exact, ...) is served
  from the fixture files, never retyped;
* ``POST /prompt`` validates like ``execution.validate_prompt`` (a port of it, against object_info),
  so 400 bodies have exactly the fixtures' shape;
* the executor reproduces ComfyUI's execution order (``ExecutionList.ux_friendly_pick_node``), its
  output cache (input signatures; only the previous prompt's nodes survive), ``progress_state``
  bookkeeping, message routing (lifecycle events only to the prompt's ``client_id`` socket) and the
  end-of-prompt order ``execution_success -> history written -> status -> executing null``;
* outputs are real PNGs with ComfyUI's ``tEXt`` chunks, previews are the captured JPEGs.

Usage::

    with FakeComfy(step_time=0.01) as fake:
        httpx.post(f"{fake.url}/prompt", json={"prompt": load_workflow("txt2img"), "client_id": "me"})
        fake.wait_idle()
"""

from __future__ import annotations

import asyncio
import copy
import functools
import heapq
import io
import json
import logging
import mimetypes
import posixpath
import random
import re
import struct
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
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
from tests.fakes.comfyui.files import _DEFAULT_SHAPE, _expand_prefix, _Files, _norm_subfolder, _PngFactory, _StoredFile
from tests.fakes.comfyui.fixtures import FIXTURES_DIR, _Fixtures
from tests.fakes.comfyui.hub import _TRANSPORT_KEY, _Conn, _Hub, _text_frame, _TransportWSProtocol
from tests.fakes.comfyui.knobs import _Knobs
from tests.fakes.comfyui.validation import _IMAGE_LOADERS, _error, _is_link, _Validator

__all__ = ["FakeComfy"]

logger = logging.getLogger(__name__)

#: Samplers whose ``steps`` input drives per-step progress and previews.
SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced"})
#: execution.SENSITIVE_EXTRA_DATA_KEYS: moved out of extra_data before it is queued or stored.
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
#: execution.MAXIMUM_HISTORY_SIZE
MAXIMUM_HISTORY_SIZE = 10000
_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic: nodes.PreviewImage's alphabet

_T = TypeVar("_T")


# --------------------------------------------------------------------------- graph: order and cache keys


def _execution_order(
    prompt: dict[str, Any],
    outputs: list[str],
    is_cached: Callable[[str], bool],
    is_output: Callable[[str], bool],
    is_lazy: Callable[[str, str], bool],
) -> list[str]:
    """comfy_execution.graph.ExecutionList: the order ComfyUI stages nodes in.

    Cached upstream nodes are never added; output nodes always are (a cached one replays ``executed``).
    """
    pending: dict[str, None] = {}
    block_count: dict[str, int] = {}
    blocking: dict[str, dict[str, None]] = {}

    def add_node(root: str) -> None:
        stack, links = [root], []
        while stack:
            uid = stack.pop()
            if uid in pending:
                continue
            pending[uid], block_count[uid], blocking[uid] = None, 0, {}
            for name, value in prompt[uid]["inputs"].items():
                if _is_link(value) and not is_lazy(uid, name):
                    if not is_cached(value[0]):
                        stack.append(value[0])
                    links.append((value[0], uid))
        for src, dst in links:
            if not is_cached(src):
                add_node(src)
                if dst not in blocking[src]:
                    blocking[src][dst] = None
                    block_count[dst] += 1

    def pick(ready: list[str]) -> str:
        """ux_friendly_pick_node: outputs first, then nodes one or two hops from an output."""
        for node in ready:
            if is_output(node):
                return node
        for node in ready:
            if any(is_output(b) for b in blocking[node]):
                return node
        for node in ready:
            if any(is_output(b1) for b in blocking[node] for b1 in blocking[b]):
                return node
        return ready[0]

    for output in outputs:
        add_node(output)
    order: list[str] = []
    while pending:
        ready = [n for n in pending if block_count[n] == 0] or list(pending)  # a cycle: run the rest anyway
        node = pick(ready)
        order.append(node)
        del pending[node]
        for blocked in blocking.pop(node):
            block_count[blocked] -= 1
    return order


def _hashable(value: Any) -> Hashable:
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _hashable(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(_hashable(v) for v in value))
    return (type(value).__name__, value)


def _signatures(
    prompt: dict[str, Any], is_changed: Callable[[str], Any], with_id: Callable[[str], bool]
) -> dict[str, Hashable]:
    """CacheKeySetInputSignature: class, IS_CHANGED, constant inputs and the ancestors' signatures."""
    memo: dict[str, Hashable] = {}

    def sig(node_id: str, visiting: frozenset[str]) -> Hashable:
        if node_id in memo:
            return memo[node_id]
        if node_id not in prompt or node_id in visiting:
            return ("nan", float("nan"))  # ComfyUI uses NaN: never equal, never cached
        node = prompt[node_id]
        inputs = node.get("inputs", {})
        parts: list[Hashable] = [node["class_type"], _hashable(is_changed(node_id))]
        if with_id(node_id):
            parts.append(node_id)
        for key in sorted(inputs):
            value = inputs[key]
            if _is_link(value):
                parts.append((key, ("ANCESTOR", sig(value[0], visiting | {node_id}), value[1])))
            else:
                parts.append((key, _hashable(value)))
        memo[node_id] = tuple(parts)
        return memo[node_id]

    return {node_id: sig(node_id, frozenset()) for node_id in prompt}


@dataclass(frozen=True)
class _Cached:
    """A cached node output; only the UI part matters to the fake."""

    ui: dict[str, Any] | None


# --------------------------------------------------------------------------- one prompt run


class _Interrupted(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class _NodeFailed(Exception):
    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


@dataclass
class _Run:
    """What one execution accumulates: history messages, UI outputs, progress registry."""

    number: Any
    pid: str
    prompt: dict[str, Any]
    extra: dict[str, Any]
    outputs: list[str]
    sigs: dict[str, Hashable] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    ui: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_node: str | None = None

    @property
    def client_id(self) -> str | None:
        return self.extra.get("client_id")

    def record_ui(self, node_id: str, ui: dict[str, Any]) -> None:
        self.ui[node_id] = ui
        self.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}

    def progress_entry(self, node_id: str) -> dict[str, Any]:
        """ProgressRegistry.ensure_entry: nodes appear in first-touch order, pending with ints 0/1."""
        return self.progress.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def progress_state(self) -> dict[str, Any]:
        nodes = {
            node_id: {
                "value": e["value"], "max": e["max"], "state": e["state"], "node_id": node_id,
                "prompt_id": self.pid, "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
            }
            for node_id, e in self.progress.items()
            if e["state"] != "pending"
        }
        return {"prompt_id": self.pid, "nodes": nodes}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_response(data: Any, status: int = 200) -> Response:
    """aiohttp's web.json_response: json.dumps defaults and this exact Content-Type."""
    return Response(json.dumps(data), status_code=status, media_type="application/json; charset=utf-8")


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Minimal multipart/form-data parser (field -> (filename, bytes)); python-multipart is not a dependency."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("multipart body without boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + match.group(1).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        disposition = next((line for line in lines if line.lower().startswith("content-disposition")), "")
        params = dict(re.findall(r'(\w+)="([^"]*)"', disposition))
        if "name" in params:
            fields[params["name"]] = (params.get("filename"), data.removesuffix(b"\r\n"))
    return fields


# --------------------------------------------------------------------------- the server


class FakeComfy(_Knobs):
    """A ComfyUI 0.8.0 look-alike on a real loopback port (see the module docstring).

    The knobs a test turns (``step_time``, ``reject_next``, ``hold``...) and the observations it asserts
    on (``prompts``, ``interrupts``, ``deleted``) are ``_Knobs``' (knobs.py, which lists them all).
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

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _boot(self, *, fresh: bool) -> None:
        if fresh:
            self._reset_process()
        self._start_background()
        await self._start_server()

    def _start_background(self) -> None:
        self._hub = _Hub(self._frame_written)
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._tasks = [asyncio.create_task(self._hub.publish()), asyncio.create_task(self._worker())]

    async def _stop_background(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

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

    # ----------------------------------------------------------------- queue state

    def _queue_remaining(self) -> int:
        return len(self._queue) + (1 if self._running is not None else 0)

    def _busy(self) -> bool:
        """Frames sent while work is queued or running count towards ``drop_sockets_after``."""
        return self._queue_remaining() > 0

    def _send(self, event: str, data: Any, sid: str | None, *, in_run: bool = True) -> None:
        assert self._hub is not None
        self._hub.send(_text_frame(event, data), sid, in_run)

    def _broadcast_status(self, *, in_run: bool | None = None) -> None:
        """PromptServer.queue_updated: every socket, every queue change."""
        status = {"status": {"exec_info": {"queue_remaining": self._queue_remaining()}}}
        self._send("status", status, None, in_run=self._busy() if in_run is None else in_run)

    def _enqueue(self, item: tuple[Any, ...]) -> None:
        with self._cond:
            heapq.heappush(self._queue, item)
            self._cond.notify_all()
        self._poke()
        self._broadcast_status()

    def _delete_pending(self, prompt_id: str) -> None:
        """PromptQueue.delete_queue_item, including its double status when the last item goes."""
        for index, item in enumerate(self._queue):
            if item[1] == prompt_id:
                if len(self._queue) == 1:
                    self._wipe_queue()
                else:
                    with self._cond:
                        self._queue.pop(index)
                        heapq.heapify(self._queue)
                self.deleted.append(prompt_id)
                self._broadcast_status()
                return

    def _wipe_queue(self) -> None:
        with self._cond:
            self._queue = []
            self._cond.notify_all()
        self._broadcast_status()

    # ----------------------------------------------------------------- executor

    async def _worker(self) -> None:
        while True:
            item = await self._take_next()
            try:
                await self._execute(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a fake bug must not wedge every later test
                logger.exception("fake ComfyUI: executor crashed on %s", item[1])
                if self._running is item:
                    self._finish(_Run(item[0], item[1], item[2], item[3], item[4]), success=False)

    async def _take_next(self) -> tuple[Any, ...]:
        assert self._wake is not None
        while not self._queue or self._hold:
            self._wake.clear()
            await self._wake.wait()
        with self._cond:
            item = heapq.heappop(self._queue)
            self._running = item
        self._broadcast_status()
        return item

    def _add_message(self, run: _Run, event: str, data: dict[str, Any], *, broadcast: bool) -> None:
        """PromptExecutor.add_message: kept for history, sent only with a client_id (or broadcast)."""
        data = {**data, "timestamp": _now_ms()}
        run.messages.append([event, data])
        if run.client_id is not None or broadcast:
            self._send(event, data, run.client_id)

    async def _execute(self, item: tuple[Any, ...]) -> None:
        number, pid, prompt, extra, outputs, _sensitive = item
        run = _Run(number, pid, prompt, extra, outputs)
        assert self._interrupt is not None
        self._interrupt.clear()  # nodes.interrupt_processing(False) at every prompt start
        self._client_id, self._last_node = run.client_id, None
        self._add_message(run, "execution_start", {"prompt_id": pid}, broadcast=False)
        if self._free_memory:
            self._cache.clear()
            self._free_memory = False
        run.sigs = _signatures(prompt, self._is_changed(prompt), self._keyed_by_id(prompt))
        in_use = set(run.sigs.values())  # clean_unused: only this prompt's nodes stay cached
        self._cache = {key: value for key, value in self._cache.items() if key in in_use}
        cached = [node_id for node_id in prompt if run.sigs[node_id] in self._cache]
        self._add_message(run, "execution_cached", {"nodes": cached, "prompt_id": pid}, broadcast=False)
        order = _execution_order(
            prompt,
            outputs,
            is_cached=lambda n: n in run.sigs and run.sigs[n] in self._cache,
            is_output=lambda n: self._classes[prompt[n]["class_type"]].get("output_node") is True,
            is_lazy=lambda n, name: self._input_option(prompt[n]["class_type"], name, "lazy") is True,
        )
        run.fail_node = self._failure_node(run, order)
        success = False
        try:
            for node_id in order:
                await self._execute_node(run, node_id)
        except _Interrupted as stop:
            data = {"prompt_id": pid, "node_id": stop.node_id, "node_type": prompt[stop.node_id]["class_type"],
                    "executed": list(run.executed)}
            self._add_message(run, "execution_interrupted", data, broadcast=True)
        except _NodeFailed as failure:
            self._add_message(run, "execution_error", self._error_data(run, failure.node_id), broadcast=False)
        else:
            self._add_message(run, "execution_success", {"prompt_id": pid}, broadcast=False)
            success = True
        self._finish(run, success=success)

    def _finish(self, run: _Run, *, success: bool) -> None:
        """PromptQueue.task_done, then the end-of-prompt ``executing null`` (main.prompt_worker)."""
        self._last_node = None
        with self._cond:
            if len(self._history) > MAXIMUM_HISTORY_SIZE:
                self._history.pop(next(iter(self._history)))
            self._history[run.pid] = {
                "prompt": [run.number, run.pid, run.prompt, run.extra, run.outputs],
                "outputs": run.ui,
                "status": {"status_str": "success" if success else "error", "completed": success,
                           "messages": run.messages},
                "meta": run.meta,
            }
            self._running = None
            self._broadcast_status(in_run=True)
            if run.client_id is not None:
                self._send("executing", {"node": None, "prompt_id": run.pid}, run.client_id)
            self._cond.notify_all()

    def _failure_node(self, run: _Run, order: list[str]) -> str | None:
        """``fail_next`` picks VAEDecode (else the last non-output node); a 16-channel latent fails naturally."""
        classes = {n: run.prompt[n]["class_type"] for n in order}
        for node_id, cls in classes.items():
            source = run.prompt[node_id]["inputs"].get("samples")
            upstream = run.prompt.get(source[0], {}).get("class_type") if _is_link(source) else None
            if cls == "VAEDecode" and upstream == "EmptySD3LatentImage":  # 16 latent channels vs an SD1.5 VAE
                return node_id
        if not self.fail_next:
            return None
        self.fail_next = False
        runnable = [n for n in order if run.sigs[n] not in self._cache]
        non_output = [n for n in runnable if self._classes[classes[n]].get("output_node") is not True]
        decoders = [n for n in non_output if classes[n] == "VAEDecode"]
        for candidates in (decoders, non_output, runnable, order):
            if candidates:
                return candidates[0] if candidates is decoders else candidates[-1]
        return None

    def _error_data(self, run: _Run, node_id: str) -> dict[str, Any]:
        """The shape of ws/execution_error.jsonl, reusing its message and traceback."""
        template = self._fx.execution_error
        node = run.prompt[node_id]
        if node["class_type"] == "VAEDecode":
            current_inputs = template["current_inputs"]
        else:
            current_inputs = {k: [repr(v)] for k, v in node["inputs"].items()}
        return {
            "prompt_id": run.pid, "node_id": node_id, "node_type": node["class_type"],
            "executed": list(run.executed), "exception_message": template["exception_message"],
            "exception_type": template["exception_type"], "traceback": template["traceback"],
            "current_inputs": current_inputs, "current_outputs": list(run.prompt),
        }

    def _send_progress_state(self, run: _Run) -> None:
        self._send("progress_state", run.progress_state(), run.client_id)

    def _progress(
        self, run: _Run, node_id: str, state: str, value: float = 0.0, maximum: float = 1.0
    ) -> None:
        """ProgressRegistry start/update (running, floats 0.0/1.0 unless steps) and finish (value = max)."""
        entry = run.progress_entry(node_id)
        if state == "running":
            entry.update(state="running", value=value, max=maximum)
        else:
            entry.update(state="finished", value=entry["max"])
        self._send_progress_state(run)

    async def _execute_node(self, run: _Run, node_id: str) -> None:
        """execution.execute for one node: cached replay, or progress -> executing -> work -> executed."""
        node = run.prompt[node_id]
        cached = self._cache.get(run.sigs[node_id])
        if cached is not None and node_id != run.fail_node:
            if run.client_id is not None:
                data = {"node": node_id, "display_node": node_id, "output": cached.ui, "prompt_id": run.pid}
                self._send("executed", data, run.client_id)
            if cached.ui is not None:
                run.record_ui(node_id, cached.ui)
            self._progress(run, node_id, "finished")
            return
        self._progress(run, node_id, "running")
        if run.client_id is not None:
            self._last_node = node_id
            self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": run.pid}, run.client_id)
        assert self._interrupt is not None
        if self._interrupt.is_set():  # nodes.before_node_execution
            raise _Interrupted(node_id)
        if node["class_type"] in SAMPLERS and node_id != run.fail_node:
            await self._sample(run, node_id)
        else:
            await asyncio.sleep(max(self.node_time, 0.0))
        if node_id == run.fail_node:
            raise _NodeFailed(node_id)
        ui = self._write_outputs(run, node_id)
        if ui is not None:
            if run.client_id is not None:
                self._send("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": run.pid},
                           run.client_id)
            run.record_ui(node_id, ui)
        self._cache[run.sigs[node_id]] = _Cached(ui)
        run.executed.append(node_id)
        self._progress(run, node_id, "finished")

    async def _sample(self, run: _Run, node_id: str) -> None:
        """Per step: progress_state, then ``progress`` + type-1 preview, or type-4 preview + ``progress``."""
        steps = run.prompt[node_id]["inputs"].get("steps")
        total = steps if isinstance(steps, int) and steps > 0 else 1
        jpegs = self._fx.preview_jpegs
        for step in range(1, total + 1):
            await self._step_wait(node_id)
            self._progress(run, node_id, "running", step, total)
            progress = {"value": step, "max": total, "prompt_id": run.pid, "node": node_id}
            jpeg = jpegs[(step - 1) % len(jpegs)]
            assert self._hub is not None
            if self._hub.supports_preview_metadata(run.client_id):
                if self.previews:
                    meta = json.dumps({"node_id": node_id, "prompt_id": run.pid, "display_node_id": node_id,
                                       "parent_node_id": None, "real_node_id": node_id,
                                       "image_type": "image/jpeg"}).encode()
                    self._hub.send(struct.pack(">II", 4, len(meta)) + meta + jpeg, run.client_id, True)
                self._send("progress", progress, run.client_id)
            else:
                self._send("progress", progress, run.client_id)
                if self.previews:
                    self._hub.send(struct.pack(">II", 1, 1) + jpeg, run.client_id, True)

    async def _step_wait(self, node_id: str) -> None:
        """One sampler step; an interrupt ends it at once (ComfyUI checks inside the model too)."""
        assert self._interrupt is not None
        if self.step_time > 0:
            try:
                await asyncio.wait_for(self._interrupt.wait(), self.step_time)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0)
        if self._interrupt.is_set():
            raise _Interrupted(node_id)

    # ----------------------------------------------------------------- node semantics

    def _input_option(self, class_type: str, name: str, option: str) -> Any:
        spec = self._classes.get(class_type, {}).get("input", {})
        for category in ("required", "optional"):
            entry = spec.get(category, {}).get(name)
            if entry is not None and len(entry) > 1 and isinstance(entry[1], dict):
                return entry[1].get(option)
        return None

    def _is_changed(self, prompt: dict[str, Any]) -> Callable[[str], Any]:
        """IS_CHANGED: LoadImage hashes its file, every other node here has none (False)."""

        def is_changed(node_id: str) -> Any:
            node = prompt[node_id]
            if node["class_type"] in _IMAGE_LOADERS:
                stored = self._files.resolve_image(str(node.get("inputs", {}).get("image")))
                return stored.sha256 if stored is not None else float("nan")
            return False

        return is_changed

    def _keyed_by_id(self, prompt: dict[str, Any]) -> Callable[[str], bool]:
        """include_unique_id_in_input: classes with a hidden UNIQUE_ID are cached per node id."""

        def with_id(node_id: str) -> bool:
            hidden = self._classes.get(prompt[node_id]["class_type"], {}).get("input", {}).get("hidden", {})
            return "UNIQUE_ID" in hidden.values()

        return with_id

    def _image_exists(self, value: str) -> bool:
        return self._files.resolve_image(value) is not None

    def _image_shape(self, prompt: dict[str, Any], node_id: str, depth: int = 0) -> tuple[int, int, int]:
        """(width, height, batch) of the images a node produces, traced back through the graph."""
        node = prompt.get(node_id)
        if node is None or depth > 64:
            return _DEFAULT_SHAPE
        inputs = node.get("inputs", {})
        if node["class_type"] in _IMAGE_LOADERS:
            stored = self._files.resolve_image(str(inputs.get("image")))
            return (*stored.size, 1) if stored is not None else _DEFAULT_SHAPE
        upstream = next(
            (inputs[k] for k in ("images", "image", "samples", "pixels", "latent_image", "latent", "latents")
             if _is_link(inputs.get(k))),
            next((v for v in inputs.values() if _is_link(v)), None),
        )
        width, height, batch = self._image_shape(prompt, upstream[0], depth + 1) if upstream else _DEFAULT_SHAPE
        if isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int) and inputs["width"] > 0:
            width, height = inputs["width"], inputs["height"]
        elif isinstance(inputs.get("scale_by"), (int, float)):
            width, height = max(1, round(width * inputs["scale_by"])), max(1, round(height * inputs["scale_by"]))
        if isinstance(inputs.get("batch_size"), int) and inputs["batch_size"] > 0:
            batch = inputs["batch_size"]
        return width, height, batch

    def _write_outputs(self, run: _Run, node_id: str) -> dict[str, Any] | None:
        """SaveImage (output/, counters per prefix) and PreviewImage (temp/, random prefix)."""
        node = run.prompt[node_id]
        if node["class_type"] == "SaveImage":
            kind, prefix = "output", str(node["inputs"].get("filename_prefix", "ComfyUI"))
        elif node["class_type"] == "PreviewImage":
            kind, prefix = "temp", "ComfyUI_temp_" + "".join(random.choice(_TEMP_LETTERS) for _ in range(5))
        else:
            return None
        source = node["inputs"].get("images")
        width, height, batch = self._image_shape(run.prompt, source[0]) if _is_link(source) else _DEFAULT_SHAPE
        normalized = posixpath.normpath(_expand_prefix(prefix, width, height))
        subfolder, base = posixpath.dirname(normalized), posixpath.basename(normalized)
        counter = self._files.next_counter(kind, subfolder, base)
        texts = self._png_texts(run)
        images = []
        for index in range(batch):
            name = f"{base}_{counter:05}_.png"
            self._files.put(kind, subfolder, name, self._png.make(width, height, texts, index))
            images.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        return {"images": images}

    def _png_texts(self, run: _Run) -> list[tuple[str, str]]:
        """The hidden PROMPT (LoadImage nodes carry their injected ``is_changed``) and EXTRA_PNGINFO."""
        prompt = dict(run.prompt)
        for node_id, node in run.prompt.items():
            if node.get("class_type") in _IMAGE_LOADERS:
                stored = self._files.resolve_image(str(node["inputs"].get("image")))
                if stored is not None:
                    prompt[node_id] = {**node, "is_changed": [stored.sha256]}
        texts = [("prompt", json.dumps(prompt))]
        extra_pnginfo = run.extra.get("extra_pnginfo")
        if isinstance(extra_pnginfo, dict):
            texts.extend((key, json.dumps(value)) for key, value in extra_pnginfo.items())
        return texts

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
        if "delete" in body:
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
