"""Several real processes on one real Redis: two ``python app.py`` replicas and a ``python -m comfy worker``.

Replica A runs a worker, replica B does not (``STUDIO_WORKER=0``), W is a worker alone; all share one
redis-server, one fake ComfyUI (in this process, so its accepted prompts can be counted) and one data folder
(``STUDIO_SHARED_DATA=1``). Jobs go in through one replica and are seen, followed and cancelled through
the other; ``kill -9`` of A mid-batch leaves every job ending once.
"""

from __future__ import annotations

import json
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bench.drills import runs_by_seed
from tests.fakes.comfyui import FakeComfy
from tests.redis_support import redis_server  # noqa: F401 - the session's redis-server fixture
from tests.replica_support import (free_port, output, start_replica, start_worker, stop, studio_env, until,
                                   wait_serving)

API = "/api/v1"
CHECKPOINT = "random-sd15.safetensors"


@dataclass
class Cluster:
    fake: FakeComfy
    a: str
    b: str
    processes: dict[str, Any]
    redis: redis.Redis
    prefix: str

    def submit(self, base: str, seed: int, steps: int = 4) -> str:
        body = {"prompt": "a lighthouse at dawn", "steps": steps, "seed": seed, "width": 64, "height": 64,
                "checkpoint": CHECKPOINT}
        answer = httpx.post(f"{base}{API}/jobs", json=body, timeout=30)
        assert answer.status_code == 202, answer.text
        return answer.json()["job_id"]

    def job(self, base: str, job_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{base}{API}/jobs/{job_id}", timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def finished(self, base: str, ids: list[str]) -> list[dict[str, Any]] | None:
        """The jobs ``ids`` (in that order) once all have ended, from one listing; None before."""
        listed = httpx.get(f"{base}{API}/jobs", params={"limit": 100}, timeout=30)
        assert listed.status_code == 200, listed.text
        jobs = {job["job_id"]: job for job in listed.json()["jobs"]}
        done = [jobs.get(job_id) for job_id in ids]
        return done if all(job and job["status"] in ("succeeded", "failed", "cancelled") for job in done) else None

    def runs(self, seeds: list[int]) -> dict[int, int]:
        """How many times the fake ComfyUI accepted each seed's prompt."""
        return runs_by_seed(self.fake, seeds)

    def lease_owner(self, job_id: str) -> str | None:
        raw = self.redis.hget(f"{self.prefix}:job:{job_id}", "lease_owner")
        return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def cluster(redis_server: Any) -> Iterator[Cluster]:  # noqa: F811
    prefix = f"replicas-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="studio-replicas-") as tmp, \
            FakeComfy(step_time=0.05, node_time=0.001) as fake:
        data = Path(tmp)
        env = studio_env(redis_server.url, prefix, fake.url, data)
        port_a, port_b = free_port(), free_port()
        processes = {"a": start_replica({**env, "STUDIO_WORKER": "1"}, port_a),
                     "b": start_replica({**env, "STUDIO_WORKER": "0"}, port_b),
                     "w": start_worker(env)}
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            a, b = wait_serving(processes["a"], port_a), wait_serving(processes["b"], port_b)
            yield Cluster(fake, a, b, processes, client, prefix)
        finally:
            for process in processes.values():
                stop(process)
            client.close()


def _health(base: str) -> dict[str, Any]:
    answer = httpx.get(f"{base}/health", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_health_lists_the_redis_store_and_every_process_alive(cluster: Cluster) -> None:
    def everyone() -> dict[str, Any] | None:
        store = _health(cluster.b)["store"]
        return store if len(store["replicas"]) == 2 and len(store["workers"]) == 2 else None

    store = until(everyone, 30, "two replicas and two workers beating")
    assert store["store"] == "redis" and store["reachable"] is True and store["latency_ms"] >= 0
    roles = sorted(member["role"] for member in store["replicas"] + store["workers"])
    assert roles == ["replica", "replica+worker", "replica+worker", "worker"]
    assert "prompt" not in json.dumps(store)  # ids, hosts and pids: nothing of the jobs
    b = _health(cluster.b)
    assert b["worker"]["running"] is False and b["status"] in ("ok", "degraded")
    assert httpx.get(f"{cluster.b}/readyz", timeout=30).status_code == 200
    assert "worker" in output(cluster.processes["w"]) and "Redis" in output(cluster.processes["w"])


def test_twelve_jobs_through_a_are_listed_and_finished_through_b(cluster: Cluster) -> None:
    seeds = [1000 + n for n in range(12)]
    ids = [cluster.submit(cluster.a, seed) for seed in seeds]
    listed = httpx.get(f"{cluster.b}{API}/jobs", params={"limit": 100}, timeout=30).json()
    assert set(ids) <= {job["job_id"] for job in listed["jobs"]}

    jobs = until(lambda: cluster.finished(cluster.b, ids), 60, "12 jobs finished, seen through B")
    assert [job["status"] for job in jobs] == ["succeeded"] * 12
    assert cluster.runs(seeds) == {seed: 1 for seed in seeds}
    image = httpx.get(f"{cluster.b}{API}/jobs/{ids[0]}/images/0", timeout=30)  # B ran none of them
    assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_event_stream_on_b_follows_a_job_another_process_runs(cluster: Cluster) -> None:
    job_id = cluster.submit(cluster.b, 2000, steps=8)  # B has no worker: A or W runs it
    kinds: list[str] = []
    steps: list[int] = []
    with httpx.stream("GET", f"{cluster.b}{API}/jobs/{job_id}/events", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
            elif line.startswith("data: ") and kinds[-1] == "progress":
                step = json.loads(line.removeprefix("data: ")).get("step")
                if step is not None:
                    steps.append(step)
    assert kinds[-1] == "succeeded", kinds
    assert "progress" in kinds and steps and max(steps) == 8
    assert cluster.runs([2000]) == {2000: 1}


def test_a_cancel_on_b_stops_the_job_where_it_runs(cluster: Cluster) -> None:
    job_id = cluster.submit(cluster.a, 3000, steps=150)  # 7.5 s of steps: long enough to be caught running
    until(lambda: cluster.job(cluster.b, job_id)["step"], 30, "the long job running")
    interrupts = len(cluster.fake.interrupts)
    answer = httpx.delete(f"{cluster.b}{API}/jobs/{job_id}", timeout=30)
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True, answer.text  # running elsewhere
    final = until(lambda: (job := cluster.job(cluster.a, job_id))["status"] == "cancelled" and job, 30,
                  "the job cancelled")
    assert final["images"] == []
    assert len(cluster.fake.interrupts) > interrupts  # the worker, in another process, told ComfyUI


def test_the_page_api_on_b_queues_and_lists_jobs_on_the_shared_queue(cluster: Cluster) -> None:
    from gradio_client import Client

    page = Client(cluster.b, verbose=False)
    queued = page.predict(prompt="a lighthouse", steps=3, seed=5000, width=64, height=64,
                          checkpoint=CHECKPOINT, api_name="/generate")
    [job_id] = queued["job_ids"]
    jobs = until(lambda: cluster.finished(cluster.a, [job_id]), 60, "the page's job finished, seen through A")
    assert jobs[0]["status"] == "succeeded"
    listed = page.predict(state="succeeded", limit=50, api_name="/jobs")
    assert job_id in {job["job_id"] for job in listed}


def test_kill_9_of_replica_a_mid_batch_ends_every_job_once(cluster: Cluster) -> None:
    health = _health(cluster.a)["store"]
    a_id = health["this"]
    seeds = [4000 + n for n in range(12)]
    ids = [cluster.submit(cluster.a, seed, steps=6) for seed in seeds]

    def a_runs_one() -> bool:
        return any(cluster.lease_owner(job_id) == a_id and cluster.redis.hget(f"{cluster.prefix}:job:{job_id}", "step")
                   not in (None, "null") for job_id in ids)

    until(a_runs_one, 60, "replica A running a job of the batch")
    cluster.processes["a"].send_signal(signal.SIGKILL)
    cluster.processes["a"].wait(10)

    jobs = until(lambda: cluster.finished(cluster.b, ids), 60, "every job of the batch ended after the kill")
    assert [job["status"] for job in jobs] == ["succeeded"] * 12
    assert cluster.runs(seeds) == {seed: 1 for seed in seeds}
    gone = until(lambda: len(_health(cluster.b)["store"]["replicas"]) == 1, 30, "A's heartbeat expired")
    assert gone
    worker = cluster.processes["w"]
    assert stop(worker) == 0  # SIGTERM: a clean stop
    assert "worker stopping" in output(worker) and "Traceback" not in output(worker)
