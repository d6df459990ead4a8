"""Retention: old finished jobs leave with their files (``python -m comfy prune``, ``STUDIO_RETENTION_DAYS``).

A job goes with everything that is only its own: its record, its output folder, its upload backlog record,
and kept input images no live job uses and nothing used since the cut-off (an input is shared by content
between jobs, and is touched each time a job keeps it). Queued and running jobs are never touched, nor a
job whose upload to S3 is still pending (its local files are the only copy). Records go first, in short
transactions; a crash before the files are removed leaves only files, which the next prune sweeps.
An X/Y/Z plot's record and its image (``grid_<id>``) stay while any of its cells does, and go with the last.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from comfy.errors import ComfyError
from comfy.jobs.queue import JobQueue
from comfy.jobs.records import JobState
from comfy.storage.local import LocalStore

if TYPE_CHECKING:
    from comfy.storage.backlog import UploadBacklog

__all__ = ["PruneReport", "prune"]

DAY = 86_400.0


@dataclass(frozen=True)
class PruneReport:
    """What one prune freed."""

    jobs: int = 0
    files: int = 0
    bytes: int = 0
    inputs: int = 0
    upload_records: int = 0
    #: Old jobs kept because their upload to S3 is still pending.
    kept_pending_upload: int = 0
    #: X/Y/Z plots removed with their last cell.
    grids: int = 0

    def sentence(self) -> str:
        """
        >>> PruneReport(jobs=2, files=3, bytes=2_500_000, inputs=1).sentence()
        'Removed 2 job(s), 3 output file(s) and 1 kept input(s): 2.5 MB freed.'
        """
        text = (f"Removed {self.jobs} job(s), {self.files} output file(s) and {self.inputs} kept input(s): "
                f"{self.bytes / 1e6:.1f} MB freed.")
        if self.grids:
            text += f" Removed {self.grids} grid(s) whose cells were all gone."
        if self.kept_pending_upload:
            text += f" Kept {self.kept_pending_upload} old job(s) whose upload to S3 is still pending."
        return text


class Copies(Protocol):
    """Copies of a job's outputs kept elsewhere (the page's, in Gradio's cache): removed with the job."""

    def remove(self, job_id: str) -> None: ...

    def jobs(self) -> list[str]: ...


def prune(queue: JobQueue, store: LocalStore, *, older_than: float, backlog: UploadBacklog | None = None,
          copies: Sequence[Copies] = ()) -> PruneReport:
    """Remove final jobs that finished before ``older_than`` (epoch seconds) and their files."""
    pending = set(backlog.pending()) if backlog is not None else set()
    records = queue.prune_records(older_than=older_than, skip=pending)
    files = size = 0
    for record in records:
        for kept in copies:  # first: a hard-linked copy would keep the output's bytes on disk
            kept.remove(record["id"])
        removed, freed = _remove_tree(store.outputs_dir / record["id"])
        files, size = files + removed, size + freed
    for kept in copies:  # copies of jobs already gone (pruned before, or deleted by hand)
        for job_id in kept.jobs():
            if not _exists(queue, job_id):
                kept.remove(job_id)
    grids, live_grids, removed, freed = _prune_grids(queue, store)
    files, size = files + removed, size + freed
    # Output folders whose record is gone (a crash between the two): swept once old enough.
    for folder in _children(store.outputs_dir):
        if folder.name.startswith("grid_") and folder.name[5:] in live_grids:
            continue  # a plot's image lives as long as its record
        if folder.is_dir() and _older(folder, older_than) and not _exists(queue, folder.name):
            removed, freed = _remove_tree(folder)
            files, size = files + removed, size + freed
    inputs, freed = _prune_inputs(queue, store, older_than)
    forgotten = backlog.forget({r["id"] for r in records}) if backlog is not None and records else 0
    kept = _count_old_pending(queue, pending, older_than)
    return PruneReport(jobs=len(records), files=files, bytes=size + freed, inputs=inputs, upload_records=forgotten,
                       kept_pending_upload=kept, grids=grids)


def _prune_grids(queue: JobQueue, store: LocalStore) -> tuple[int, set[str], int, int]:
    """Plots whose every cell is gone leave with their image: (removed, the ids kept, files, bytes)."""
    live: set[str] = set()
    removed = files = size = 0
    for grid_id in queue.grid_ids():
        try:
            record = queue.get_grid(grid_id)
        except ComfyError:  # GridNotFound: only its id was left
            record = {"job_ids": []}
        if any(_exists(queue, job_id) for job_id in record["job_ids"]):
            live.add(grid_id)
            continue
        queue.delete_grid(grid_id)
        gone, freed = _remove_tree(store.outputs_dir / f"grid_{grid_id}")
        removed, files, size = removed + 1, files + gone, size + freed
    return removed, live, files, size


def _prune_inputs(queue: JobQueue, store: LocalStore, older_than: float) -> tuple[int, int]:
    live = [job for state in (JobState.QUEUED, JobState.RUNNING)
            for job in queue.list(states=[state], limit=100_000).jobs]
    used = {Path(str(job.params[name])).name for job in live for name in ("init_image", "mask")
            if job.params.get(name)}
    used |= {Path(str(path)).name for job in live for path in (job.params.get("images") or {}).values()}
    removed = freed = 0
    for path in _children(store.inputs_dir):
        if path.is_file() and path.name not in used and _older(path, older_than):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            removed, freed = removed + 1, freed + size
    return removed, freed


def _count_old_pending(queue: JobQueue, pending: set[str], older_than: float) -> int:
    count = 0
    for job_id in pending:
        try:
            job = queue.get(job_id)
        except ComfyError:  # gone meanwhile
            continue
        count += job.finished_at is not None and job.finished_at < older_than
    return count


def _exists(queue: JobQueue, job_id: str) -> bool:
    try:
        queue.get(job_id)
    except ComfyError:  # JobNotFound, or a name that is no job id
        return False
    return True


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []


def _older(path: Path, older_than: float) -> bool:
    try:
        return path.stat().st_mtime < older_than
    except FileNotFoundError:
        return False


def _remove_tree(folder: Path) -> tuple[int, int]:
    """Delete a folder; (files, bytes freed): a file with another link frees nothing yet."""
    files = size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            try:
                stat = (Path(root) / name).stat()
                size += stat.st_size if stat.st_nlink <= 1 else 0
                files += 1
            except FileNotFoundError:
                pass
    shutil.rmtree(folder, ignore_errors=True)
    return files, size
