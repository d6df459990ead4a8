"""Job events and cancels across replicas, over Redis pub/sub: whichever replica runs a job, a page or a
stream on any replica sees its progress, previews and end, and a cancel asked anywhere reaches its worker.

:class:`EventBridge` joins this replica's :class:`~comfy.jobs.events.EventBus` to two channels under the
prefix (``<prefix>:events``, ``<prefix>:cancel``, see :data:`~comfy.jobs.redis_scripts.KEYS`):

- each event published on the local bus goes to Redis, tagged with this replica's id; each event from
  another replica is published on the local bus, and never sent back (no echo, no loop);
- previews are thinned before they leave (at most ``previews_per_second`` per job; a held one is replaced
  by a newer one, so the newest wins). Every other event, every state change, is sent, in order;
- :meth:`EventBridge.request_cancel` tells every replica, this one too, and :meth:`EventBridge.cancel_requests`
  is what a worker iterates to stop the jobs it runs.

Pub/sub delivers to whoever listens at that moment: an event sent while a replica is disconnected is not
replayed to it. The store stays the source of truth for a job's state; events only make it prompt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from comfy.jobs.events import EventBus, JobEvent, Subscription
from comfy.jobs.redis_scripts import KEYS
from comfy.jobs.redis_store import map_redis_errors

__all__ = ["EventBridge", "PreviewThinner", "CancelRequests", "encode_event", "decode_event"]

log = logging.getLogger(__name__)

_FIELDS = [f.name for f in dataclasses.fields(JobEvent)]


@dataclasses.dataclass(frozen=True)
class _RemoteEvent(JobEvent):
    """An event that came from another replica: the bridge delivers it locally and never sends it back."""


def encode_event(event: JobEvent, replica: str) -> str:
    data = {name: getattr(event, name) for name in _FIELDS}
    if event.preview is not None:
        data["preview"] = base64.b64encode(event.preview).decode()
    return json.dumps({"replica": replica, "event": data}, separators=(",", ":"))


def decode_event(payload: str) -> tuple[str, JobEvent]:
    """(sender replica, event) from a message of :func:`encode_event`."""
    message = json.loads(payload)
    data = {name: value for name, value in message["event"].items() if name in _FIELDS}
    if data.get("preview") is not None:
        data["preview"] = base64.b64decode(data["preview"])
    return message["replica"], _RemoteEvent(**data)


class PreviewThinner:
    """At most one preview per job every ``interval`` seconds; a preview that comes sooner is held, and a
    newer one replaces it (the newest wins). Plain bookkeeping with a clock, no I/O."""

    def __init__(self, interval: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._now = now
        self._sent_at: dict[str, float] = {}
        self._held: dict[str, JobEvent] = {}

    def offer(self, event: JobEvent) -> JobEvent | None:
        """The preview to send now, or None when it is held for later."""
        now = self._now()
        last = self._sent_at.get(event.job_id)
        if last is None or now - last >= self.interval:
            self._sent_at[event.job_id] = now
            self._held.pop(event.job_id, None)
            return event
        self._held[event.job_id] = event
        return None

    def take_held(self, job_id: str) -> JobEvent | None:
        """The held preview of ``job_id`` (sent now, before a state change, so the order stays)."""
        event = self._held.pop(job_id, None)
        if event is not None:
            self._sent_at[job_id] = self._now()
        return event

    def forget(self, job_id: str) -> None:
        """The job ended: its held preview is stale, and its clock is no longer needed."""
        self._held.pop(job_id, None)
        self._sent_at.pop(job_id, None)

    def due(self) -> list[JobEvent]:
        """The held previews whose time has come, taken out."""
        now = self._now()
        ready = [job_id for job_id in self._held if now - self._sent_at[job_id] >= self.interval]
        for job_id in ready:
            self._sent_at[job_id] = now
        return [self._held.pop(job_id) for job_id in ready]

    def wait(self) -> float | None:
        """Seconds until the next held preview is due; None when none is held."""
        if not self._held:
            return None
        now = self._now()
        return max(0.0, min(self._sent_at[job_id] + self.interval - now for job_id in self._held))


class CancelRequests:
    """An async iterator of job ids whose cancel was asked on any replica; close it when done."""

    def __init__(self, bridge: EventBridge) -> None:
        self._bridge = bridge
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            yield await self._queue.get()

    async def get(self, timeout: float | None = None) -> str:
        return await asyncio.wait_for(self._queue.get(), timeout)

    def close(self) -> None:
        self._bridge._cancel_listeners.discard(self)


class EventBridge:
    """This replica's event bus, joined to every other replica's through Redis pub/sub.

    Create it on the event loop that will run it, ``await start()``, and ``await aclose()`` at the end.
    """

    def __init__(self, bus: EventBus, client: aioredis.Redis, *, prefix: str = "studio",
                 replica_id: str | None = None, previews_per_second: float = 4.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.client = client
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.events_channel = prefix + KEYS["events"]
        self.cancel_channel = prefix + KEYS["cancel"]
        self._thinner = PreviewThinner(1.0 / previews_per_second, now=now)
        self._cancel_listeners: set[CancelRequests] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._local: Subscription | None = None

    async def start(self) -> None:
        """Listen to both channels (confirmed by Redis before this returns), then relay both ways."""
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=False)
        with map_redis_errors():
            await self._pubsub.subscribe(self.events_channel, self.cancel_channel)
            confirmed = 0
            while confirmed < 2:  # so nothing published after start() returns is missed
                message = await self._pubsub.get_message(timeout=5.0)
                confirmed += message is not None and message["type"] == "subscribe"
        self._local = self.bus.subscribe()
        self._tasks = [asyncio.create_task(self._send_loop(), name="events-to-redis"),
                       asyncio.create_task(self._receive_loop(), name="events-from-redis")]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._local is not None:
            self._local.close()
        if self._pubsub is not None:
            with contextlib.suppress(redis.exceptions.RedisError):
                await self._pubsub.aclose()

    # -- cancels ------------------------------------------------------------------------------------

    async def request_cancel(self, job_id: str) -> None:
        """Tell every replica (this one too) that ``job_id`` should stop; QueueError if Redis is away."""
        payload = json.dumps({"replica": self.replica_id, "job_id": job_id})
        with map_redis_errors():
            await self.client.publish(self.cancel_channel, payload)

    def cancel_requests(self) -> CancelRequests:
        """The cancels asked on any replica from now on, as job ids (what a worker stops, if it runs it)."""
        listener = CancelRequests(self)
        self._cancel_listeners.add(listener)
        return listener

    # -- this replica's events out ------------------------------------------------------------------

    async def _send_loop(self) -> None:
        assert self._local is not None
        while True:
            try:
                first = await self._local.get(timeout=self._thinner.wait())
            except TimeoutError:
                first = None
            batch = [first, *self._local.drain()] if first is not None else []
            outgoing = self._thinned(batch) + self._thinner.due()
            if outgoing:
                await self._publish(outgoing)

    def _thinned(self, events: list[JobEvent]) -> list[JobEvent]:
        out: list[JobEvent] = []
        for event in events:
            if isinstance(event, _RemoteEvent):
                continue  # it came from Redis: sending it back would echo
            if event.kind == "preview":
                if (sent := self._thinner.offer(event)) is not None:
                    out.append(sent)
                continue
            if event.final:
                self._thinner.forget(event.job_id)
            elif event.kind != "progress" and (held := self._thinner.take_held(event.job_id)) is not None:
                out.append(held)
            out.append(event)
        return out

    async def _publish(self, events: list[JobEvent]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.publish(self.events_channel, encode_event(event, self.replica_id))
                await pipe.execute()
        except redis.exceptions.RedisError as exc:
            # Other replicas miss these events; their pages still read every state from the store.
            log.warning("Could not send %d job events to Redis: %s", len(events), exc)

    # -- other replicas' events in ------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except redis.exceptions.RedisError as exc:
                log.warning("Lost the Redis event channel, reconnecting: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None or message["type"] != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            try:
                if channel == self.cancel_channel:
                    job_id = json.loads(message["data"])["job_id"]
                    for listener in list(self._cancel_listeners):
                        listener._queue.put_nowait(job_id)
                    continue
                replica, event = decode_event(message["data"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("Ignored a malformed message on %s: %s", channel, exc)
                continue
            if replica != self.replica_id:
                self.bus.publish(event)
