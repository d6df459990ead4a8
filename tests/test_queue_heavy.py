"""A job's workflow lives apart from its record: progress rewrites a few hundred bytes, never the graph."""

from __future__ import annotations

from comfy.jobs.layout import JOB_KEY, WORKFLOW_KEY
from comfy.jobs.queue import JobQueue

W1 = "w1"
BIG = {str(i): {"class_type": "Note", "inputs": {"text": "x" * 1000}} for i in range(2000)}  # about 2 MB


def _record_size(queue: JobQueue, job_id: str) -> int:
    import pickle

    return len(pickle.dumps(queue._cache.get(JOB_KEY.format(job_id))))


def test_progress_updates_rewrite_only_the_small_record(tmp_path) -> None:
    with JobQueue(tmp_path / "q") as queue:
        job, _ = queue.enqueue({"prompt": "-"}, kind="workflow", workflow=BIG)
        assert _record_size(queue, job.id) < 4096  # one SQLite page, whatever the workflow weighs
        assert queue.get(job.id).workflow == BIG  # still there for whoever runs or shows the job
        claimed = queue.claim(W1, lease_seconds=30)
        assert claimed is not None and claimed.workflow == BIG
        written: list[str] = []
        plain_set = queue._cache.set
        queue._cache.set = lambda key, value, **kw: written.append(key) or plain_set(key, value, **kw)  # type: ignore[method-assign]
        for step in range(20):
            queue.update(job.id, W1, progress=step / 20, node="KSampler", step=step, steps=20)
        queue._cache.set = plain_set  # type: ignore[method-assign]
        assert _record_size(queue, job.id) < 4096
        assert WORKFLOW_KEY.format(job.id) not in written and written.count(JOB_KEY.format(job.id)) == 20
        done = queue.finish(job.id, W1, outputs=[])
        assert done.workflow == BIG and queue.get(job.id).workflow == BIG


def test_a_record_with_its_workflow_inline_is_read_and_moved_out(tmp_path) -> None:
    with JobQueue(tmp_path / "q") as queue:
        job, _ = queue.enqueue({"prompt": "-"}, kind="workflow", workflow=BIG)
        record = queue._cache.get(JOB_KEY.format(job.id))
        legacy = {k: v for k, v in record.items() if k != "workflow_stored"} | {"workflow": BIG}
        queue._cache.set(JOB_KEY.format(job.id), legacy)  # as older versions stored it
        queue._cache.delete(WORKFLOW_KEY.format(job.id))
        assert queue.get(job.id).workflow == BIG
        queue.claim(W1, lease_seconds=30)
        assert _record_size(queue, job.id) < 4096 and queue.get(job.id).workflow == BIG


def test_prune_removes_the_workflow_too(tmp_path) -> None:
    with JobQueue(tmp_path / "q") as queue:
        job, _ = queue.enqueue({"prompt": "-"}, kind="workflow", workflow=BIG)
        queue.cancel(job.id)
        assert queue.prune(older_than=float("inf")) == 1
        assert queue._cache.get(WORKFLOW_KEY.format(job.id)) is None
