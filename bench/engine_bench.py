"""The engine against the fake ComfyUI with a fixed execution time.

(a) 20 jobs through queue + worker, against the same 20 prompts sent straight to the server by a
    minimal client (one socket, all prompts POSTed at once, /history + /view as each one ends):
    the ratio of wall times, measured alternately in one run.
(b) per job, the time from the server's ``execution_success`` (its own ms timestamp) to the job's
    ``succeeded`` state with its 512×512 PNG saved.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import httpx_ws

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfy.graph.params import GenerationParams  # noqa: E402
from comfy.jobs.records import JobState  # noqa: E402
from comfy.service import Studio  # noqa: E402
from comfy.settings import Settings  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from bench.usage import no_arguments  # noqa: E402

STEPS = 4
STEP_TIME = 0.05  # 4 steps x 50 ms + small nodes: ~0.2 s of "GPU" per job


def _params(seed: int, size: int) -> GenerationParams:
    return GenerationParams(prompt="a lighthouse at dawn", steps=STEPS, seed=seed, width=size, height=size,
                            checkpoint="random-sd15.safetensors")


async def _through_studio(url: str, data_dir: Path, jobs: int, seed0: int, size: int,
                          *, one_at_a_time: bool = False) -> tuple[float, list[Any]]:
    settings = Settings(_env_file=None, comfyui_url=url, data_dir=data_dir)  # type: ignore[call-arg]
    async with Studio(settings) as studio:
        await studio.models()  # warm the node list, as a running app has it
        await studio.start()
        started = time.perf_counter()
        submitted, done = [], []
        for index in range(jobs):
            submitted.extend(await studio.submit(_params(seed0 + index, size)))
            if one_at_a_time:
                done.append(await studio.wait(submitted[-1].id))
        done = done or [await studio.wait(job.id) for job in submitted]
        wall = time.perf_counter() - started
    assert all(job.state is JobState.SUCCEEDED for job in done), [j.error for j in done]
    return wall, done


async def _straight(url: str, graphs: list[dict[str, Any]]) -> float:
    """What a careful script does without a queue: everything at once on one socket."""
    client_id = uuid.uuid4().hex
    async with httpx.AsyncClient(base_url=url) as http:
        async with httpx_ws.aconnect_ws(f"{url}/ws?clientId={client_id}", http,
                                        max_message_size_bytes=16 * 1024 * 1024) as ws:
            started = time.perf_counter()
            pending = set()
            for graph in graphs:
                answer = (await http.post("/prompt", json={"prompt": graph, "client_id": client_id})).json()
                pending.add(answer["prompt_id"])
            while pending:
                message = await ws.receive()
                if not hasattr(message, "data") or isinstance(message.data, (bytes, bytearray)):
                    continue
                msg = json.loads(message.data)
                data = msg.get("data") or {}
                if msg["type"] == "executing" and data.get("node") is None and data.get("prompt_id") in pending:
                    prompt_id = data["prompt_id"]
                    pending.discard(prompt_id)
                    entry = (await http.get(f"/history/{prompt_id}")).json()[prompt_id]
                    for output in entry["outputs"].values():
                        for img in output.get("images", []):
                            (await http.get("/view", params=img)).read()
            return time.perf_counter() - started


def _graph(seed: int, size: int) -> dict[str, Any]:
    from comfy import graph as workflows
    return workflows.bind(workflows.load_template("txt2img"), _params(seed, size))


async def _success_to_saved(url: str, done: list[Any]) -> list[float]:
    """Milliseconds from each prompt's server-side execution_success to its job's finish."""
    latencies = []
    async with httpx.AsyncClient(base_url=url) as http:
        for job in done:
            entry = (await http.get(f"/history/{job.prompt_id}")).json()[job.prompt_id]
            success_ms = next(d["timestamp"] for name, d in entry["status"]["messages"] if name == "execution_success")
            latencies.append(job.finished_at * 1000 - success_ms)
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(*, jobs: int = 20, rounds: int = 3) -> dict[str, float]:
    ratios, studio_walls, straight_walls = [], [], []
    with tempfile.TemporaryDirectory() as tmp, FakeComfy(step_time=STEP_TIME, node_time=0.002) as fake:
        seed = 1000
        for round_ in range(rounds):
            # Different seeds every time, so ComfyUI's cache never skips the work.
            straight = await _straight(fake.url, [_graph(seed + i, 64) for i in range(jobs)])
            seed += jobs
            ours, done = await _through_studio(fake.url, Path(tmp) / f"r{round_}", jobs, seed, 64)
            seed += jobs
            straight_walls.append(straight)
            studio_walls.append(ours)
            ratios.append(ours / straight)
        # (b) with 512×512 PNGs, one job at a time so each measurement is of one job alone.
        _, done = await _through_studio(fake.url, Path(tmp) / "latency", jobs, seed, 512, one_at_a_time=True)
        latencies = await _success_to_saved(fake.url, done)
    return {
        "a_jobs": jobs,
        "a_straight_s": round(statistics.median(straight_walls), 3),
        "a_studio_s": round(statistics.median(studio_walls), 3),
        "a_ratio": round(statistics.median(ratios), 4),
        "b_success_to_saved_p50_ms": round(statistics.median(latencies), 1),
        "b_success_to_saved_p99_ms": round(_percentile(latencies, 0.99), 1),
    }


if __name__ == "__main__":
    no_arguments("engine_bench", __doc__)
    print(json.dumps(asyncio.run(run())))
