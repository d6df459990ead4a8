"""A Redis restart under a running studio: no job lost, none run twice, and health says what is wrong meanwhile.

A real redis-server with an append-only file (what a deployment runs: the queue must survive a restart) is
stopped while a replica's worker has jobs running on the fake ComfyUI, and started again on the same port.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.drills import runs_by_seed
from tests.fakes.comfyui import FakeComfy
from tests.redis_support import start_redis, stop_redis
from tests.replica_support import free_port, output, start_replica, stop, studio_env, until, wait_serving

API = "/api/v1"


def test_a_redis_restart_loses_no_job_and_runs_none_twice() -> None:
    with tempfile.TemporaryDirectory(prefix="studio-outage-") as tmp, \
            FakeComfy(step_time=0.05, node_time=0.001) as fake:
        server = start_redis(tmp, persist=True)
        env = studio_env(server.url, f"outage-{uuid.uuid4().hex[:8]}", fake.url, Path(tmp) / "data",
                         STUDIO_LEASE_SECONDS="10")
        port = free_port()
        replica = start_replica(env, port)
        try:
            base = wait_serving(replica, port)
            seeds = [500 + n for n in range(6)]
            ids = []
            for seed in seeds:
                answer = httpx.post(f"{base}{API}/jobs", timeout=30, json={
                    "prompt": "a lighthouse", "steps": 30, "seed": seed, "width": 64, "height": 64,
                    "checkpoint": "random-sd15.safetensors"})
                assert answer.status_code == 202, answer.text
                ids.append(answer.json()["job_id"])
            until(lambda: len(fake.prompts) >= 1, 30, "a job running on ComfyUI")

            stop_redis(server)  # a clean stop: its append-only file has every write
            ready = httpx.get(f"{base}/readyz", timeout=30)
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "queue_unavailable"
            assert "Redis" in ready.json()["error"]["message"] and "REDIS_URL" in ready.json()["error"]["message"]
            health = httpx.get(f"{base}/health", timeout=30).json()
            assert health["status"] == "degraded"
            assert health["store"]["store"] == "redis" and health["store"]["reachable"] is False
            assert "Redis" in health["store"]["error"]
            time.sleep(2.5)  # the outage lasts: the running jobs (1.5 s each) end on ComfyUI meanwhile
            running_on_comfy = len(fake.prompts)

            server = start_redis(tmp, port=server.port, persist=True)  # the same port, the same data
            listed = until(lambda: _all_ended(base, ids), 90, "every job ended after Redis came back")
            assert [job["status"] for job in listed] == ["succeeded"] * 6, [j["note"] for j in listed]
            assert running_on_comfy >= 1
            assert runs_by_seed(fake, seeds) == {seed: 1 for seed in seeds}, output(replica)[-8000:]
            until(lambda: httpx.get(f"{base}/readyz", timeout=30).status_code == 200, 30, "ready again")
            assert httpx.get(f"{base}/health", timeout=30).json()["store"]["reachable"] is True
        finally:
            stop(replica)
            stop_redis(server)
        assert "Traceback" not in output(replica), output(replica)[-4000:]


def _all_ended(base: str, ids: list[str]) -> list[dict] | None:
    try:
        answer = httpx.get(f"{base}{API}/jobs", params={"limit": 100}, timeout=30)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    jobs = {job["job_id"]: job for job in answer.json()["jobs"]}
    found = [jobs.get(job_id) for job_id in ids]
    return found if all(job and job["status"] in ("succeeded", "failed", "cancelled") for job in found) else None


async def test_events_cross_replicas_again_after_a_redis_restart(tmp_path) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from comfy.jobs.events import EventBus, JobEvent
    from comfy.jobs.redis_events import EventBridge

    server = start_redis(str(tmp_path))
    clients = [aioredis.Redis.from_url(server.url, decode_responses=True) for _ in range(2)]
    bus_a, bus_b = EventBus(), EventBus()
    a, b = EventBridge(bus_a, clients[0], prefix="restart"), EventBridge(bus_b, clients[1], prefix="restart")
    try:
        await a.start()
        await b.start()
        seen = bus_b.subscribe("job-1")
        stop_redis(server)
        await asyncio.sleep(0.5)  # both bridges notice the outage
        server = start_redis(str(tmp_path), port=server.port)
        got = None
        for attempt in range(100):  # until B's listener is subscribed again, each try a new event
            bus_a.publish(JobEvent("job-1", "progress", step=attempt))
            try:
                got = await seen.get(timeout=0.2)
                break
            except TimeoutError:
                continue
        assert got is not None and got.kind == "progress"
        cancels = b.cancel_requests()
        await a.request_cancel("job-1")
        assert await cancels.get(timeout=5) == "job-1"
    finally:
        await a.aclose()
        await b.aclose()
        for client in clients:
            await client.aclose()
        stop_redis(server)
