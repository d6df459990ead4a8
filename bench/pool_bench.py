"""The backend pool against fake ComfyUI servers with a fixed execution time.

(a) throughput: 40 jobs through queue + worker on 1, 2 and 4 servers; the speed-up of 4 over 1
    (goal >= 3.8x). Each fake runs in its own process, as real servers do, so the measurement is of
    the studio, not of five event loops sharing one interpreter.
(b) failover: a server dies with two jobs on it (one running, one queued there); the time from its death until those jobs are
    submitted to, and then executing on, the other servers. Most of it is the reconnect window
    (``STUDIO_FAILOVER_SECONDS``, set to ``FAILOVER_S`` here; 15 s by default) a server gets to come back
    before its jobs move.

``python -m bench.pool_bench`` prints a table, then one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfy.graph.params import GenerationParams  # noqa: E402
from comfy.jobs.records import JobState  # noqa: E402
from comfy.service import Studio  # noqa: E402
from comfy.settings import Settings  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from bench.usage import no_arguments  # noqa: E402

JOBS = 40
STEPS = 5
STEP_TIME = 0.05  # 5 steps x 50 ms + small nodes: ~0.26 s of "GPU" per job
FAILOVER_S = 2.0


def _serve(port_out: Any, stop: Any, step_time: float) -> None:
    fake = FakeComfy(step_time=step_time, node_time=0.002).start()
    port_out.put(fake.port)
    stop.wait()
    fake.stop()


class RemoteFake:
    """A FakeComfy in a child process (``kill()`` is a dead server: connections refused from then on)."""

    def __init__(self, step_time: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        ports = ctx.Queue()
        self._process = ctx.Process(target=_serve, args=(ports, self._stop, step_time), daemon=True)
        self._process.start()
        self.url = f"http://127.0.0.1:{ports.get(timeout=60)}"

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)

    def close(self) -> None:
        if self._process.is_alive():  # a killed child may have died holding the event's lock: do not touch it
            self._stop.set()
            self._process.join(10)
        self.kill()


@contextmanager
def _servers(count: int, step_time: float = STEP_TIME):
    with ExitStack() as stack:
        fakes = []
        for _ in range(count):
            fake = RemoteFake(step_time)
            stack.callback(fake.close)
            fakes.append(fake)
        yield fakes


def _params(seed: int, steps: int = STEPS) -> GenerationParams:
    return GenerationParams(prompt="a lighthouse at dawn", steps=steps, seed=seed, width=64, height=64,
                            checkpoint="random-sd15.safetensors")


def _settings(urls: list[str], data_dir: Path) -> Settings:
    return Settings(_env_file=None, comfyui_url=",".join(urls), data_dir=data_dir,  # type: ignore[call-arg]
                    failover_seconds=FAILOVER_S)


async def _throughput(urls: list[str], data_dir: Path, seed0: int) -> tuple[float, dict[str, int]]:
    async with Studio(_settings(urls, data_dir)) as studio:
        await studio.models()  # warm the node lists, as a running app has them
        await studio.start()
        await asyncio.sleep(0.2)  # the pool's first look at every server
        started = time.perf_counter()
        jobs = await studio.submit(_params(seed0), count=JOBS)
        done = [await studio.wait(job.id) for job in jobs]
        wall = time.perf_counter() - started
    assert all(job.state is JobState.SUCCEEDED for job in done), [job.error for job in done]
    spread: dict[str, int] = {}
    for job in done:
        spread[job.backend or "?"] = spread.get(job.backend or "?", 0) + 1
    return wall, spread


async def _failover(tmp: Path) -> dict[str, float]:
    with _servers(3, step_time=0.05) as (doomed, b, c):
        async with Studio(_settings([doomed.url, b.url, c.url], tmp / "failover")) as studio:
            studio.worker.poll_interval = 0.05
            await studio.models()
            await studio.start()
            await asyncio.sleep(0.3)
            others = [studio.pool.find(b.url), studio.pool.find(c.url)]
            for backend in others:  # for a moment only `doomed` takes work: both its slots get a job
                studio.pool.mark_down(backend, "bench: keep the first jobs on one server")
            jobs = await studio.submit(_params(7000, steps=150), count=2)  # 7.5 s each: still running at the end
            sub = studio.bus.subscribe()
            # One runs on `doomed`, the other waits in its queue; meanwhile the others answer probes again.
            while True:
                current = [await studio.job(j.id) for j in jobs]
                if (any(j.step for j in current) and all(j.prompt_id for j in current)
                        and all(studio.pool.state(o).value == "up" for o in others)):
                    break
                await asyncio.sleep(0.02)
            assert {j.backend for j in current} == {doomed.url}
            sub.drain()
            died = time.perf_counter()
            doomed.kill()
            resubmitted: dict[str, float] = {}
            executing: dict[str, float] = {}
            while len(executing) < len(jobs):
                event = await sub.get(timeout=60)
                if event.kind == "started" and event.job_id not in resubmitted:
                    resubmitted[event.job_id] = time.perf_counter() - died
                elif event.kind == "progress" and event.step and event.job_id in resubmitted:
                    executing.setdefault(event.job_id, time.perf_counter() - died)
            sub.close()
            moved = sorted([(await studio.job(job.id)).backend or "" for job in jobs])
            for job in jobs:
                await studio.cancel(job.id)
    assert moved == sorted([b.url, c.url]), moved
    return {"failover_window_s": FAILOVER_S, "b_death_to_resubmitted_s": round(max(resubmitted.values()), 3),
            "b_death_to_executing_s": round(max(executing.values()), 3)}


async def run_async(*, rounds: int = 1) -> dict[str, Any]:
    figures: dict[str, Any] = {"a_jobs": JOBS, "a_job_exec_s": round(STEPS * STEP_TIME + 0.012, 3)}
    with tempfile.TemporaryDirectory() as tmp, _servers(4) as servers:
        seed = 1000
        for count in (1, 2, 4):
            walls = []
            for round_ in range(rounds):
                wall, spread = await _throughput([s.url for s in servers[:count]], Path(tmp) / f"{count}-{round_}",
                                                 seed)
                seed += JOBS
                walls.append(wall)
            figures[f"a_{count}_servers_s"] = round(statistics.median(walls), 3)
            figures[f"a_{count}_servers_jobs_per_s"] = round(JOBS / statistics.median(walls), 2)
            figures[f"a_{count}_servers_spread"] = sorted(spread.values())
        figures["a_speedup_2"] = round(figures["a_1_servers_s"] / figures["a_2_servers_s"], 2)
        figures["a_speedup_4"] = round(figures["a_1_servers_s"] / figures["a_4_servers_s"], 2)
        figures.update(await _failover(Path(tmp)))
    return figures


def run() -> dict[str, Any]:
    return asyncio.run(run_async())


ROWS = [
    ("(a) 40 jobs on 1 server, s", "a_1_servers_s", None),
    ("(a) 40 jobs on 2 servers, s", "a_2_servers_s", None),
    ("(a) 40 jobs on 4 servers, s", "a_4_servers_s", None),
    ("(a) jobs per server with 4 servers", "a_4_servers_spread", None),
    ("(a) speed-up, 2 servers over 1", "a_speedup_2", None),
    ("(a) speed-up, 4 servers over 1", "a_speedup_4", ">= 3.8"),
    ("(b) reconnect window before failover (STUDIO_FAILOVER_SECONDS), s", "failover_window_s", None),
    ("(b) server death -> both its jobs resubmitted elsewhere, s", "b_death_to_resubmitted_s", None),
    ("(b) server death -> both its jobs executing elsewhere, s", "b_death_to_executing_s", None),
]


def main() -> None:
    figures = run()
    width = max(len(label) for label, _, _ in ROWS)
    print(f"{'figure':<{width}}  {'value':>10}  goal")
    for label, key, goal in ROWS:
        print(f"{label:<{width}}  {str(figures[key]):>10}  {goal or ''}")
    print(json.dumps(figures))


if __name__ == "__main__":
    no_arguments("pool_bench", __doc__)
    main()
