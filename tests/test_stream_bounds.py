"""Nothing unbounded on the event streams: a client that stops reading holds a few events, not every preview;
a caller holds a limited number of streams at once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from urllib.parse import urlsplit

from comfy.jobs.events import MAX_PREVIEWS, EventBus, JobEvent
from tests.api_support import error_of

NOWHERE = "http://127.0.0.1:9"  # nothing answers: the job stays queued, its stream open
PREVIEW = os.urandom(64 * 1024)  # incompressible, like a JPEG


def previews_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, JobEvent) and o.preview is not None)


async def test_a_stalled_sse_reader_across_500_previews_holds_a_few_events(make_api) -> None:
    async with make_api(comfyui_url=NOWHERE) as api:
        job, _ = await api.studio.store.enqueue({"prompt": "a lighthouse"})
        host = urlsplit(api.url)
        sock = socket.create_connection((host.hostname, host.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        try:
            sock.sendall(f"GET /api/v1/jobs/{job.id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await asyncio.sleep(0.3)  # subscribed; from now on the client reads nothing
            baseline = previews_alive()
            for _ in range(500):
                api.studio.bus.publish(JobEvent(job.id, "preview", preview=PREVIEW, preview_mime="image/jpeg"))
                await asyncio.sleep(0)
            api.studio.bus.publish(JobEvent(job.id, "retrying", message="a state change"))
            await asyncio.sleep(0.5)
            held = previews_alive() - baseline
            assert held <= 2 * MAX_PREVIEWS + 4, held  # bus subscription + the one in hand at each step
            subs = [s for s in api.studio.bus._subs if s.job_id == job.id]
            assert subs and all(s.buffered <= 256 for s in subs)
            assert any(e.kind == "retrying" for s in subs for e in s._events)  # the state change is kept
        finally:
            sock.close()


def test_a_subscription_keeps_the_newest_previews_and_every_state_change() -> None:
    async def run() -> list[JobEvent]:
        bus = EventBus(buffer=8)
        sub = bus.subscribe("j")
        bus.publish(JobEvent("j", "started"))
        for n in range(100):
            bus.publish(JobEvent("j", "preview", preview=bytes([n])))
            bus.publish(JobEvent("j", "progress", progress=n / 100))
        bus.publish(JobEvent("j", "succeeded"))
        await asyncio.sleep(0)
        return sub.drain()

    events = asyncio.run(run())
    assert len(events) <= 8
    assert [e.preview for e in events if e.kind == "preview"] == [bytes([98]), bytes([99])][-MAX_PREVIEWS:]
    assert events[0].kind == "started" and events[-1].kind == "succeeded"


async def test_a_caller_holds_a_limited_number_of_streams(make_api) -> None:
    async with make_api(comfyui_url=NOWHERE) as api:
        job, _ = await api.studio.store.enqueue({"prompt": "a lighthouse"})
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(8):
                response = await stack.enter_async_context(api.http.stream("GET", f"/api/v1/jobs/{job.id}/events"))
                assert response.status_code == 200
            refused = await api.http.get(f"/api/v1/jobs/{job.id}/events")
            assert refused.status_code == 429
            assert "8 event streams open" in error_of(refused)["message"]
        await asyncio.sleep(0.3)  # closed: the slots are free again
        async with api.http.stream("GET", f"/api/v1/jobs/{job.id}/events") as response:
            assert response.status_code == 200


async def test_websocket_handshakes_dropped_by_the_client_give_their_slots_back(make_api) -> None:
    async with make_api(comfyui_url=NOWHERE) as api:
        job, _ = await api.studio.store.enqueue({"prompt": "a lighthouse"})
        host = urlsplit(api.url)
        for _ in range(12):  # more than the 8 a caller may hold
            reader, writer = await asyncio.open_connection(host.hostname, host.port)
            writer.write((f"GET /ws/jobs/{job.id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            await writer.drain()
            writer.transport.abort()  # gone before the server's answer to the upgrade
        statuses = []
        for _ in range(100):  # the server notices each drop when it answers the handshake
            async with api.http.stream("GET", f"/api/v1/jobs/{job.id}/events") as response:
                statuses.append(response.status_code)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 200, f"the caller's stream slots stayed taken: {statuses[-3:]}"
