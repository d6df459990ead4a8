"""The upload backlog: which finished jobs still have objects to send to the bucket, in a diskcache folder of its own.

Short transactions on disk, no network. Records are plain dicts (they survive code changes), each leased
(owner id, expiry: see :mod:`comfy.jobs.leases`) by the uploader that works on it, so two processes sharing
a data folder never upload one job at once. Eviction is off: a plain ``diskcache.Cache`` drops entries past
1 GB, which would lose pending uploads.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import diskcache

from comfy.errors import StorageError
from comfy.jobs.leases import held_elsewhere
from comfy.jobs.records import Job

__all__ = ["OFF", "UploadBacklog", "UploadStatus"]


# Backlog keys (defined once). Values are plain dicts, so records survive code changes.
RECORD_KEY = "upload:{}"  # one job: state, its job snapshot, objects done, attempts, reason, lease
PENDING_KEY = "pending"  # {job_id: when it is due}: the backlog's order
STATE_KEY = "state"  # {"enabled_at": when S3 was first turned on for this data folder}

_BACKLOG_ERRORS = (diskcache.Timeout, sqlite3.Error, OSError)


@dataclass(frozen=True)
class UploadStatus:
    """Where a job's upload is.

    ``uploaded``: every object is in ``bucket`` (``keys``: the images in output order; ``metadata_key``).
    ``pending``: saved locally, waiting to upload; ``reason`` says why the last attempt failed (None before one).
    ``off``: nothing to upload: S3 is off, or the job did not succeed, or it finished before S3 was turned on.
    """

    state: Literal["uploaded", "pending", "off"]
    keys: tuple[str, ...] = ()
    metadata_key: str | None = None
    bucket: str | None = None
    reason: str | None = None
    attempts: int = 0
    next_attempt_at: float | None = None
    uploaded_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "keys": list(self.keys)}


OFF = UploadStatus("off")


class UploadBacklog:
    """Upload records in their own diskcache directory, safe across threads and processes.

    Raises :class:`StorageError` when the directory cannot be opened or stays locked.
    """

    def __init__(self, directory: str | Path, *, now: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._now = now
        try:
            # Eviction off: a plain Cache drops entries past 1 GB, which here would lose pending uploads.
            self._cache = diskcache.Cache(str(self.directory), eviction_policy="none", size_limit=2**62,
                                          cull_limit=0, statistics=False, tag_index=False,
                                          sqlite_journal_mode="wal", sqlite_synchronous=1)
            self._cache.add(STATE_KEY, {"enabled_at": now()})
        except _BACKLOG_ERRORS as exc:
            raise StorageError(f"Cannot open the upload backlog in {self.directory}: {exc}.") from exc

    def close(self) -> None:
        self._cache.close()

    @contextlib.contextmanager
    def _txn(self) -> Iterator[None]:
        try:
            with self._cache.transact():
                yield
        except _BACKLOG_ERRORS as exc:
            raise StorageError(f"The upload backlog failed ({exc}); it is retried.") from exc

    @property
    def enabled_at(self) -> float:
        return (self._cache.get(STATE_KEY) or {}).get("enabled_at", 0.0)

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._cache.get(RECORD_KEY.format(job_id))

    def pending(self) -> dict[str, float]:
        return dict(self._cache.get(PENDING_KEY) or {})

    def create(self, job: Job, reason: str | None) -> bool:
        """A pending record for a succeeded job; False (and nothing changes) when the job is already known."""
        now = self._now()
        with self._txn():
            key = RECORD_KEY.format(job.id)
            if self._cache.get(key) is not None:
                return False
            self._cache.set(key, {
                "job_id": job.id, "state": "pending", "scheduled_at": now, "attempts": 0, "tries": 0,
                "reason": reason, "due": now, "lease": None, "done": {}, "job": job.to_dict(),
            })
            pending = self._cache.get(PENDING_KEY) or {}
            pending[job.id] = now
            self._cache.set(PENDING_KEY, pending)
        return True

    def claim(self, owner: str, limit: int, *, skip: set[str], lease_seconds: float
              ) -> tuple[list[dict[str, Any]], float | None]:
        """Lease up to ``limit`` due records (oldest due first); also returns when the next one falls due."""
        now = self._now()
        claimed: list[dict[str, Any]] = []
        next_due = None
        with self._txn():
            pending = self._cache.get(PENDING_KEY) or {}
            stale = []
            for job_id, due in sorted(pending.items(), key=lambda item: item[1]):
                if job_id in skip:
                    continue
                if due > now or len(claimed) >= limit:
                    next_due = due if next_due is None else min(next_due, due)
                    continue
                record = self._cache.get(RECORD_KEY.format(job_id))
                if record is None or record["state"] == "uploaded":
                    stale.append(job_id)
                elif not held_elsewhere(*(record["lease"] or (None, None)), owner, now):
                    record = {**record, "lease": [owner, now + lease_seconds], "tries": record["tries"] + 1}
                    self._cache.set(RECORD_KEY.format(job_id), record)
                    claimed.append(record)
            if stale:
                for job_id in stale:
                    del pending[job_id]
                self._cache.set(PENDING_KEY, pending)
        return claimed, next_due

    def mark_done(self, job_id: str, name: str, info: dict[str, Any], *, owner: str, lease_seconds: float) -> None:
        """S3 acknowledged one object: it is never sent again. Extends the lease."""
        with self._txn():
            record = self.get(job_id)
            if record is not None and record["state"] == "pending":
                self._cache.set(RECORD_KEY.format(job_id), {
                    **record, "done": {**record["done"], name: info}, "lease": [owner, self._now() + lease_seconds]})

    def mark_uploaded(self, claimed: dict[str, Any], *, bucket: str, keys: list[str], metadata_key: str) -> None:
        """Every object is in the bucket: keep the keys, drop the job snapshot, leave the pending order."""
        job_id = claimed["job_id"]
        with self._txn():
            self._cache.set(RECORD_KEY.format(job_id), {
                "job_id": job_id, "state": "uploaded", "scheduled_at": claimed["scheduled_at"],
                "attempts": claimed["attempts"], "bucket": bucket, "keys": keys, "metadata_key": metadata_key,
                "uploaded_at": self._now(),
            })
            pending = self._cache.get(PENDING_KEY) or {}
            if pending.pop(job_id, None) is not None:
                self._cache.set(PENDING_KEY, pending)

    def mark_failed(self, job_id: str, reason: str, due: float, *, hold_others: bool, skip: set[str],
                    new_reason: bool) -> list[str]:
        """Count a failed attempt and set when to try again. With ``hold_others`` (S3 itself failed) every
        pending job waits until ``due`` too, and, when the reason is new, takes it as its own. Returns the
        jobs whose reason changed (their note should say so)."""
        changed = []
        with self._txn():
            pending = self._cache.get(PENDING_KEY) or {}
            record = self.get(job_id)
            if record is not None and record["state"] == "pending":
                if record["reason"] != reason:
                    changed.append(job_id)
                self._cache.set(RECORD_KEY.format(job_id), {**record, "attempts": record["attempts"] + 1,
                                                            "lease": None, "reason": reason, "due": due})
                pending[job_id] = due
            others = [j for j in pending if j != job_id and j not in skip] if hold_others else []
            for other in others:
                pending[other] = max(pending[other], due)
            for other in others if new_reason else []:
                record = self.get(other)
                if record is not None and record["state"] == "pending" and record["reason"] != reason:
                    self._cache.set(RECORD_KEY.format(other), {**record, "reason": reason})
                    changed.append(other)
            self._cache.set(PENDING_KEY, pending)
        return changed

    def release(self, job_ids: set[str], owner: str) -> None:
        """Give up leases held by ``owner`` (on stop), so the next start takes the jobs at once."""
        with self._txn():
            for job_id in job_ids:
                record = self.get(job_id)
                if record is not None and record.get("lease") and record["lease"][0] == owner:
                    self._cache.set(RECORD_KEY.format(job_id), {**record, "lease": None})

    def forget(self, job_ids: set[str]) -> int:
        """Drop the finished (uploaded) records of these jobs, for retention; pending ones stay. Returns how many."""
        forgotten = 0
        with self._txn():
            for job_id in job_ids:
                record = self.get(job_id)
                if record is not None and record["state"] == "uploaded":
                    self._cache.delete(RECORD_KEY.format(job_id))
                    forgotten += 1
        return forgotten
