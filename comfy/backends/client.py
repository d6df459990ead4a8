"""An async client for ONE ComfyUI server: HTTP (httpx) and the event WebSocket (httpx-ws).

Foreign errors are mapped to :mod:`comfy.errors` in exactly one place, :func:`map_errors`.
The one piece of policy that lives here is :meth:`ComfyClient.follow`: ComfyUI reports a
prompt's end only on the WebSocket of the client that submitted it, so following a prompt means
reconnecting when the socket drops and reconciling through ``/history`` (which is final once
``executing`` with ``node: null`` has been sent). Whether to resubmit is the caller's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from comfy.backends import protocol
from comfy.backends.event_socket import EventHandler, EventStream, Spare
from comfy.backends.protocol import Event, OutputRef
from comfy.backends.transport import map_errors
from comfy.errors import (
    ExecutionFailed,
    ExecutionInterrupted,
    PromptLost,
    PromptRejected,
    ProtocolError,
    ServerError,
    ServerTimeout,
    ServerUnavailable,
)
from comfy.graph.object_info import ObjectInfo

__all__ = ["ComfyClient", "HistoryEntry", "QueuedPrompt", "RunResult"]


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedPrompt:
    prompt_id: str
    number: int | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One ``/history/{id}`` entry: how a prompt ended and what it produced."""

    prompt_id: str
    status_str: str | None
    completed: bool
    outputs: tuple[OutputRef, ...]
    messages: tuple[tuple[str, dict[str, Any]], ...] = ()
    prompt: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, prompt_id: str, body: Any) -> HistoryEntry | None:
        entry = body.get(prompt_id) if isinstance(body, dict) else None
        if not isinstance(entry, dict):
            return None
        status = entry.get("status") or {}
        outputs = tuple(
            ref
            for node_id, output in (entry.get("outputs") or {}).items()
            for ref in protocol.output_refs(str(node_id), output)
        )
        raw_prompt = entry.get("prompt")
        graph = raw_prompt[2] if isinstance(raw_prompt, list) and len(raw_prompt) > 2 else {}
        messages = tuple((str(m[0]), dict(m[1] or {})) for m in status.get("messages") or () if len(m) == 2)
        return cls(prompt_id, status.get("status_str"), bool(status.get("completed")), outputs, messages, graph)

    @property
    def saved(self) -> tuple[OutputRef, ...]:
        """Files written by output nodes (SaveImage); PreviewImage's ``temp`` files are skipped."""
        return tuple(ref for ref in self.outputs if ref.type == "output")

    def timestamp(self, event: str) -> int | None:
        for name, data in self.messages:
            if name == event:
                return data.get("timestamp")
        return None

    def raise_for_outcome(self) -> None:
        """Raise :class:`ExecutionFailed` or :class:`ExecutionInterrupted` unless the prompt succeeded."""
        for name, data in self.messages:
            if name == "execution_error":
                raise _execution_failed(protocol.decode_message(name, data), self.prompt)
            if name == "execution_interrupted":
                raise ExecutionInterrupted(node_id=data.get("node_id"), node_type=data.get("node_type"))
        if self.status_str not in (None, "success"):
            raise ExecutionFailed(f"ComfyUI reports the prompt ended with status {self.status_str!r}.")


def _execution_failed(event: Event, graph: dict[str, Any] | None) -> ExecutionFailed:
    assert isinstance(event, protocol.ExecutionErrorEvent)
    where = protocol.describe_node(graph, event.node_id, event.node_type)
    return ExecutionFailed(
        f"ComfyUI failed while running {where}: {event.exception_type or 'error'}: {event.exception_message}",
        node_id=event.node_id, node_type=event.node_type,
        exception_type=event.exception_type, exception_message=event.exception_message,
    )


@dataclass(frozen=True)
class RunResult:
    """A finished prompt: its id, the files it saved, and the server's own timestamps (ms)."""

    prompt_id: str
    outputs: tuple[OutputRef, ...]
    history: HistoryEntry = field(repr=False)

    @property
    def execution_ms(self) -> int | None:
        start, end = self.history.timestamp("execution_start"), self.history.timestamp("execution_success")
        return end - start if start is not None and end is not None else None


class ComfyClient:
    """HTTP + WebSocket access to one ComfyUI server.

    >>> client = ComfyClient("http://127.0.0.1:8188")
    >>> client.url("/prompt")
    'http://127.0.0.1:8188/prompt'
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | None = None,
        ping_interval: float = 20.0,
        idle_check: float = 15.0,
        reconnect_window: float = 120.0,
        preview_method: str | None = "auto",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(
            headers=dict(headers or {}), timeout=timeout or httpx.Timeout(60.0, connect=10.0),
            follow_redirects=True,
        )
        self.ping_interval = ping_interval
        #: With no event for this long, ask /history and /queue whether the prompt is still alive.
        self.idle_check = idle_check
        #: How long a dropped socket may fail to reconnect before following gives up.
        self.reconnect_window = reconnect_window
        self.preview_method = preview_method
        self._object_info: ObjectInfo | None = None
        self._object_info_lock = asyncio.Lock()
        self._checkpoint_metadata: dict[str, dict[str, Any] | None] = {}
        self._closed = False
        #: The socket the next prompt will use, opening or open (see :meth:`prepare_events`).
        self._spare: Spare | None = None
        #: Every socket held by a task of its own (the spare and those lent to prompts), closed by aclose.
        self._spares: set[Spare] = set()

    def url(self, path: str) -> str:
        return self.base_url + path

    async def __aenter__(self) -> ComfyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._spare = None
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(spare.aclose() for spare in list(self._spares) if spare.loop is loop))
            if self._owns_http:
                await self.http.aclose()

    # -- plain requests ---------------------------------------------------------------------------

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        with map_errors(what):
            response = await self.http.request(method, self.url(path), **kwargs)
        if response.status_code >= 500:
            raise ServerUnavailable(f"ComfyUI answered HTTP {response.status_code} to {what}.",
                                    status=response.status_code)
        if response.status_code in (401, 403):
            raise ServerUnavailable(
                f"ComfyUI (or a proxy in front of it) refused {what} with HTTP {response.status_code}; "
                "check COMFYUI_URL and COMFYUI_HEADERS.", status=response.status_code,
            )
        return response

    async def _json(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, what, **kwargs)
        if response.status_code != 200:
            raise ServerError(f"ComfyUI answered HTTP {response.status_code} to {what}.")
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(f"ComfyUI's answer to {what} is not JSON.") from exc

    async def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: versions, RAM, and each device's name and VRAM."""
        return await self._json("GET", "/system_stats", "system_stats")

    async def object_info(self, *, refresh: bool = False) -> ObjectInfo:
        """``GET /object_info``, cached (it is ~400 KB); ``refresh`` fetches it again."""
        async with self._object_info_lock:
            if self._object_info is None or refresh:
                self._object_info = ObjectInfo(await self._json("GET", "/object_info", "object_info"))
            return self._object_info

    async def checkpoint_metadata(self, filename: str) -> dict[str, Any] | None:
        """``GET /view_metadata/checkpoints?filename=...``: the safetensors header's ``__metadata__`` (for the
        model family), cached per file; None when the file has none (404) or the server cannot say."""
        if self._object_info is not None and filename not in self._object_info.checkpoints:
            return None  # not one of its files: nothing to ask, nothing to keep
        if filename not in self._checkpoint_metadata:
            if len(self._checkpoint_metadata) >= 1024:  # a bound, whatever the server lists
                self._checkpoint_metadata.clear()
            try:
                response = await self._request("GET", "/view_metadata/checkpoints", "view_metadata",
                                               params={"filename": filename})
                body = response.json() if response.status_code == 200 else None
            except (ServerError, ValueError):
                return None  # not cached: asked again next time
            self._checkpoint_metadata[filename] = body if isinstance(body, dict) else None
        return self._checkpoint_metadata[filename]

    async def checkpoints(self) -> list[str]:
        return (await self.object_info()).checkpoints

    async def samplers(self) -> list[str]:
        return (await self.object_info()).samplers

    async def schedulers(self) -> list[str]:
        return (await self.object_info()).schedulers

    async def queue_remaining(self) -> int:
        body = await self._json("GET", "/prompt", "prompt status")
        return int((body.get("exec_info") or {}).get("queue_remaining", 0))

    async def queue(self) -> tuple[list[str], list[str]]:
        """``GET /queue``: the ids of the running and the pending prompts."""
        body = await self._json("GET", "/queue", "queue")
        ids = lambda items: [str(item[1]) for item in items or () if isinstance(item, list) and len(item) > 1]  # noqa: E731
        return ids(body.get("queue_running")), ids(body.get("queue_pending"))

    async def upload_image(self, data: bytes, filename: str, *, overwrite: bool = False, subfolder: str = "") -> str:
        """``POST /upload/image``; returns the name to put in LoadImage (ComfyUI may rename it)."""
        form = {"type": "input", "subfolder": subfolder}
        if overwrite:
            form["overwrite"] = "true"
        body = await self._json("POST", "/upload/image", "upload_image",
                                files={"image": (filename, data, "image/png")}, data=form)
        name = str(body.get("name") or filename)
        return f"{body['subfolder']}/{name}" if body.get("subfolder") else name

    async def queue_prompt(
        self,
        prompt: dict[str, Any],
        *,
        client_id: str,
        prompt_id: str | None = None,
        extra_data: dict[str, Any] | None = None,
        front: bool = False,
    ) -> QueuedPrompt:
        """``POST /prompt``. Raises :class:`PromptRejected` with ComfyUI's complaints as sentences."""
        extra = dict(extra_data or {})
        if self.preview_method:
            extra.setdefault("preview_method", self.preview_method)  # overrides --preview-method none
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "extra_data": extra}
        if prompt_id:
            body["prompt_id"] = prompt_id
        if front:
            body["front"] = True
        response = await self._request("POST", "/prompt", "queueing the prompt", json=body)
        try:
            answer = response.json()
        except ValueError as exc:
            raise ProtocolError(f"ComfyUI answered HTTP {response.status_code} to /prompt without JSON.") from exc
        if response.status_code == 400:
            message, problems = protocol.describe_rejection(answer, prompt)
            raise PromptRejected(message, problems=problems, body=answer)
        if response.status_code != 200 or "prompt_id" not in answer:
            raise ProtocolError(f"ComfyUI answered HTTP {response.status_code} to /prompt: {str(answer)[:200]}")
        return QueuedPrompt(str(answer["prompt_id"]), answer.get("number"))

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """``GET /history/{id}``; None while the prompt is queued, running or unknown."""
        body = await self._json("GET", f"/history/{prompt_id}", "history")
        return HistoryEntry.from_body(prompt_id, body)

    async def view(self, ref: OutputRef) -> AsyncIterator[bytes]:
        """Stream a file through ``GET /view``."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        with map_errors(f"downloading {ref.filename}"):
            async with self.http.stream("GET", self.url("/view"), params=params) as response:
                if response.status_code == 404:
                    raise ServerError(f"ComfyUI has no file {ref.filename!r} (type {ref.type}) any more.")
                if response.status_code != 200:
                    raise ServerUnavailable(f"ComfyUI answered HTTP {response.status_code} to /view.")
                async for chunk in response.aiter_bytes():
                    yield chunk

    async def download(self, ref: OutputRef) -> bytes:
        return b"".join([chunk async for chunk in self.view(ref)])

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt``: stop the running prompt (only if it is ``prompt_id``, when given)."""
        await self._request("POST", "/interrupt", "interrupt", json={"prompt_id": prompt_id} if prompt_id else None)

    async def delete_from_queue(self, prompt_ids: list[str]) -> None:
        """``POST /queue {"delete": [...]}``: drop prompts that have not started yet."""
        await self._request("POST", "/queue", "queue delete", json={"delete": prompt_ids})

    async def cancel(self, prompt_id: str) -> bool:
        """Remove a pending prompt or interrupt it if it runs; quietly nothing if it has ended.

        True when the prompt was deleted from the queue before it started (confirmed by a second look at
        ``/queue``): it never runs and sends nothing more, so the caller need not wait for its end.
        """
        running, pending = await self.queue()
        if prompt_id in pending:
            await self.delete_from_queue([prompt_id])
            running, pending = await self.queue()
            if prompt_id not in running and prompt_id not in pending:
                return True
        if prompt_id in running:
            # It started between the two looks: interrupt it. Only then: a ComfyUI older than targeted
            # interrupts stops whatever runs, which may be someone else's prompt.
            await self.interrupt(prompt_id)
        elif prompt_id in pending:
            await self.delete_from_queue([prompt_id])  # the delete did not take: once more
        return False

    async def locate(self, prompt_id: str) -> str | None:
        """Where the server has a prompt: ``"ended"`` (in its history), ``"running"``, ``"pending"``, or None
        when it has none of it. For a submission whose answer was lost: follow what is found, resend only None.
        """
        if await self.history(prompt_id) is not None:
            return "ended"
        running, pending = await self.queue()
        if prompt_id in running:
            return "running"
        if prompt_id in pending:
            return "pending"
        # The history may have been written between the two calls.
        return "ended" if await self.history(prompt_id) is not None else None

    # -- following a prompt -----------------------------------------------------------------------

    def events(self, client_id: str, *, feature_flags: bool = True) -> EventStream:
        """The event WebSocket for ``client_id``; open it before submitting so no event is missed."""
        return EventStream(self, client_id, feature_flags=feature_flags)

    @contextlib.asynccontextmanager
    async def new_events(self) -> AsyncIterator[EventStream]:
        """An open event socket with a new client id, for one new prompt: submit with its ``client_id``.

        The socket :meth:`prepare_events` opened ahead is used when it is still alive, so the job does
        not wait for the WebSocket handshake; otherwise one is opened here (raising its errors).
        Afterwards a socket opened ahead is closed in the background.
        """
        spare, self._spare = self._spare, None
        if spare is not None and spare.loop is not asyncio.get_running_loop():
            spare = None  # made on another event loop (the client outlived an asyncio.run): it went with it
        stream = None
        try:
            stream = await spare.take() if spare is not None else None
        finally:
            if stream is None and spare is not None:
                spare.release()  # dead, or we were cancelled while taking it
        if stream is None:
            async with self.events(uuid.uuid4().hex) as stream:
                yield stream
            return
        try:
            yield stream
        finally:
            spare.release()  # type: ignore[union-attr]

    def prepare_events(self) -> None:
        """Start opening the socket the next :meth:`new_events` takes, unless one is already on its way.

        Called once a prompt is submitted: the handshake then overlaps its run, not its submission.
        """
        if self._spare is None and not self._closed:
            self._spare = Spare(self)

    async def run(
        self,
        prompt: dict[str, Any],
        *,
        client_id: str | None = None,
        prompt_id: str | None = None,
        on_event: EventHandler | None = None,
        timeout: float = 3600.0,
        extra_data: dict[str, Any] | None = None,
    ) -> RunResult:
        """Submit ``prompt`` and follow it to the end; raises a :class:`ServerError` subclass on failure."""
        client_id = client_id or uuid.uuid4().hex
        prompt_id = prompt_id or str(uuid.uuid4())
        deadline = time.monotonic() + timeout
        async with self.events(client_id) as stream:
            await self.queue_prompt(prompt, client_id=client_id, prompt_id=prompt_id, extra_data=extra_data)
            return await self.follow(prompt_id, client_id, on_event=on_event, deadline=deadline, stream=stream)

    async def follow(
        self,
        prompt_id: str,
        client_id: str,
        *,
        on_event: EventHandler | None = None,
        deadline: float | None = None,
        stream: EventStream | None = None,
    ) -> RunResult:
        """Follow a submitted prompt until it ends, across dropped sockets; also re-attaches after a restart.

        Raises :class:`PromptLost` if the server knows nothing of it, :class:`ServerTimeout` past
        ``deadline`` (a ``time.monotonic()`` value), and the prompt's own failure otherwise.
        """
        deadline = deadline if deadline is not None else time.monotonic() + 3600.0
        backoff, down_since = 0.25, None
        while True:
            try:
                if stream is not None:
                    entry = await self._consume(stream, prompt_id, on_event, deadline)
                else:
                    async with self.events(client_id) as fresh:
                        # Anything may have happened while we were away: ask before listening.
                        ended = await self._ended_or_lost(prompt_id)
                        backoff, down_since = 0.25, None
                        entry = None if ended else await self._consume(fresh, prompt_id, on_event, deadline)
                return await self._result(prompt_id, entry)
            except ServerUnavailable as exc:
                if stream is not None:
                    # Close the dead socket first: when a socket closes, ComfyUI unregisters its client
                    # id, which would silence the new socket if this one closed after it connected.
                    await stream.aclose()
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since + backoff > self.reconnect_window:
                    raise  # the server is gone, not blinking: let the caller decide (retry, fail over)
                if now + backoff > deadline:
                    raise ServerTimeout(f"Gave up following prompt {prompt_id}: {exc}") from exc
                logger.warning("Event socket for prompt %s dropped (%s); reconnecting in %.2fs", prompt_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            stream = None

    async def _consume(self, stream: EventStream, prompt_id: str, on_event: EventHandler | None,
                       deadline: float) -> HistoryEntry | None:
        """Read events until the prompt has ended; returns its history entry when that was read on the way."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerTimeout(f"Prompt {prompt_id} did not finish before the job's time limit.")
            try:
                event = await stream.receive(timeout=min(self.idle_check, remaining))
            except TimeoutError:
                if await self._ended_or_lost(prompt_id):
                    return None
                continue
            if not _concerns(event, prompt_id):
                continue
            if on_event is not None:
                outcome = on_event(event)
                if asyncio.iscoroutine(outcome):
                    await outcome
            if isinstance(event, protocol.Executing) and event.node is None and event.prompt_id == prompt_id:
                return None
            if isinstance(event, protocol.ExecutionSuccess) and event.prompt_id == prompt_id:
                # ComfyUI writes the history entry just after this frame (before ``executing`` null) and never
                # changes it: found now, the run has ended. Not there yet: the null frame still comes.
                entry = await self.history(prompt_id)
                if entry is not None:
                    return entry

    async def _ended_or_lost(self, prompt_id: str) -> bool:
        # A silent socket is normal during a long step, but also what a socket detached by a
        # second connection with our client id looks like (protocol note 6): ask the server.
        where = await self.locate(prompt_id)
        if where is None:
            raise PromptLost(prompt_id)
        return where == "ended"

    async def _result(self, prompt_id: str, entry: HistoryEntry | None = None) -> RunResult:
        entry = entry or await self.history(prompt_id)
        if entry is None:
            raise PromptLost(prompt_id)
        entry.raise_for_outcome()
        return RunResult(prompt_id, entry.saved, entry)

    async def ensure_known(self, prompt_id: str) -> None:
        """Raise :class:`PromptLost` unless the server has the prompt queued, running or in its history."""
        await self._ended_or_lost(prompt_id)


def _concerns(event: Event, prompt_id: str) -> bool:
    """Whether an event is about our prompt (status and legacy previews carry no prompt id)."""
    event_prompt = getattr(event, "prompt_id", None)
    return event_prompt is None or event_prompt == prompt_id
