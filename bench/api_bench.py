"""The REST API against the fake ComfyUI on loopback, with a fixed execution time.

(1) Synchronous overhead: for each ``POST /api/v1/generate/`` (one at a time, 64x64, 4 steps), the
    HTTP round trip minus ComfyUI's own execution time (``execution_start`` -> ``execution_success``
    timestamps in the fake's /history). Goal: <= 15 ms at p50 (the design we replace: 355 ms).
(2) Submission throughput: 50 concurrent clients, each POSTing /api/v1/jobs on its own keep-alive
    connection; jobs/s over the whole run, and the latency of one submission. ComfyUI is held, so the
    figure is the API and the queue, not the fake's image encoding.

The API (uvicorn, the studio, its worker) runs in a thread with its own event loop, the fake in
another, the clients in the main one: as in production, the client's own work is not the server's.

    python -m bench.api_bench      # a table, then one JSON line
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfy.api import create_api  # noqa: E402
from comfy.service import Studio  # noqa: E402
from comfy.settings import Settings  # noqa: E402
from tests.fakes.comfy_server import FakeComfy  # noqa: E402

STEPS = 4
STEP_TIME = 0.02  # 4 steps x 20 ms: ~80 ms of "GPU" per job
SYNC_REQUESTS = 40
CLIENTS = 50
PER_CLIENT = 20

class NoDelayFake(FakeComfy):
    """The fake ComfyUI with TCP_NODELAY on its connections, as a real ComfyUI (aiohttp) has.

    The stock fake binds ``socket.socket(AF_INET, SOCK_STREAM)`` (proto 0), so asyncio never sets
    TCP_NODELAY on its connections: each response's second write waits for the client's delayed
    ACK (~40 ms on Linux), which adds ~40-90 ms to every job (/history, /view) that a real server
    does not. Measured both ways below.
    """

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        return sock


ROWS = [
    ("(1) sync generate round trip, p50 ms", "sync_round_trip_p50_ms", None),
    ("(1) ComfyUI execution (its own timestamps), p50 ms", "sync_execution_p50_ms", None),
    ("(1) overhead = round trip - execution, p50 ms", "sync_overhead_p50_ms", "<= 15"),
    ("(1) overhead, p99 ms", "sync_overhead_p99_ms", None),
    ("(1) overhead p50 ms, stock fake (no TCP_NODELAY: +~40 ms stalls)", "stock_fake_overhead_p50_ms", None),
    (f"(2) POST /api/v1/jobs with {CLIENTS} concurrent clients, jobs/s", "submit_jobs_per_s", None),
    ("(2) one submission under that load, p50 ms", "submit_latency_p50_ms", None),
    ("(2) the same, p99 ms", "submit_latency_p99_ms", None),
]


@contextmanager
def _serving(url: str, data_dir: Path) -> Iterator[tuple[str, Studio]]:
    settings = Settings(_env_file=None, comfyui_url=url, data_dir=data_dir,  # type: ignore[call-arg]
                        rate_limit_per_minute=0, sync_wait_seconds=60)
    studio = Studio(settings)
    app = create_api(studio, settings)  # its lifespan starts and stops the studio
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn.run gets
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, ws="wsproto"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), name="api", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", studio
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


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


async def _sync_overhead(api_url: str, fake_url: str, studio: Studio) -> dict[str, float]:
    trips, executions, overheads = [], [], []
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        for seed in range(3):  # warm up: connections, the node list, the template
            assert (await http.post("/api/v1/generate/", json=_body(10_000 + seed))).status_code == 200
        for seed in range(SYNC_REQUESTS):  # a new seed each time, so ComfyUI's cache never skips the work
            started = time.perf_counter()
            response = await http.post("/api/v1/generate/", json=_body(seed))
            trip = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.text
            prompt_id = studio.job(response.json()["job_id"]).prompt_id
            assert prompt_id
            execution = await _execution_ms(fake_url, prompt_id, http)
            trips.append(trip)
            executions.append(execution)
            overheads.append(trip - execution)
    return {
        "sync_round_trip_p50_ms": round(statistics.median(trips), 1),
        "sync_execution_p50_ms": round(statistics.median(executions), 1),
        "sync_overhead_p50_ms": round(statistics.median(overheads), 1),
        "sync_overhead_p99_ms": round(_percentile(overheads, 0.99), 1),
    }


async def _submit_throughput(api_url: str) -> dict[str, float]:
    latencies: list[float] = []

    async def client(number: int) -> None:
        async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
            await http.get("/healthz")  # connect before the clock starts
            await start.wait()
            for index in range(PER_CLIENT):
                began = time.perf_counter()
                response = await http.post("/api/v1/jobs", json=_body(100_000 + number * PER_CLIENT + index))
                latencies.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 202, response.text

    start = asyncio.Event()
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


async def run() -> dict[str, float]:
    figures: dict[str, float] = {"step_time_s": STEP_TIME, "steps": STEPS}
    with tempfile.TemporaryDirectory() as tmp, FakeComfy(step_time=STEP_TIME, node_time=0.001) as stock:
        with _serving(stock.url, Path(tmp) / "stock") as (api_url, studio):
            figures["stock_fake_overhead_p50_ms"] = (await _sync_overhead(api_url, stock.url, studio))[
                "sync_overhead_p50_ms"]
    with tempfile.TemporaryDirectory() as tmp, NoDelayFake(step_time=STEP_TIME, node_time=0.001) as fake:
        with _serving(fake.url, Path(tmp) / "sync") as (api_url, studio):
            figures.update(await _sync_overhead(api_url, fake.url, studio))
        fake.hold = True  # jobs stay in our queue: this measures the API and the queue only
        with _serving(fake.url, Path(tmp) / "submit") as (api_url, _studio):
            figures.update(await _submit_throughput(api_url))
        fake.hold = False
    return figures


def main() -> None:
    figures = asyncio.run(run())
    width = max(len(label) for label, _, _ in ROWS)
    print(f"{'figure':<{width}}  {'value':>10}  goal")
    for label, key, goal in ROWS:
        print(f"{label:<{width}}  {figures[key]:>10}  {goal or ''}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
