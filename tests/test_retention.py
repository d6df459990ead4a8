"""Retention: old finished jobs leave together with their files and backlog records; live jobs never do."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from comfy import Studio
from comfy.errors import JobNotFound
from comfy.storage.backlog import UploadBacklog
from comfy.storage.retention import prune
from tests.conftest import make_settings
from tests.test_input_images import photo

NOWHERE = "http://127.0.0.1:9"
LONG_AGO = time.time() - 90 * 86_400


def _finished(studio: Studio, prompt: str, image: bytes) -> tuple[str, Path, Path]:
    """A succeeded job with an output file and a kept input; returns (id, output folder, input file)."""
    kept = studio.files.save_input(image)
    job, _ = studio.store.queue.enqueue({"prompt": prompt, "init_image": kept.name})
    claimed = studio.store.queue.claim("w1", lease_seconds=30)
    assert claimed is not None and claimed.id == job.id
    stored = studio.files.save_output(job.id, 0, photo(8, 8), metadata={"params": {}})
    studio.store.queue.finish(job.id, "w1", outputs=[stored.to_dict()])
    os.utime(kept, (LONG_AGO, LONG_AGO))
    return job.id, Path(stored.path).parent, kept


async def test_prune_removes_a_job_with_its_files_and_backlog_record_and_never_a_live_job(tmp_path) -> None:
    studio = Studio(make_settings(tmp_path, NOWHERE))
    try:
        done, folder, done_input = _finished(studio, "old", photo(16, 16))
        running, _ = studio.store.queue.enqueue({"prompt": "running"})
        assert studio.store.queue.claim("w1", lease_seconds=30).id == running.id
        live_input = studio.files.save_input(photo(24, 24))
        os.utime(live_input, (LONG_AGO, LONG_AGO))
        queued, _ = studio.store.queue.enqueue({"prompt": "waiting", "init_image": live_input.name})
        backlog = UploadBacklog(tmp_path / "uploads")
        backlog.create(studio.store.queue.get(done), None)
        backlog.mark_uploaded(backlog.get(done), bucket="b", keys=["k"], metadata_key="m")

        report = prune(studio.store.queue, studio.files, older_than=time.time() + 1, backlog=backlog)

        assert (report.jobs, report.files, report.inputs, report.upload_records) == (1, 1, 1, 1)
        assert report.bytes > 0 and "Removed 1 job(s)" in report.sentence()
        with pytest.raises(JobNotFound):
            studio.store.queue.get(done)
        assert not folder.exists() and not done_input.exists() and backlog.get(done) is None
        assert studio.store.queue.get(running.id).state.value == "running"
        assert studio.store.queue.get(queued.id).state.value == "queued" and live_input.exists()
        backlog.close()
    finally:
        await studio.aclose()


async def test_a_job_whose_upload_is_pending_is_kept(tmp_path) -> None:
    studio = Studio(make_settings(tmp_path, NOWHERE))
    try:
        job_id, folder, _ = _finished(studio, "not in S3 yet", photo(16, 16))
        backlog = UploadBacklog(tmp_path / "uploads")
        backlog.create(studio.store.queue.get(job_id), "the bucket does not answer")
        report = prune(studio.store.queue, studio.files, older_than=time.time() + 1, backlog=backlog)
        assert report.jobs == 0 and report.kept_pending_upload == 1 and "still pending" in report.sentence()
        assert studio.store.queue.get(job_id) and folder.exists()
        backlog.close()
    finally:
        await studio.aclose()


async def test_studio_retention_days_prunes_in_the_background(tmp_path) -> None:
    studio = Studio(make_settings(tmp_path, NOWHERE, retention_days=0.5 / 86_400))  # half a second
    try:
        job_id, folder, _ = _finished(studio, "soon gone", photo(16, 16))
        await asyncio.sleep(0.6)
        await studio.start(worker=False)
        for _ in range(100):
            if not folder.exists():
                break
            await asyncio.sleep(0.05)
        with pytest.raises(JobNotFound):
            studio.store.queue.get(job_id)
        assert not folder.exists()
    finally:
        await studio.aclose()


def test_retention_is_off_by_default(tmp_path) -> None:
    assert make_settings(tmp_path, NOWHERE).retention_days == 0


async def test_the_pages_copies_leave_with_their_job_and_only_freed_bytes_are_counted(tmp_path) -> None:
    from ui.files import PageCopies

    studio = Studio(make_settings(tmp_path, NOWHERE))
    try:
        copies = PageCopies(tmp_path / "gradio-cache", "a-secret")
        done, folder, kept_input = _finished(studio, "old", photo(16, 16))
        input_size = kept_input.stat().st_size
        output = next(folder.iterdir())
        copy = Path(copies.copy(done, str(output)))  # a hard link: the bytes stay while it does
        gone = copies.folder("fedcba9876543210")  # a copy left by a job pruned before
        gone.mkdir(parents=True)

        alone = prune(studio.store.queue, studio.files, older_than=time.time() + 1)  # not told of the copies
        assert alone.jobs == 1 and alone.bytes == input_size  # the linked output freed nothing: not counted
        assert copy.exists()

        done, folder, kept_input = _finished(studio, "old too", photo(16, 16))
        freed = kept_input.stat().st_size + next(folder.iterdir()).stat().st_size
        copy = Path(copies.copy(done, str(next(folder.iterdir()))))
        report = prune(studio.store.queue, studio.files, older_than=time.time() + 1, copies=[copies])
        assert report.jobs == 1 and report.bytes == freed
        assert not copy.parent.exists() and not gone.exists() and copies.jobs() == []
    finally:
        await studio.aclose()
