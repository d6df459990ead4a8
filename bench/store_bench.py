"""The job store on Redis against diskcache, and job events from one replica to a client on another.

    python -m bench.store_bench        # a table, then one JSON line (python -m bench.queue_bench runs it too)

Throughput: each worker repeats enqueue → claim → complete (one job per call, as requests come), through
the async store contract, so the figure is jobs done per second of wall time. On Redis that is measured
with 1 worker, with 8 workers as asyncio tasks in one process sharing its store (as a replica's worker
runs jobs side by side), and with 8 worker processes; on diskcache with 1 and 8 (threads, as DiskStore
runs them). Best of 3 rounds: the machine
is shared and noisy, so the rest is other processes.

Latency: replica A (this process) publishes 500 events on its bus, one every 2 ms; replica B (another
process, its own bus and bridge) has a subscriber, as an SSE/WebSocket handler would, that notes
``time.time() - event.at`` on arrival. p50 and p99 over the 500.

Where the time goes: one more round of 8 asyncio workers, with the CPU this process and redis-server each
spent per job (Linux /proc), the queue operations per job (enqueue, claim, finish), the FCALLs per job
(the operations the tasks call at once go as one) and the time Redis spends inside each FCALL and per
operation (INFO commandstats). Jobs/s is bound by the larger CPU figure once both are busy, and on a
shared 2-core machine by what the neighbours leave; the load average is printed with the table.

A redis-server (Debian's) is started on a free loopback port with no persistence, and stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402

from comfy.jobs.events import EventBus, JobEvent  # noqa: E402
from comfy.jobs.redis_events import EventBridge  # noqa: E402
from comfy.jobs.redis_store import RedisStore  # noqa: E402
from comfy.jobs.store import DiskStore, JobStore  # noqa: E402
from tests.redis_support import start_redis, stop_redis  # noqa: E402
from bench.usage import no_arguments  # noqa: E402

PARAMS = {"prompt": "a watercolour fox in the snow", "negative": "blurry", "width": 1024, "height": 1024,
          "steps": 28, "cfg": 6.5, "seed": 1234, "sampler": "euler", "scheduler": "normal"}
JOBS = 4000
EVENTS, EVENT_GAP = 500, 0.002
OPERATIONS_PER_JOB = 3  # enqueue, claim, finish


async def _work(store: JobStore, me: str, jobs: int) -> None:
    for index in range(jobs):
        await store.enqueue({**PARAMS, "seed": index}, owner="bench")
        job = await store.claim(me, lease_seconds=30)
        assert job is not None  # each worker enqueued one before it claims one: never empty
        await store.finish(job.id, me, outputs=[{"filename": f"{job.id}.png"}])


async def _round(stores: list[JobStore], jobs: int) -> float:
    per_worker = jobs // len(stores)
    started = time.perf_counter()
    await asyncio.gather(*(_work(store, f"bench:1:w{i}", per_worker) for i, store in enumerate(stores)))
    return per_worker * len(stores) / (time.perf_counter() - started)


async def _disk_round(root: Path, workers: int) -> float:
    directory = root / uuid.uuid4().hex
    stores: list[JobStore] = [DiskStore.open(directory) for _ in range(workers)]
    try:
        return await _round(stores, JOBS // 4)  # diskcache is the slower one: fewer jobs, same figure
    finally:
        for store in stores:
            await store.close()


async def _redis_round(url: str, workers: int) -> float:
    """``workers`` tasks sharing one store, as a replica's worker shares its process's store."""
    store = RedisStore.from_url(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    try:
        await store.counts()  # connected first
        return await _round([store] * workers, JOBS)
    finally:
        await store.close()


def _process_worker(url: str, prefix: str, jobs: int, index: int, conn: Connection) -> None:
    async def main() -> None:
        store = RedisStore.from_url(url, prefix=prefix)
        await store.counts()
        conn.send("ready")
        conn.recv()  # go
        started = time.perf_counter()
        await _work(store, f"bench:{index}:p{index}", jobs)
        conn.send((started, time.perf_counter()))
        await store.close()

    asyncio.run(main())


def _redis_processes_round(url: str, workers: int) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for index in range(workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_process_worker, args=(url, prefix, JOBS // workers, index, child), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a bench worker process did not start")
        for pipe in pipes:
            pipe.send("go")
        spans = [pipe.recv() for pipe in pipes if pipe.poll(120)]
        if len(spans) != workers:
            raise RuntimeError("a bench worker process did not finish")
        return JOBS // workers * workers / (max(end for _s, end in spans) - min(start for start, _e in spans))
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def _replica_b(url: str, prefix: str, conn: Connection) -> None:
    """Replica B: its own bus and bridge, and a subscriber noting how late each event arrives."""
    async def main() -> None:
        bus = EventBus(buffer=EVENTS * 2)
        client = aioredis.Redis.from_url(url, decode_responses=True)
        bridge = EventBridge(bus, client, prefix=prefix, replica_id="replica-b")
        await bridge.start()
        late: list[float] = []
        sub = bus.subscribe()
        conn.send("ready")
        while len(late) < EVENTS:
            event = await sub.get(timeout=60)
            late.append(time.time() - event.at)
        conn.send(late)
        await bridge.aclose()
        await client.aclose()

    asyncio.run(main())


async def _event_latency(url: str) -> list[float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_replica_b, args=(url, prefix, child), daemon=True)
    proc.start()
    bus = EventBus(buffer=EVENTS * 2)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    bridge = EventBridge(bus, client, prefix=prefix, replica_id="replica-a")
    await bridge.start()
    try:
        if not await asyncio.to_thread(parent.poll, 60) or parent.recv() != "ready":
            raise RuntimeError("replica B did not start")
        for step in range(EVENTS):
            bus.publish(JobEvent("bench-job", "progress", step=step, steps=EVENTS, progress=step / EVENTS))
            await asyncio.sleep(EVENT_GAP)
        if not await asyncio.to_thread(parent.poll, 60):
            raise RuntimeError("replica B did not receive every event")
        return parent.recv()
    finally:
        await bridge.aclose()
        await client.aclose()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _server_cpu(pid: int) -> float:
    """Seconds of CPU redis-server has used (Linux /proc), user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _where_the_time_goes(url: str, pid: int) -> dict[str, float]:
    """One round of 8 asyncio workers: CPU per job in this process and in redis-server, and script calls sent
    per job and per pipeline (what bounds jobs/s once both are busy: on 2 cores, the larger CPU figure)."""
    store = RedisStore.from_url(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await store.counts()
        await admin.config_resetstat()
        client_0, server_0 = time.process_time(), _server_cpu(pid)
        await _round([store] * 8, JOBS)
        client_1, server_1 = time.process_time(), _server_cpu(pid)
        stats = await admin.info("commandstats")
    finally:
        await store.close()
        await admin.aclose()
    calls = stats.get("cmdstat_fcall", {})
    return {"client_cpu_us_per_job": round((client_1 - client_0) / JOBS * 1e6),
            "redis_cpu_us_per_job": round((server_1 - server_0) / JOBS * 1e6),
            "fcalls_per_job": round(calls.get("calls", 0) / JOBS, 2),
            "fcall_us_in_redis": round(calls.get("usec_per_call", 0.0), 1),
            "op_us_in_redis": round(calls.get("usec", 0) / (OPERATIONS_PER_JOB * JOBS), 1)}


async def _measure(url: str, tmp: Path, rounds: int, pid: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for workers in (1, 8):
        figures[f"disk_{workers}w_jobs_per_s"] = round(max([await _disk_round(tmp, workers) for _ in range(rounds)]))
        figures[f"redis_{workers}w_jobs_per_s"] = round(max([await _redis_round(url, workers) for _ in range(rounds)]))
    figures["redis_8p_jobs_per_s"] = round(max(
        [await asyncio.to_thread(_redis_processes_round, url, 8) for _ in range(rounds)]))
    late = await _event_latency(url)
    figures["event_p50_ms"] = round(_percentile(late, 0.50) * 1000, 2)
    figures["event_p99_ms"] = round(_percentile(late, 0.99) * 1000, 2)
    if Path(f"/proc/{pid}/stat").exists():
        figures.update(await _where_the_time_goes(url, pid))
    return figures


ROWS = [
    ("enqueue -> claim -> complete, diskcache, 1 worker, jobs/s", "disk_1w_jobs_per_s", None),
    ("the same, diskcache, 8 workers (threads), jobs/s", "disk_8w_jobs_per_s", None),
    ("the same, Redis, 1 worker, jobs/s", "redis_1w_jobs_per_s", None),
    ("the same, Redis, 8 workers (asyncio tasks in one process), jobs/s", "redis_8w_jobs_per_s", ">= 5000"),
    ("the same, Redis, 8 worker processes (one task each), jobs/s", "redis_8p_jobs_per_s", None),
    ("event on replica A -> client on replica B, p50 ms", "event_p50_ms", None),
    ("the same, p99 ms", "event_p99_ms", "<= 50"),
    ("where it goes (8 asyncio workers): this process's CPU per job, us", "client_cpu_us_per_job", None),
    ("the same, redis-server's CPU per job, us", "redis_cpu_us_per_job", None),
    ("the same, FCALLs per job (3 operations each job, batched)", "fcalls_per_job", None),
    ("the same, time inside Redis per FCALL, us", "fcall_us_in_redis", None),
    ("the same, time inside Redis per operation, us", "op_us_in_redis", None),
]


def run(rounds: int = 3) -> dict[str, float]:
    """Start a redis-server, measure, stop it. Raises RuntimeError without redis-server."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(tmp)
        try:
            return asyncio.run(_measure(server.url, Path(tmp), rounds, server.process.pid))
        finally:
            stop_redis(server)


def print_table(figures: dict[str, float]) -> None:
    width = max(len(label) for label, _, _ in ROWS)
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))
    print(f"{'figure':<{width}}  {'value':>10}  goal")
    for label, key, goal in ROWS:
        if key not in figures:  # the CPU breakdown needs Linux's /proc
            continue
        print(f"{label:<{width}}  {figures[key]:>10}  {goal or ''}")
    print(json.dumps(figures))


def main() -> None:
    print_table(run())


if __name__ == "__main__":
    no_arguments("store_bench", __doc__)
    main()
