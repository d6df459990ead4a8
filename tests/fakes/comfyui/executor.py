"""The executor: ComfyUI's execution order and output cache, its prompt queue, and what one run sends.

``_Executor`` is a mixin of FakeComfy: it works on the process state FakeComfy keeps (``_reset_process``)
and reads the knobs (knobs.py); what the nodes do (``_is_changed``, ``_write_outputs``...) it reaches
through ``self`` too (nodes.py, which imports this module, never the other way round). Frames go out
through the hub. May import fixtures, validation and hub.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import struct
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.comfyui.fixtures import _Fixtures
from tests.fakes.comfyui.hub import _Hub, _text_frame
from tests.fakes.comfyui.validation import _is_link

logger = logging.getLogger(__name__)

#: Samplers whose ``steps`` input drives per-step progress and previews.
SAMPLERS = frozenset({"KSampler", "KSamplerAdvanced"})
#: execution.MAXIMUM_HISTORY_SIZE
MAXIMUM_HISTORY_SIZE = 10000


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


# --------------------------------------------------------------------------- the executor


class _Executor:
    """PromptQueue, PromptExecutor and main.prompt_worker, as a mixin of FakeComfy (see the module docstring)."""

    # What it uses of its host: the process state (FakeComfy._reset_process and __init__) and the knobs.
    _cond: threading.Condition
    _queue: list[tuple[Any, ...]]
    _running: tuple[Any, ...] | None
    _history: dict[str, dict[str, Any]]
    _cache: dict[Hashable, _Cached]
    _client_id: str | None
    _last_node: str | None
    _free_memory: bool
    _hub: _Hub | None
    _wake: asyncio.Event | None
    _interrupt: asyncio.Event | None
    _tasks: list[asyncio.Task[Any]]
    _hold: bool
    _fx: _Fixtures
    _classes: dict[str, Any]
    step_time: float
    node_time: float
    previews: bool
    fail_next: bool
    deleted: list[str]

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

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
