"""The failure drills of ``bench/drills.py``, in CI: every job succeeds, runs once on the backend, keeps its image.

Figures (time to recover, peak memory) are printed and merged into ``bench/results/drills.json``; only the
counts are asserted. ``python -m bench.drills`` prints the same drills as a table.
"""

from __future__ import annotations

import pytest

from bench import drills


@pytest.mark.slow
@pytest.mark.parametrize("name", list(drills.DRILLS))
def test_drill(tmp_path, name: str) -> None:
    figures = drills.run_one(name, tmp_path)
    drills.record(figures)
    print("\n" + drills.table([figures.row()]))
    assert figures.succeeded == figures.jobs and figures.images_missing == 0
    assert len(figures.runs_per_job) == figures.jobs
    # The backend lost the first run when it restarted: submitted once more, never twice more.
    expected = 2 if name == "restart" else 1
    assert set(figures.runs_per_job.values()) == {expected}, figures.runs_per_job
