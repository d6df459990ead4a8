"""One owner's page and total read that owner's jobs, not the whole index (the owners' lists)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from comfy.jobs.layout import BUCKET_SIZE, OWNED_CHUNK
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import JobState


def count_reads(queue: JobQueue, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Reads of the queue's diskcache by kind of key (``bucket``, ``job``, ``owned``...), from now on."""
    reads: Counter[str] = Counter()
    real = queue._cache.get

    def get(key: str, *args: Any, **kwargs: Any) -> Any:
        reads[key.split(":")[0]] += 1
        return real(key, *args, **kwargs)

    monkeypatch.setattr(queue._cache, "get", get)
    return reads


def test_an_owners_page_and_total_read_only_that_owners_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with JobQueue(tmp_path / "q") as queue:
        early = queue.enqueue({"prompt": "ann's first"}, owner="ann")[0]
        queue.enqueue_many([{"params": {"i": i}} for i in range(10 * BUCKET_SIZE)], owner="bulk")
        later = [queue.enqueue({"prompt": f"ann {i}"}, owner="ann")[0] for i in range(3)]
        queue.cancel(later[0].id)
        reads = count_reads(queue, monkeypatch)
        page = queue.list(owner="ann", limit=2)
        assert [j.id for j in page.jobs] == [later[2].id, later[1].id] and page.total == 4
        # Her jobs are in 2 of the 11 buckets: those are read, the other 9 are not (today: all 11).
        assert reads["bucket"] == 2 and reads["job"] == 2, reads
        rest = queue.list(owner="ann", cursor=page.next_cursor)
        assert [j.id for j in rest.jobs] == [later[0].id, early.id]
        cancelled = queue.list(owner="ann", states=[JobState.CANCELLED])
        assert [j.id for j in cancelled.jobs] == [later[0].id] and cancelled.total == 1
        assert queue.list(owner="bulk", limit=1).total == 10 * BUCKET_SIZE


def test_the_owners_lists_span_chunks_and_are_built_for_an_older_queue(tmp_path: Path) -> None:
    with JobQueue(tmp_path / "q") as queue:
        mine = [job.id for job in queue.enqueue_many([{"params": {"i": i}} for i in range(OWNED_CHUNK + 5)])]
        ann = [queue.enqueue({"i": i}, owner="ann")[0].id for i in range(3)]
        assert [j.id for j in queue.list(unowned=True, limit=OWNED_CHUNK + 10).jobs] == mine[::-1]
        # A queue made before the owners' lists: they are built once, when it is opened.
        for key in [k for k in queue._cache.iterkeys() if str(k).startswith("owned")]:
            del queue._cache[key]
    with JobQueue(tmp_path / "q") as queue:
        everyone = queue.list(unowned=True, limit=OWNED_CHUNK + 10)
        assert [j.id for j in everyone.jobs] == mine[::-1] and everyone.total == OWNED_CHUNK + 5
        assert [j.id for j in queue.list(owner="ann").jobs] == ann[::-1]
        late = queue.enqueue({"i": "late"}, owner="ann")[0]
        assert queue.list(owner="ann", limit=1).jobs[0].id == late.id
    with JobQueue(tmp_path / "q") as other_process:  # a fresh process finds the last chunk on its own
        other_process.enqueue({"i": "last"})
        assert other_process.list(unowned=True).total == OWNED_CHUNK + 6
