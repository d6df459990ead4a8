"""The REST API against the fake ComfyUI on loopback, with a fixed execution time.

(1) Synchronous overhead: for each ``POST /api/v1/generate/`` (one at a time, 64x64, 4 steps), the
    HTTP round trip minus ComfyUI's own execution time (``execution_start`` -> ``execution_success``
    timestamps in the fake's /history). Goal: <= 15 ms at p50 (the design we replace: 355 ms).
    Split in two with the job's own timestamps: the API's share (request -> job queued, job finished
    -> response received) and the engine's (queued -> ComfyUI starts, ComfyUI done -> PNG saved).
(2) Submission throughput: 50 concurrent clients, each POSTing /api/v1/jobs on its own keep-alive
    connection; jobs/s over the whole run, and the latency of one submission. ComfyUI holds its
    prompts, so the figure is the API and the queue, not the fake's image encoding.

The fake ComfyUI, the API (uvicorn, the studio and its worker) and the clients each run in their own
process, as in production: with threads of one process they would also measure the GIL.

    python -m bench.api_bench      # a table, then one JSON line
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.app import create_api  # noqa: E402
from comfy.jobs.queue import JobQueue  # noqa: E402
from comfy.service import Studio  # noqa: E402
from comfy.settings import Settings  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from bench.usage import no_arguments  # noqa: E402

STEPS = 4
STEP_TIME = 0.02  # 4 steps x 20 ms: ~80 ms of "GPU" per job
SYNC_REQUESTS = 40
CLIENTS = 50
PER_CLIENT = 20

ROWS = [
    ("(1) sync generate round trip, p50 ms", "sync_round_trip_p50_ms", None),
    ("(1) ComfyUI execution (its own timestamps), p50 ms", "sync_execution_p50_ms", None),
    ("(1) overhead = round trip - execution, p50 ms", "sync_overhead_p50_ms", "<= 15"),
    ("(1) overhead, p99 ms", "sync_overhead_p99_ms", None),
    ("(1) of which the API (to queued + finished to answer), p50 ms", "sync_api_share_p50_ms", None),
    ("(1) of which the engine (queue -> ComfyUI -> PNG saved), p50 ms", "sync_engine_share_p50_ms", None),
    (f"(2) POST /api/v1/jobs, {CLIENTS} concurrent clients, jobs/s", "submit_jobs_per_s", None),
    ("(2) one submission under that load, p50 ms", "submit_latency_p50_ms", None),
    ("(2) the same, p99 ms", "submit_latency_p99_ms", None),
]


# -- the processes ------------------------------------------------------------------------------------


def _fake_process(conn: Connection, hold: bool) -> None:
    """Child process: the fake ComfyUI until told to stop."""
    fake = FakeComfy(step_time=STEP_TIME, node_time=0.001)
    fake.start()
    fake.hold = hold
    conn.send(fake.url)
    conn.recv()
    fake.stop()


def _api_process(conn: Connection, comfy_url: str, data_dir: str) -> None:
    """Child process: the studio and its REST API (the worker runs in the app's lifespan) until told to stop."""
    settings = Settings(_env_file=None, comfyui_url=comfy_url, data_dir=Path(data_dir),  # type: ignore[call-arg]
                        rate_limit_per_minute=0, sync_wait_seconds=60)
    app = create_api(Studio(settings), settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn.run gets
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, ws="wsproto"))

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        conn.send(f"http://127.0.0.1:{sock.getsockname()[1]}")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        server.should_exit = True
        await task

    asyncio.run(serve())


@contextlib.contextmanager
def _child(target: Any, *args: Any) -> Iterator[str]:
    """Run ``target`` in a fresh process; yields the URL it reports, and stops it on exit."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=target, args=(theirs, *args), daemon=True)
    process.start()
    try:
        if not ours.poll(60):
            raise RuntimeError(f"{target.__name__} did not start")
        yield ours.recv()
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        process.join(timeout=30)
        if process.is_alive():
            process.kill()


# -- the measurements -----------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _body(seed: int) -> dict[str, Any]:
    return {"prompt": "a lighthouse at dawn", "steps": STEPS, "seed": seed, "width": 64, "height": 64,
            "checkpoint": "random-sd15.safetensors"}


async def _execution_ms(fake_url: str, prompt_id: str, http: httpx.AsyncClient) -> float:
    entry = (await http.get(f"{fake_url}/history/{prompt_id}")).json()[prompt_id]
    stamps = {name: data["timestamp"] for name, data in entry["status"]["messages"]}
    return float(stamps["execution_success"] - stamps["execution_start"])


async def _sync_overhead(api_url: str, fake_url: str, queue: JobQueue) -> dict[str, float]:
    trips, executions, overheads, api_shares = [], [], [], []
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        for seed in range(3):  # warm up: connections, the node list, the template
            assert (await http.post("/api/v1/generate/", json=_body(10_000 + seed))).status_code == 200
        for seed in range(SYNC_REQUESTS):  # a new seed each time, so ComfyUI's cache never skips the work
            sent, started = time.time(), time.perf_counter()
            response = await http.post("/api/v1/generate/", json=_body(seed))
            trip = (time.perf_counter() - started) * 1000
            received = time.time()
            assert response.status_code == 200, response.text
            job = queue.get(response.json()["job_id"])
            assert job.prompt_id and job.queued_at and job.finished_at
            execution = await _execution_ms(fake_url, job.prompt_id, http)
            trips.append(trip)
            executions.append(execution)
            overheads.append(trip - execution)
            api_shares.append(((job.queued_at - sent) + (received - job.finished_at)) * 1000)
    engine_shares = [total - api for total, api in zip(overheads, api_shares, strict=True)]
    return {
        "sync_round_trip_p50_ms": round(statistics.median(trips), 1),
        "sync_execution_p50_ms": round(statistics.median(executions), 1),
        "sync_overhead_p50_ms": round(statistics.median(overheads), 1),
        "sync_overhead_p99_ms": round(_percentile(overheads, 0.99), 1),
        "sync_api_share_p50_ms": round(statistics.median(api_shares), 1),
        "sync_engine_share_p50_ms": round(statistics.median(engine_shares), 1),
    }


async def _submit_throughput(api_url: str) -> dict[str, float]:
    latencies: list[float] = []
    start = asyncio.Event()

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
            await http.get("/healthz")  # connect before the clock starts
            await start.wait()
            for index in range(PER_CLIENT):
                began = time.perf_counter()
                response = await http.post("/api/v1/jobs", json=_body(100_000 + number * PER_CLIENT + index))
                latencies.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 202, response.text

    tasks = [asyncio.create_task(client(n)) for n in range(CLIENTS)]
    await asyncio.sleep(0.5)
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - began
    return {
        "submit_jobs": CLIENTS * PER_CLIENT,
        "submit_jobs_per_s": round(CLIENTS * PER_CLIENT / wall, 1),
        "submit_latency_p50_ms": round(statistics.median(latencies), 1),
        "submit_latency_p99_ms": round(_percentile(latencies, 0.99), 1),
    }


async def _sync(data_dir: Path) -> dict[str, float]:
    with _child(_fake_process, False) as fake_url, _child(_api_process, fake_url, str(data_dir)) as api_url:
        queue = JobQueue(data_dir / "queue")  # the API's queue, read from here (safe across processes)
        try:
            return await _sync_overhead(api_url, fake_url, queue)
        finally:
            queue.close()


async def run() -> dict[str, float]:
    """Every figure, in one run."""
    figures: dict[str, float] = {"step_time_s": STEP_TIME, "steps": STEPS}
    with tempfile.TemporaryDirectory() as tmp:
        figures.update(await _sync(Path(tmp) / "sync"))
        # ComfyUI holds its prompts: the jobs stay in our queue, so this measures the API and the queue.
        with _child(_fake_process, True) as fake_url, \
                _child(_api_process, fake_url, str(Path(tmp) / "submit")) as api_url:
            figures.update(await _submit_throughput(api_url))
    return figures


def main() -> None:
    figures = asyncio.run(run())
    width = max(len(label) for label, _, _ in ROWS)
    print(f"{'figure':<{width}}  {'value':>10}  goal")
    for label, key, goal in ROWS:
        print(f"{label:<{width}}  {figures[key]:>10}  {goal or ''}")
    print(json.dumps(figures))


if __name__ == "__main__":
    no_arguments("api_bench", __doc__)
    main()
