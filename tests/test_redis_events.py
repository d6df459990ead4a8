"""Events across replicas: two bridges ("replicas" A and B, each with its own bus and connection) on one real
redis-server. No sleeps and no timed assertions: order on one pub/sub channel is what the tests lean on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from comfy.jobs.events import EventBus, JobEvent, Subscription
from comfy.jobs.redis_events import EventBridge, PreviewThinner, decode_event, encode_event
from tests.redis_support import RedisServer, redis_prefix, redis_server  # noqa: F401  (fixtures)

WAIT = 10.0  # seconds a test waits for an event before it fails (it arrives in milliseconds)


class Replica:
    def __init__(self, bus: EventBus, bridge: EventBridge) -> None:
        self.bus, self.bridge = bus, bridge


@pytest.fixture
async def replicas(redis_server: RedisServer, redis_prefix: str) -> AsyncIterator[tuple[Replica, Replica]]:  # noqa: F811
    made = []
    for name in ("a", "b"):
        bus = EventBus(buffer=4096)
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        bridge = EventBridge(bus, client, prefix=redis_prefix, replica_id=f"replica-{name}", previews_per_second=20)
        await bridge.start()
        made.append((Replica(bus, bridge), client))
    try:
        yield made[0][0], made[1][0]
    finally:
        for replica, client in made:
            await replica.bridge.aclose()
            await client.aclose()


async def until(sub: Subscription, accept) -> list[JobEvent]:
    """Events on ``sub`` up to and including the first that ``accept`` takes."""
    seen = []
    while True:
        event = await sub.get(timeout=WAIT)
        seen.append(event)
        if accept(event):
            return seen


def test_an_event_survives_the_wire() -> None:
    event = JobEvent("j1", "succeeded", progress=1.0, preview=b"\x89PNG\x00\xff", preview_mime="image/png",
                     job={"id": "j1", "outputs": [{"filename": "a.png"}], "note": None}, timings={"queue": 0.5},
                     message="done", error_code=None)
    replica, back = decode_event(encode_event(event, "replica-a"))
    assert replica == "replica-a" and back.preview == event.preview
    assert {f: getattr(back, f) for f in ("job_id", "kind", "job", "timings", "at", "message")} == {
        f: getattr(event, f) for f in ("job_id", "kind", "job", "timings", "at", "message")}


def test_the_thinner_sends_at_most_one_preview_per_interval_and_the_newest_wins() -> None:
    now = [100.0]
    thinner = PreviewThinner(0.25, now=lambda: now[0])
    first, second, third = (JobEvent("j", "preview", preview=bytes([i])) for i in range(3))
    other = JobEvent("k", "preview", preview=b"k")
    assert thinner.offer(first) is first and thinner.offer(other) is other  # per job
    assert thinner.offer(second) is None and thinner.offer(third) is None
    assert thinner.due() == [] and thinner.wait() == pytest.approx(0.25)
    now[0] += 0.25
    assert thinner.due() == [third] and thinner.due() == [] and thinner.wait() is None
    assert thinner.offer(JobEvent("j", "preview")) is None  # 0.25 s after the last one sent: held again
    thinner.forget("j")
    assert thinner.wait() is None and thinner.offer(first) is first


async def test_an_event_on_one_replica_reaches_the_other_once_and_never_echoes(replicas) -> None:
    a, b = replicas
    on_a, on_b = a.bus.subscribe(), b.bus.subscribe("job-1")
    started = JobEvent("job-1", "started", job={"id": "job-1", "state": "running"})
    a.bus.publish(started)
    (arrived,) = await until(on_b, lambda e: True)
    assert (arrived.job_id, arrived.kind, arrived.job, arrived.at) == ("job-1", "started", started.job, started.at)

    # B answers only after it got A's event; one channel keeps publish order, so an echo of A's event (by A
    # hearing itself, or by B sending it back) would reach A before B's answer.
    b.bus.publish(JobEvent("job-2", "queued"))
    seen = await until(on_a, lambda e: e.job_id == "job-2")
    assert [(e.job_id, e.kind) for e in seen] == [("job-1", "started"), ("job-2", "queued")]
    assert seen[0] is started and on_a.drain() == [] and on_b.drain() == []


async def test_state_changes_are_never_dropped_under_a_preview_flood(replicas) -> None:
    a, b = replicas
    on_b = b.bus.subscribe("job-1")
    sent: list[JobEvent] = [JobEvent("job-1", "started")]
    for step in range(300):
        sent.append(JobEvent("job-1", "preview", step=step, preview=bytes(2048), preview_mime="image/jpeg"))
        sent.append(JobEvent("job-1", "progress", step=step, steps=300, progress=step / 300))
        if step == 150:
            sent.append(JobEvent("job-1", "retrying", message="the backend dropped the run"))
    sent.append(JobEvent("job-1", "succeeded", progress=1.0))
    for event in sent:
        a.bus.publish(event)
    got = await until(on_b, lambda e: e.kind == "succeeded")

    def changes(events: list[JobEvent]) -> list[str]:
        return [e.kind for e in events if e.kind not in ("preview", "progress")]

    assert changes(got) == changes(sent) == ["started", "retrying", "succeeded"]
    previews = [e for e in got if e.kind == "preview"]
    assert 1 <= len(previews) <= 300 and [e.step for e in previews] == sorted(e.step for e in previews)


async def test_the_newest_held_preview_still_arrives(replicas) -> None:
    a, b = replicas
    on_b = b.bus.subscribe("job-3")
    for step in range(50):
        a.bus.publish(JobEvent("job-3", "preview", step=step, preview=bytes([step])))
    got = await until(on_b, lambda e: e.step == 49)
    assert got[-1].preview == bytes([49]) and b.bus.latest_preview("job-3").step == 49


async def test_a_cancel_asked_on_any_replica_reaches_every_replica(replicas) -> None:
    a, b = replicas
    cancels_a, cancels_b = a.bridge.cancel_requests(), b.bridge.cancel_requests()
    await b.bridge.request_cancel("job-9")
    assert await cancels_a.get(timeout=WAIT) == "job-9"  # the worker that runs it, wherever it is
    assert await cancels_b.get(timeout=WAIT) == "job-9"
    cancels_b.close()
    await a.bridge.request_cancel("job-10")
    assert await cancels_a.get(timeout=WAIT) == "job-10"
