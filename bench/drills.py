"""Failure drills against the fake ComfyUI: each job must run once on the backend, succeed, and keep its image.

    kill9        ``kill -9`` of a worker process mid-batch of 20, then a new worker: 20 of 20 succeed
    restart      the backend restarts mid-job (its queue and history are lost): resubmitted once, finishes
    ws_drops     the event WebSocket is cut every 2 s across a batch of 10
    lost_reply   a proxy loses the answer to every first POST /prompt (ComfyUI queued it): 10 jobs
    two_workers  two worker processes on one queue, 200 jobs

Each drill returns its :class:`Figures`: submissions per job as ComfyUI saw them (POST /prompt accepted,
by the job's seed), how many succeeded, images missing, the time to recover and the peak memory.
``tests/test_drills.py`` runs the same drills in CI and asserts the counts (never the timings);
``python -m bench.drills`` prints the table and writes ``bench/results/drills.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.usage import parser_for  # noqa: E402
from comfy.graph.params import GenerationParams  # noqa: E402
from comfy.jobs.queue import JobQueue  # noqa: E402
from comfy.jobs.records import Job, JobState  # noqa: E402
from comfy.service import Studio  # noqa: E402
from comfy.settings import Settings  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "drills.json"


@dataclasses.dataclass
class Figures:
    drill: str
    jobs: int
    succeeded: int
    #: How many times each job's prompt was accepted by ComfyUI (by seed); 1 everywhere is "exactly once".
    runs_per_job: dict[int, int]
    images_missing: int
    recover_s: float | None
    wall_s: float
    peak_rss_mb: float
    notes: str = ""

    @property
    def max_runs(self) -> int:
        return max(self.runs_per_job.values(), default=0)

    def row(self) -> dict[str, Any]:
        spread = Counter(self.runs_per_job.values())
        return {"drill": self.drill, "jobs": self.jobs, "succeeded": self.succeeded,
                "submissions per job": ", ".join(f"{n} job{'s' * (n > 1)}: {runs}" for runs, n in sorted(spread.items())),
                "images missing": self.images_missing,
                "recover s": "-" if self.recover_s is None else f"{self.recover_s:.2f}",
                "wall s": f"{self.wall_s:.2f}", "peak RSS MB": f"{self.peak_rss_mb:.0f}", "notes": self.notes}


def params(seed: int, steps: int = 3) -> GenerationParams:
    return GenerationParams(prompt="a lighthouse at dawn", steps=steps, seed=seed, width=64, height=64,
                            checkpoint="random-sd15.safetensors")


def runs_by_seed(fake: FakeComfy, seeds: list[int]) -> dict[int, int]:
    posted = Counter(int(node["inputs"]["seed"]) for body in fake.prompts for node in body["prompt"].values()
                     if node["class_type"] == "KSampler")
    return {seed: posted.get(seed, 0) for seed in seeds}


def images_missing(jobs: list[Job]) -> int:
    """Succeeded jobs without their PNG on disk, plus jobs that did not succeed."""
    missing = 0
    for job in jobs:
        paths = [Path(output["path"]) for output in job.outputs]
        if job.state is not JobState.SUCCEEDED or not paths or not all(p.is_file() for p in paths):
            missing += 1
    return missing


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _settings(url: str, data_dir: Path, **extra: Any) -> Settings:
    return Settings(_env_file=None, comfyui_url=url, data_dir=data_dir, lease_seconds=5.0,  # type: ignore[call-arg]
                    **extra)


async def _studio(url: str, data_dir: Path, **extra: Any) -> Studio:
    studio = Studio(_settings(url, data_dir, **extra))
    studio.client.idle_check = 0.5
    studio.worker.poll_interval = 0.02
    await studio.start()
    return studio


# -- in this process ----------------------------------------------------------------------------------------


async def restart(tmp: Path) -> Figures:
    """The backend restarts mid-job, losing its queue and history: the job is submitted again, once."""
    with FakeComfy(step_time=0.05, node_time=0.001) as fake:
        studio = await _studio(fake.url, tmp / "restart")
        try:
            started = time.perf_counter()
            [job] = await studio.submit(params(500, steps=20))
            while ((await studio.job(job.id)).step or 0) < 2:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(fake.restart)
            restarted = time.perf_counter()
            fake.step_time = 0.005
            done = await studio.wait(job.id, timeout=60)
            ended = time.perf_counter()
        finally:
            await studio.aclose()
        return Figures("restart", 1, int(done.state is JobState.SUCCEEDED), runs_by_seed(fake, [500]),
                       images_missing([done]), ended - restarted, ended - started, _rss_mb(resource.RUSAGE_SELF),
                       notes=f"attempts {done.attempts}; the first run died with the server")


async def ws_drops(tmp: Path, *, jobs: int = 10, every: float = 2.0) -> Figures:
    """Every event WebSocket is cut every ``every`` seconds while a batch of ``jobs`` runs."""
    with FakeComfy(step_time=0.05, node_time=0.001) as fake:
        studio = await _studio(fake.url, tmp / "ws_drops")
        drops = 0

        async def cutter() -> None:
            nonlocal drops
            while True:
                await asyncio.sleep(every)
                fake.drop_sockets()
                drops += 1

        try:
            started = time.perf_counter()
            submitted = await studio.submit(params(600, steps=8), count=jobs)
            cutting = asyncio.create_task(cutter())
            try:
                done = [await studio.wait(job.id, timeout=120) for job in submitted]
            finally:
                cutting.cancel()
            ended = time.perf_counter()
        finally:
            await studio.aclose()
        seeds = [600 + n for n in range(jobs)]
        return Figures("ws_drops", jobs, sum(j.state is JobState.SUCCEEDED for j in done), runs_by_seed(fake, seeds),
                       images_missing(done), None, ended - started, _rss_mb(resource.RUSAGE_SELF),
                       notes=f"{drops} drops of every socket")


async def lost_reply(tmp: Path, *, jobs: int = 10) -> Figures:
    """A proxy loses the answer to the first POST /prompt of every prompt, after ComfyUI queued it."""
    with FakeComfy(step_time=0.005, node_time=0.001) as fake:
        fake.lose_first_replies = True
        studio = await _studio(fake.url, tmp / "lost_reply")
        try:
            started = time.perf_counter()
            submitted = await studio.submit(params(700), count=jobs)
            done = [await studio.wait(job.id, timeout=60) for job in submitted]
            ended = time.perf_counter()
        finally:
            await studio.aclose()
        seeds = [700 + n for n in range(jobs)]
        return Figures("lost_reply", jobs, sum(j.state is JobState.SUCCEEDED for j in done), runs_by_seed(fake, seeds),
                       images_missing(done), None, ended - started, _rss_mb(resource.RUSAGE_SELF),
                       notes=f"{len(fake.lost_replies)} answers lost, each prompt found and followed")


# -- worker processes -------------------------------------------------------------------------------------


def _worker(data_dir: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COMFYUI_URL": url, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_LEASE_SECONDS": "3"}
    log = tempfile.TemporaryFile()  # not a pipe: a chatty worker must never block on a full one
    worker = subprocess.Popen([sys.executable, "-m", "comfy", "worker", *args], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    worker.log = log  # type: ignore[attr-defined]
    return worker


def _output(worker: subprocess.Popen[bytes]) -> str:
    log = worker.log  # type: ignore[attr-defined]
    log.seek(0)
    return log.read().decode(errors="replace")


def _enqueue(data_dir: Path, seeds: list[int], steps: int) -> list[str]:
    with JobQueue(data_dir / "queue") as queue:
        return [job.id for job in queue.enqueue_many([{"params": params(seed, steps).to_dict()} for seed in seeds])]


def _jobs(data_dir: Path, ids: list[str]) -> list[Job]:
    with JobQueue(data_dir / "queue") as queue:
        return [queue.get(job_id) for job_id in ids]


def _until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("drill condition not reached in time")
        time.sleep(0.05)


def kill9(tmp: Path, *, jobs: int = 20) -> Figures:
    """``kill -9`` of the worker mid-batch (some done, two in flight on ComfyUI), then a fresh worker."""
    data_dir = tmp / "kill9"
    seeds = [800 + n for n in range(jobs)]
    with FakeComfy(step_time=0.03, node_time=0.001) as fake:
        ids = _enqueue(data_dir, seeds, steps=6)
        started = time.perf_counter()
        first = _worker(data_dir, fake.url)
        try:
            _until(lambda: sum(j.state is JobState.SUCCEEDED for j in _jobs(data_dir, ids)) >= jobs // 4
                   and any(j.state is JobState.RUNNING and j.prompt_id for j in _jobs(data_dir, ids)), 60)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        left_running = [j.id for j in _jobs(data_dir, ids) if j.state is JobState.RUNNING]
        killed = time.perf_counter()
        second = _worker(data_dir, fake.url, "--burst")
        recovered = None  # when the jobs caught running by the kill have all ended (new process start included)
        while second.poll() is None:
            if recovered is None and all(j.done for j in _jobs(data_dir, left_running)):
                recovered = time.perf_counter() - killed
            time.sleep(0.05)
        ended = time.perf_counter()
        if second.returncode != 0:
            raise RuntimeError(_output(second))
        done = _jobs(data_dir, ids)
        return Figures("kill9", jobs, sum(j.state is JobState.SUCCEEDED for j in done), runs_by_seed(fake, seeds),
                       images_missing(done), recovered or ended - killed, ended - started,
                       _rss_mb(resource.RUSAGE_CHILDREN), notes=f"{len(left_running)} running at the kill, re-attached")


def two_workers(tmp: Path, *, jobs: int = 200) -> Figures:
    """Two worker processes drain one queue of ``jobs`` jobs."""
    data_dir = tmp / "two_workers"
    seeds = [10_000 + n for n in range(jobs)]
    with FakeComfy(step_time=0.001, node_time=0.0005, previews=False) as fake:
        ids = _enqueue(data_dir, seeds, steps=1)
        started = time.perf_counter()
        workers = [_worker(data_dir, fake.url, "--burst") for _ in range(2)]
        for worker in workers:
            worker.wait(300)
        ended = time.perf_counter()
        for worker in workers:
            if worker.returncode != 0:
                raise RuntimeError(_output(worker))
        done = _jobs(data_dir, ids)
        clients = Counter(body["client_id"] for body in fake.prompts)
        return Figures("two_workers", jobs, sum(j.state is JobState.SUCCEEDED for j in done),
                       runs_by_seed(fake, seeds), images_missing(done), None, ended - started,
                       _rss_mb(resource.RUSAGE_CHILDREN),
                       notes=f"{jobs / (ended - started):.0f} jobs/s; attempts > 1: "
                             f"{sum(j.attempts > 1 for j in done)}; {len(clients)} sockets")


DRILLS: dict[str, Callable[[Path], Any]] = {
    "kill9": kill9, "restart": restart, "ws_drops": ws_drops, "lost_reply": lost_reply, "two_workers": two_workers,
}


def run_one(name: str, tmp: Path) -> Figures:
    outcome = DRILLS[name](tmp)
    return asyncio.run(outcome) if asyncio.iscoroutine(outcome) else outcome


def record(figures: Figures, path: Path = RESULTS) -> None:
    """Merge one drill's figures into ``bench/results/drills.json`` (gitignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    kept[figures.drill] = {**figures.row(), "runs_per_job": {str(k): v for k, v in figures.runs_per_job.items()}}
    path.write_text(json.dumps(kept, indent=1))


def table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = parser_for("drills", __doc__)
    parser.add_argument("names", nargs="*", metavar="DRILL",
                        help=f"which drills to run (default: all): {', '.join(DRILLS)}")
    names = parser.parse_args(argv).names
    if unknown := [name for name in names if name not in DRILLS]:
        parser.error(f"no drill named {', '.join(unknown)}; choose from {', '.join(DRILLS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(DRILLS):
            figures = run_one(name, Path(tmp))
            record(figures)
            rows.append(figures.row())
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
