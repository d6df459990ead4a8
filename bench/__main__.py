"""``python -m bench``: the engine's figures, as a table, then one JSON line to compare run to run.

All against the fake ComfyUI on loopback with a fixed execution time, in one run (ratios are
taken within the run; the machine is small and noisy, so compare ratios, not seconds).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import engine_bench, queue_bench  # noqa: E402
from bench.usage import no_arguments  # noqa: E402

ROWS = [
    ("(a) 20 jobs straight to ComfyUI (minimal script), median s", "a_straight_s", None),
    ("(a) the same 20 through queue + worker, median s", "a_studio_s", None),
    ("(a) wall-time ratio studio / straight", "a_ratio", "<= 1.03"),
    ("(b) execution_success -> succeeded + 512x512 PNG saved, p50 ms", "b_success_to_saved_p50_ms", "<= 20"),
    ("(b) the same, p99 ms", "b_success_to_saved_p99_ms", None),
    ("(c) enqueue -> claim -> complete, jobs/s (median of 3 rounds)", "jobs_per_s_median", ">= 2000"),
    ("(c) the same, best round, jobs/s", "jobs_per_s", None),
    ("(c) enqueue -> claim -> complete one at a time, jobs/s", "jobs_per_s_no_backlog", None),
    ("(c) one page (50) of a 10,000-job listing, ms (slowest filter)", "list_page_ms", "<= 20"),
]


def main() -> None:
    figures = asyncio.run(engine_bench.run())
    with tempfile.TemporaryDirectory() as tmp:
        figures.update(queue_bench.run(tmp))
    width = max(len(label) for label, _, _ in ROWS)
    print(f"{'figure':<{width}}  {'value':>10}  goal")
    for label, key, goal in ROWS:
        print(f"{label:<{width}}  {figures[key]:>10}  {goal or ''}")
    print(json.dumps(figures))


if __name__ == "__main__":
    no_arguments("bench", __doc__)
    main()
