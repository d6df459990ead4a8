"""counts() reads one small record kept by every transition, not every index bucket."""

from __future__ import annotations

import random

from comfy.jobs.layout import BUCKET_KEY, BUCKET_SIZE, COUNTS_KEY, STATE_OF
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import JobState

W1 = "w1"


def scanned(queue: JobQueue) -> dict[JobState, int]:
    """What the buckets say, counted the slow way."""
    counts = dict.fromkeys(JobState, 0)
    number = 0
    while (buf := queue._cache.get(BUCKET_KEY.format(number))) is not None:
        for code, state in STATE_OF.items():
            counts[state] += buf.count(code, 0, BUCKET_SIZE)
        number += 1
    return counts


def test_counts_follow_every_transition(tmp_path) -> None:
    rng = random.Random(7)
    with JobQueue(tmp_path / "q") as queue:
        assert queue.counts() == dict.fromkeys(JobState, 0)
        for step in range(700):  # crosses bucket boundaries
            action = rng.choice(["enqueue", "enqueue", "claim", "finish", "fail", "cancel", "retry", "prune"])
            if action == "enqueue":
                queue.enqueue({"prompt": f"job {step}"})
            elif action == "claim":
                queue.claim(W1, lease_seconds=30)
            elif action in ("finish", "fail", "retry"):
                running = queue.list(states=[JobState.RUNNING], limit=1).jobs
                if running and action == "finish":
                    queue.finish(running[0].id, W1, outputs=[])
                elif running:
                    queue.fail(running[0].id, W1, code="x", message="x", retry=action == "retry")
            elif action == "cancel":
                live = queue.list(states=[JobState.QUEUED, JobState.RUNNING], limit=5).jobs
                if live:
                    queue.cancel(rng.choice(live).id)
            elif action == "prune" and step % 50 == 0:
                queue.prune(older_than=float("inf"))
            if step % 97 == 0:
                assert queue.counts() == scanned(queue)
        assert queue.counts() == scanned(queue)
        assert sum(queue.counts().values()) == queue.list(limit=0).total
        slow = scanned(queue)
        for state in JobState:  # a listing's total comes from the counts, and it is the same number
            page = queue.list(states=[state], limit=3)
            assert page.total == slow[state] and len(page.jobs) == min(3, slow[state])


def test_a_queue_made_before_counts_were_kept_counts_once_then_keeps_them(tmp_path) -> None:
    with JobQueue(tmp_path / "q") as queue:
        for i in range(300):
            queue.enqueue({"prompt": f"job {i}"})
        queue.claim(W1, lease_seconds=30)
        queue._cache.delete(COUNTS_KEY)  # as an older version left it
        queue.enqueue({"prompt": "one more"})  # not tracked yet: nothing to count from
        assert queue.counts() == {**dict.fromkeys(JobState, 0), JobState.QUEUED: 300, JobState.RUNNING: 1}
        assert queue._cache.get(COUNTS_KEY) is not None
        queue.claim(W1, lease_seconds=30)
        assert queue.counts() == scanned(queue)
