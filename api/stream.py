"""A job's live events: Server-Sent Events at ``GET /api/v1/jobs/{id}/events`` and a WebSocket at
``/ws/jobs/{id}``, both sending the same JSON messages.

The first message is always the job's current state (so a client that connects late catches up),
then every change: ``queued`` (with ``position``), ``started``, ``progress`` (``progress`` 0..1,
``node``, ``step``/``steps``), ``preview``, ``retrying``, and one final ``succeeded`` (with ``images``
and ``timings``), ``failed`` (with ``error``) or ``cancelled``, after which the stream ends. Messages
that carry a state change also carry the whole ``job`` as ``GET /api/v1/jobs/{id}`` shows it.

Previews (``?previews=``): ``base64`` (default) puts the image in the message as ``preview``
(``{mime, data}``); ``url`` gives ``preview_url`` to fetch the latest one; ``none`` leaves them out.
An idle stream gets a keep-alive every 15 s (an SSE comment; a ``{"type": "keepalive"}`` message on
the WebSocket) so that proxies such as RunPod's, which cut idle connections, keep it open.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.websockets import WebSocketDisconnect, WebSocketState

from api.errors import ApiError, error_response
from api.guard import ApiContext, Caller
from api.jobs import COMMON, job_url, root_of, visible_job
from api.models import API_PREFIX, artifacts, job_out
from comfy.errors import ComfyError
from comfy.jobs.events import JobEvent
from comfy.jobs.records import Job, JobState

__all__ = ["event_message", "stream_router"]

logger = logging.getLogger(__name__)

Previews = Literal["base64", "url", "none"]
_RUNNING_KINDS = {"started": "running", "progress": "running", "preview": "running"}
_END = object()
#: Event streams (SSE and WebSocket together) one caller may hold open at once.
MAX_STREAMS_PER_CALLER = 8


class StreamSlots:
    """How many event streams each caller holds open; one more than the limit is a 429 with a sentence."""

    def __init__(self, limit: int = MAX_STREAMS_PER_CALLER) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def take(self, caller: Caller) -> Callable[[], None]:
        """Take a slot for ``caller``; returns the release (safe to call more than once)."""
        key = caller.bucket
        if self._open.get(key, 0) >= self.limit:
            raise ApiError(429, "too_many_streams", f"You already have {self.limit} event streams open; close one "
                           "before opening another.", headers={"Retry-After": "5"})
        self._open[key] = self._open.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self._open.get(key, 1) - 1
                if left > 0:
                    self._open[key] = left
                else:
                    self._open.pop(key, None)

        return release

    def open_for(self, caller: Caller) -> int:
        return self._open.get(caller.bucket, 0)


async def event_message(ctx: ApiContext, event: JobEvent, *, previews: Previews, root: str) -> dict[str, Any] | None:
    """The JSON message for one event (None for a preview the client does not want)."""
    if event.kind == "preview" and previews == "none":
        return None
    msg: dict[str, Any] = {"type": event.kind, "job_id": event.job_id}
    job = Job.from_dict(event.job) if event.job else None
    msg["status"] = job.state.value if job else _RUNNING_KINDS.get(event.kind, event.kind)
    for name in ("progress", "node", "step", "steps", "message", "error_code", "timings"):
        value = getattr(event, name)
        if value is not None:
            msg[name] = value
    if event.kind == "preview" and event.preview is not None:
        if previews == "base64":
            msg["preview"] = {"mime": event.preview_mime or "image/jpeg",
                              "data": base64.b64encode(event.preview).decode()}
        else:
            msg["preview_url"] = f"{job_url(event.job_id, root)}/preview"
    if job is not None:
        position = await ctx.studio.position(job.id) if job.state is JobState.QUEUED else None
        if position is not None:
            msg["position"] = position
        if job.state is JobState.SUCCEEDED:
            msg["images"] = [a.model_dump() for a in artifacts(job, root)]
        if job.error and event.final:
            msg["error"] = dict(job.error)
        msg["job"] = job_out(job, position=position, root=root).model_dump(mode="json")
    return msg


async def _events(ctx: ApiContext, job_id: str) -> AsyncIterator[JobEvent | None]:
    """The job's events as :meth:`Studio.follow` gives them, with None every ``keepalive`` idle seconds.

    A separate task pumps the events, so waiting for a keep-alive tick never cancels the follow. It hands
    over one event at a time: while the client does not read, the events wait in the bus's subscription,
    which is bounded (old previews dropped, state changes kept), never in an unbounded queue here.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async with contextlib.aclosing(ctx.studio.follow(job_id)) as events:
                async for event in events:
                    await queue.put(event)
        except ComfyError as exc:
            logger.warning("Event stream of job %s stopped: %s", job_id, exc)
        finally:
            await queue.put(_END)

    task = asyncio.create_task(pump(), name=f"events-{job_id}")
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), ctx.keepalive)
            except TimeoutError:
                yield None
                continue
            if item is _END:
                return
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def stream_router(ctx: ApiContext, slots: StreamSlots | None = None) -> APIRouter:
    router = APIRouter()
    caller_dep = Depends(ctx.caller)
    slots = slots or StreamSlots()
    router.stream_slots = slots  # type: ignore[attr-defined]  # for tests and /health

    @router.get(
        f"{API_PREFIX}/jobs/{{job_id}}/events", tags=["jobs"], summary="Follow a job (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "One `event:` per change; "
                         "`data:` is the JSON message. Ends after the final event."}, **COMMON},
    )
    async def job_events(request: Request, job_id: str,
                         previews: Annotated[Previews, Query(description="How previews are sent.")] = "base64",
                         caller: Caller = caller_dep) -> StreamingResponse:
        job = await visible_job(ctx, caller, job_id)
        root = root_of(request)
        release = slots.take(caller)

        async def body() -> AsyncIterator[str]:
            try:
                yield "retry: 3000\n\n"
                number = 0
                async with contextlib.aclosing(_events(ctx, job.id)) as events:
                    async for event in events:
                        if event is None:
                            yield ": keep-alive\n\n"
                            continue
                        msg = await event_message(ctx, event, previews=previews, root=root)
                        if msg is None:
                            continue
                        number += 1
                        yield f"id: {number}\nevent: {event.kind}\ndata: {json.dumps(msg, separators=(',', ':'))}\n\n"
            finally:
                release()

        # The background release also runs when the client left before the body started.
        return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(release),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @router.websocket("/ws/jobs/{job_id}")
    async def job_socket(websocket: WebSocket, job_id: str, previews: Previews = "base64") -> None:
        """The same messages as the event stream, as JSON text frames; closed (1000) after the final one."""
        try:
            caller = await ctx.guard.check(websocket)
            job = await visible_job(ctx, caller, job_id)
            release = slots.take(caller)
        except ApiError as exc:
            await _deny(websocket, exc.status, exc.code, exc.message, exc.headers)
            return
        except ComfyError as exc:
            await _deny(websocket, 404, exc.code, str(exc), {})
            return
        try:
            await websocket.accept()
        except BaseException:  # the client left during the handshake: its slot is given back all the same
            release()
            raise
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_client(websocket, gone))
        root = str(websocket.scope.get("root_path", "")).rstrip("/")
        try:
            async with contextlib.aclosing(_events(ctx, job.id)) as events:
                async for event in events:
                    if gone.is_set():
                        return
                    msg = {"type": "keepalive"} if event is None else \
                        await event_message(ctx, event, previews=previews, root=root)
                    if msg is not None:
                        await websocket.send_json(msg)
            await websocket.close(1000)
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client left
        finally:
            watcher.cancel()
            release()

    return router


async def _watch_client(websocket: WebSocket, gone: asyncio.Event) -> None:
    """Read (and ignore) what the client sends, to notice when it leaves."""
    try:
        while websocket.client_state is not WebSocketState.DISCONNECTED:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        gone.set()


async def _deny(websocket: WebSocket, status: int, code: str, message: str, headers: dict[str, str]) -> None:
    """Refuse the handshake with the JSON error when the server can send one, else close it (1008)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(status, code, message, headers=headers or None))
    else:
        await websocket.close(code=1008, reason=code)
