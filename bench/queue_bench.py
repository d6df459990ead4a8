"""Throughput of the job queue (enqueue → claim → finish) and the time to list one page of 10,000 jobs.

    python -m bench.queue_bench        # prints {"jobs_per_s": ..., "list_page_ms": ..., ...}, then
                                       # bench/store_bench.py's table (Redis, events across replicas)

``jobs_per_s`` is the best of three rounds of 2,000 jobs (enqueue them all, then claim and finish each),
as timeit reports the best run: the rest is noise from other processes. The median and a round with no
backlog (enqueue, claim, finish one job at a time) are reported too. ``list_page_ms`` is the slowest of
three listings (all jobs, one state, one owner's jobs in one state), each the median of 20 pages.
``counts_ms`` is ``counts()`` on that queue (the status line asks it every 5 s per open page), against
``counts_scan_ms``, the scan of every index bucket it replaced (which grows with the jobs ever queued);
``python -m bench.queue_bench --listed 200000`` shows the gap at a larger queue.
``list_page_ms_small_owner`` is the first page (and total) of an owner with 60 jobs, the oldest in that
queue: it reads that owner's list and the one index bucket its jobs are in, not the whole index.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.usage import parser_for  # noqa: E402
from comfy.jobs.queue import JobQueue  # noqa: E402
from comfy.jobs.records import JobState

PARAMS = {"prompt": "a watercolour fox in the snow", "negative": "blurry", "width": 1024, "height": 1024,
          "steps": 28, "cfg": 6.5, "seed": 1234, "sampler": "euler", "scheduler": "normal"}
WORKER = "bench:1:cafe"


def _backlog_round(directory: Path, jobs: int) -> float:
    with JobQueue(directory) as queue:
        started = time.perf_counter()
        for index in range(jobs):
            queue.enqueue({**PARAMS, "seed": index}, owner="bench")
        while (job := queue.claim(WORKER, lease_seconds=30)) is not None:
            queue.finish(job.id, WORKER, outputs=[{"filename": f"{job.id}.png"}])
        return jobs / (time.perf_counter() - started)


def _one_by_one_round(directory: Path, jobs: int) -> float:
    with JobQueue(directory) as queue:
        started = time.perf_counter()
        for index in range(jobs):
            queue.enqueue({**PARAMS, "seed": index}, owner="bench")
            job = queue.claim(WORKER, lease_seconds=30)
            assert job is not None
            queue.finish(job.id, WORKER, outputs=[{"filename": f"{job.id}.png"}])
        return jobs / (time.perf_counter() - started)


def _list_pages(directory: Path, listed: int) -> dict[str, float]:
    with JobQueue(directory) as queue:
        queue.enqueue_many([{"params": {**PARAMS, "seed": i}} for i in range(60)], owner="ann")
        queue.enqueue_many([{"params": {**PARAMS, "seed": i}} for i in range(listed)], owner="bench")
        for _ in range(listed // 2):  # half of them done: a realistic mix of states
            job = queue.claim(WORKER, lease_seconds=30)
            assert job is not None
            queue.finish(job.id, WORKER, outputs=[])
        filters: dict[str, dict] = {"all": {}, "queued": {"states": [JobState.QUEUED]},
                                    "owner_succeeded": {"states": [JobState.SUCCEEDED], "owner": "bench"}}
        timings = {}
        for name, kwargs in filters.items():
            samples, cursor = [], None
            for _ in range(20):
                t0 = time.perf_counter()
                page = queue.list(limit=50, cursor=cursor, **kwargs)
                samples.append((time.perf_counter() - t0) * 1000)
                assert len(page.jobs) == 50
                cursor = page.next_cursor
            timings[name] = statistics.median(samples)
        samples = []
        for _ in range(20):
            t0 = time.perf_counter()
            page = queue.list(limit=50, owner="ann")
            samples.append((time.perf_counter() - t0) * 1000)
            assert len(page.jobs) == 50 and page.total == 60
        timings["small_owner"] = statistics.median(samples)
        return timings


def _counts(directory: Path) -> dict[str, float]:
    """counts() (one record kept by the transitions) against the bucket scan it replaced, in ms (medians)."""
    from comfy.jobs.layout import BUCKET_KEY, BUCKET_SIZE, STATE_OF

    with JobQueue(directory) as queue:
        def scan() -> dict[JobState, int]:
            counts, number = dict.fromkeys(JobState, 0), 0
            while (buf := queue._cache.get(BUCKET_KEY.format(number))) is not None:
                for code, state in STATE_OF.items():
                    counts[state] += buf.count(code, 0, BUCKET_SIZE)
                number += 1
            return counts

        assert scan() == queue.counts()
        timings = {}
        for name, fn in (("counts_ms", queue.counts), ("counts_scan_ms", scan)):
            samples = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1000)
            timings[name] = statistics.median(samples)
        return timings


def run(tmpdir: str | Path, *, jobs: int = 2000, listed: int = 10_000, rounds: int = 3) -> dict[str, float]:
    """Measure in fresh queues under ``tmpdir``."""
    root = Path(tmpdir)
    backlog = [_backlog_round(root / f"backlog-{i}", jobs) for i in range(rounds)]
    one_by_one = _one_by_one_round(root / "one-by-one", jobs)
    pages = _list_pages(root / "listing", listed)
    counts = _counts(root / "listing")
    return {
        "counts_ms": round(counts["counts_ms"], 3), "counts_scan_ms": round(counts["counts_scan_ms"], 3),
        "counts_speedup": round(counts["counts_scan_ms"] / max(counts["counts_ms"], 1e-6), 1),
        "jobs_per_s": round(max(backlog)),
        "jobs_per_s_median": round(statistics.median(backlog)),
        "jobs_per_s_no_backlog": round(one_by_one),
        "list_page_ms": round(max(v for k, v in pages.items() if k != "small_owner"), 2),
        **{f"list_page_ms_{name}": round(ms, 2) for name, ms in pages.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = parser_for("queue_bench", __doc__)
    parser.add_argument("--listed", type=int, default=10_000, metavar="JOBS",
                        help="jobs in the queue the listing and counts figures are taken on (default 10,000)")
    listed = parser.parse_args(argv).listed
    with tempfile.TemporaryDirectory() as tmpdir:
        print(json.dumps(run(tmpdir, listed=listed)))
    from bench import store_bench  # then Redis against diskcache, and events across replicas

    store_bench.main()


if __name__ == "__main__":
    main()
