"""The persistent job queue: every job, its state and its lease, in one diskcache directory.

Safe across threads and processes: each change is one ``Cache.transact()`` (an SQLite ``BEGIN IMMEDIATE``
write transaction), holding record reads and writes only, never network I/O. diskcache has no asyncio;
async callers wrap calls in ``asyncio.to_thread``.

Layout (the keys are defined once, below). Values are plain dicts, ints and bytes, never pickled classes,
so records survive code changes:

    queue            {"bucket": the newest bucket, "chunks": pending chunk numbers in run order, "next_chunk"}
    pending:<n>      a chunk of the run order: up to 256 queued ids, 8 bytes each (``bytes.fromhex(id)``)
    job:<id>         the job record, ``Job.to_dict()``
    bucket:<n>       jobs with seq in [n * 256 + 1, (n + 1) * 256]: a state byte, the id and an owner code
                     each, so listing, counting and filtering read a few small blobs, not every record;
                     the next seq is the newest bucket's first free slot (so no counter is written)
    owners           {owner name: owner code}; codes never change once given
    owned:<c>:<n>    owner code c's job seqs (0: the jobs nobody owns), oldest first, 512 to a chunk: an
                     owner's page and total read that owner's jobs, not the whole index
    idem:<sha256>    {"job_id", "fingerprint"} for an idempotency key, scoped per owner

Lifecycle::

    enqueue ──▶ QUEUED ──claim──▶ RUNNING ──finish──────────────────▶ SUCCEEDED
                 │  ▲                │  │
                 │  └─fail(retry)────┘  ├──fail (no retry, or no attempts left)──▶ FAILED
                 │    requeue           └──cancel, then mark_cancelled ──────────▶ CANCELLED
                 └──cancel (at once) ─────────────────────────────────────────────▶ CANCELLED

A lease (``lease_owner``, ``lease_expires``) says which worker runs a job. Workers renew it; a worker
that finds it expired, or its owner dead (:func:`owner_alive`), may :meth:`JobQueue.take_over` the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache

from comfy.errors import IdempotencyConflict, JobNotFound, QueueError
from comfy.jobs.layout import (
    BUCKET_KEY,
    CODE,
    COUNTS_KEY,
    ID_BYTES,
    IDEMPOTENCY_KEY,
    JOB_KEY,
    MAX_OWNERS,
    OWNED_READY_KEY,
    OWNERS_KEY,
    PRUNED,
    QUEUE_KEY,
    STATE_OF,
    WORKFLOW_KEY,
    Txn,
    bucket_matches,
    find_id,
    is_id,
    load_head,
    owned_page,
    split_heavy,
    with_heavy,
)
from comfy.jobs import grid_records
from comfy.jobs.leases import lease_live
from comfy.jobs.records import FINAL, QUEUED, RUNNING, TAKEN_OVER_NOTE, UPDATABLE_FIELDS, Job, JobPage, JobState

__all__ = ["JobQueue"]


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    """The one place diskcache/SQLite errors become :class:`QueueError`."""
    try:
        yield
    except diskcache.Timeout as exc:
        raise QueueError("The job queue database stayed locked too long; try again.") from exc
    except sqlite3.Error as exc:
        raise QueueError(f"The job queue database failed: {exc}") from exc


@dataclass(frozen=True)
class _Request:
    kind: str
    params: dict[str, Any]
    workflow: dict[str, Any] | None
    idempotency_key: str | None
    owner: str | None
    fingerprint: str
    note: str | None = None


def _request(params: dict[str, Any], kind: str, workflow: dict[str, Any] | None, key: str | None,
             owner: str | None, note: str | None = None) -> _Request:
    if kind not in ("generate", "workflow"):
        raise QueueError(f"Unknown job kind {kind!r}; expected 'generate' or 'workflow'.")
    return _Request(kind, params, workflow, key, owner, _fingerprint(kind, params, workflow, owner) if key else "",
                    note)


def _fingerprint(kind: str, params: dict[str, Any], workflow: dict[str, Any] | None, owner: str | None) -> str:
    """sha256 of the request as canonical JSON: what "the same request" means for an idempotency key."""
    try:
        canonical = json.dumps({"kind": kind, "params": params, "workflow": workflow, "owner": owner},
                               sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise QueueError(f"Job parameters must be plain JSON data: {exc}") from exc
    return hashlib.sha256(canonical.encode()).hexdigest()


def _idempotency_key(owner: str | None, key: str) -> str:
    scoped = json.dumps([owner, key], ensure_ascii=False)
    return IDEMPOTENCY_KEY.format(hashlib.sha256(scoped.encode()).hexdigest())


class JobQueue:
    """Jobs in a diskcache directory, shared by every thread and process that opens it.

    Raises :class:`JobNotFound` for unknown ids, :class:`IdempotencyConflict` when a key is reused for a
    different request, and :class:`QueueError` for a lost lease, a refused operation or a locked database.
    """

    def __init__(self, directory: str | Path, *, now: Callable[[], float] = time.time, max_attempts: int = 3,
                 timeout: float = 60.0) -> None:
        self.directory = Path(directory)
        self.max_attempts = max_attempts
        #: How long a call waits for SQLite's write lock before QueueError (keep it shorter than a lease).
        self.lock_timeout = timeout
        self._now = now
        self._owner_codes: dict[str, int] = {}
        self._owned_tails: dict[int, int] = {}
        with _map_errors():
            # A plain Cache evicts (least recently stored, 1 GB) and would drop jobs: never here. cull_limit=0
            # also skips the expiry scan on every write. WAL + synchronous=NORMAL: a commit survives kill -9.
            self._cache = diskcache.Cache(
                str(self.directory), timeout=timeout, eviction_policy="none", size_limit=2**62, cull_limit=0,
                statistics=False, tag_index=False, sqlite_journal_mode="wal", sqlite_synchronous=1,
                disk_min_file_size=2**24,  # records stay in SQLite, inside the transaction
            )
        if self._cache.get(OWNED_READY_KEY) is None:
            with self._txn() as txn:  # a new queue, or one made before the owners' lists: build them once
                if self._cache.get(OWNED_READY_KEY) is None:
                    txn.build_owned()
                    self._cache.set(OWNED_READY_KEY, True)

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _txn(self) -> Iterator[Txn]:
        with _map_errors(), self._cache.transact():
            txn = Txn(self._cache, self._owned_tails)
            yield txn
            txn.flush()

    # -- enqueue ------------------------------------------------------------------------------------

    def enqueue(self, params: dict[str, Any], *, kind: str = "generate", workflow: dict[str, Any] | None = None,
                idempotency_key: str | None = None, owner: str | None = None,
                note: str | None = None) -> tuple[Job, bool]:
        """Queue a job; returns ``(job, created)``. ``note`` tells the user what was changed on the way in.

        With an ``idempotency_key`` already used by ``owner`` for the same request, returns that job
        (in whatever state) and ``created=False``; for a different request raises :class:`IdempotencyConflict`.
        """
        request = _request(params, kind, workflow, idempotency_key, owner, note)
        return self._enqueue([request])[0]

    def enqueue_many(self, requests: list[dict[str, Any]], *, owner: str | None = None) -> list[Job]:
        """Queue several jobs in one transaction (in order); each request has ``params`` and optionally
        ``kind``, ``workflow``, ``idempotency_key`` and ``note``, with the same rules as :meth:`enqueue`."""
        prepared = [_request(r["params"], r.get("kind", "generate"), r.get("workflow"), r.get("idempotency_key"),
                             owner, r.get("note")) for r in requests]
        return [job for job, _created in self._enqueue(prepared)]

    def _enqueue(self, requests: list[_Request]) -> list[tuple[Job, bool]]:
        codes = {r.owner: self._owner_code(r.owner, create=True) for r in requests}
        now = self._now()
        results = []
        with self._txn() as txn:
            for request in requests:
                results.append(self._enqueue_one(txn, request, codes[request.owner], now))
        return results

    def _enqueue_one(self, txn: Txn, request: _Request, owner_code: int, now: float) -> tuple[Job, bool]:
        idem = _idempotency_key(request.owner, request.idempotency_key) if request.idempotency_key else None
        if idem is not None:
            seen = self._cache.get(idem)
            if seen is not None:
                if seen["fingerprint"] != request.fingerprint:
                    raise IdempotencyConflict(request.idempotency_key or "", seen["job_id"])
                return Job.from_dict(with_heavy(self._cache, txn.record(seen["job_id"]))), False
        seq = txn.next_seq()
        while True:
            job = Job(id=uuid.uuid4().hex[:16], seq=seq, kind=request.kind, params=request.params,
                      workflow=request.workflow, queued_at=now, idempotency_key=request.idempotency_key,
                      owner=request.owner, note=request.note)
            light, heavy = split_heavy(job.to_dict())
            if self._cache.add(JOB_KEY.format(job.id), light):
                break  # else: a 1-in-2**60 id collision; draw again
        if heavy is not None:
            self._cache.set(WORKFLOW_KEY.format(job.id), heavy)
        txn.index(seq, CODE[QUEUED], job.id, owner_code)
        txn.own(owner_code, seq)
        txn.insert_pending(job.id, None)
        if idem is not None:
            self._cache.set(idem, {"job_id": job.id, "fingerprint": request.fingerprint})
        return job, True

    def _owner_code(self, owner: str | None, *, create: bool) -> int | None:
        """The small integer stored per job for ``owner`` (0 for none); given once, in its own transaction."""
        if owner is None:
            return 0
        code = self._owner_codes.get(owner)
        if code is not None:
            return code
        with _map_errors():
            owners = self._cache.get(OWNERS_KEY) or {}
            if owner not in owners and create:
                with self._cache.transact():
                    owners = dict(self._cache.get(OWNERS_KEY) or {})
                    if owner not in owners:
                        if len(owners) >= MAX_OWNERS:
                            raise QueueError(f"The queue cannot tell more than {MAX_OWNERS} owners apart.")
                        owners[owner] = len(owners) + 1
                        self._cache.set(OWNERS_KEY, owners)
        # Cached only once committed: a code is never reassigned after that.
        self._owner_codes.update(owners)
        return owners.get(owner)

    # -- reading ------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job with this id, its workflow included; raises :class:`JobNotFound`."""
        with _map_errors():
            record = self._cache.get(JOB_KEY.format(job_id))
            if record is None:
                raise JobNotFound(job_id)
            return Job.from_dict(with_heavy(self._cache, record))

    def list(self, *, states: Collection[JobState] | None = None, owner: str | None = None, limit: int = 50,
             cursor: int | None = None, unowned: bool = False) -> JobPage:
        """Jobs newest first, optionally only some states, and one owner's (with ``unowned``, only the jobs
        nobody owns; else ``owner=None`` means everyone's); ``cursor`` from the previous page.

        Without an owner: reads the index (a few KiB per 256 jobs) down to the page, the total from the
        running counts. For one owner: that owner's list and the buckets of its jobs. Then only the records
        on the page.
        """
        codes = {CODE[JobState(s).value] for s in states} if states is not None else set(STATE_OF)
        owner_code = 0 if unowned else self._owner_code(owner, create=False) if owner is not None else None
        if (owner is not None and owner_code is None) or not codes:
            return JobPage([], None, 0)
        highest = None if cursor is None else cursor - 1
        found: list[tuple[int, str]] = []
        with _map_errors():
            if owner_code is not None:
                found, total = owned_page(self._cache, owner_code, self._owned_tails, codes, highest, limit)
            else:
                known = self.counts()
                total = sum(known[STATE_OF[code]] for code in codes)
                for number, buf in self._buckets_down():
                    if len(found) > limit:
                        break
                    found.extend(bucket_matches(buf, number, codes, highest, limit + 1 - len(found)))
            page = self._jobs(job_id for _seq, job_id in found[:limit])
            jobs = [job for job in page if CODE[job.state.value] in codes]  # a job may have moved on since
        next_cursor = found[limit - 1][0] if len(found) > limit and limit > 0 else None
        return JobPage(jobs, next_cursor, total)

    def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state: one small read (running counts kept with every transition)."""
        with _map_errors():
            counts = self._cache.get(COUNTS_KEY)
        if counts is None:  # a new queue, or one made before counts were kept: count once
            with self._txn() as txn:
                counts = self._cache.get(COUNTS_KEY) or txn.build_counts()
        return {state: counts.get(state.value, 0) for state in JobState}

    def position(self, job_id: str) -> int | None:
        """0-based place among queued jobs (0 runs next); None when the job is not queued."""
        at = find_id(self._pending(), bytes.fromhex(job_id)) if is_id(job_id) else None
        return None if at is None else at // ID_BYTES

    def pending_ids(self) -> list[str]:
        """Ids of the queued jobs, in the order they will run."""
        pending = self._pending()
        return [pending[at:at + ID_BYTES].hex() for at in range(0, len(pending), ID_BYTES)]

    def expired(self) -> list[Job]:
        """Running jobs whose lease has expired (their worker stopped renewing it)."""
        now = self._now()
        code = {CODE[RUNNING]}
        with _map_errors():
            ids = [job_id for number, buf in self._buckets_down() for _seq, job_id in bucket_matches(buf, number, code)]
            running = [job for job in self._jobs(ids) if job.state is JobState.RUNNING]
        return [job for job in running if job.lease_expires is None or job.lease_expires < now]

    def _pending(self) -> bytes:
        """The whole run order, read in one transaction so that the head and its chunks agree."""
        with self._txn() as txn:
            return txn.pending()

    def _buckets_down(self) -> Iterator[tuple[int, bytes]]:
        head = load_head(self._cache.get(QUEUE_KEY))
        for number in range(head["bucket"], -1, -1):
            buf = self._cache.get(BUCKET_KEY.format(number))
            if buf is not None:
                yield number, buf

    def get_many(self, job_ids: Iterable[str]) -> list[Job]:
        """The jobs of ``job_ids`` still there, in order."""
        with _map_errors():
            return list(self._jobs(job_ids))

    def get_grid(self, grid_id: str) -> dict[str, Any]:
        return grid_records.disk_get(self, grid_id)  # X/Y/Z plot records: comfy.jobs.grid_records

    def delete_grid(self, grid_id: str) -> None:
        grid_records.disk_delete(self, grid_id)

    def grid_ids(self) -> list[str]:
        return grid_records.disk_ids(self)

    def _jobs(self, ids: Iterable[str]) -> Iterator[Job]:
        """The jobs still there (one may be pruned between reading the index and reading it)."""
        for job_id in ids:
            record = self._cache.get(JOB_KEY.format(job_id))
            if record is not None:
                yield Job.from_dict(record)

    # -- transitions --------------------------------------------------------------------------------

    def claim(self, worker_id: str, *, lease_seconds: float) -> Job | None:
        """Take the first queued job (RUNNING, leased to ``worker_id``), or None when none is queued."""
        now = self._now()
        with self._txn() as txn:
            while (job_id := txn.first_pending()) is not None:
                old = self._cache.get(JOB_KEY.format(job_id))
                if old is None or old["state"] != QUEUED:  # a stale entry; never expected
                    txn.remove_pending(job_id)
                    continue
                new = _claimed(old, worker_id, now + lease_seconds, now)
                txn.save(old, new)
                return Job.from_dict(with_heavy(self._cache, new))
        return None

    def renew(self, job_id: str, worker_id: str, *, lease_seconds: float) -> bool:
        """Extend the lease; False when ``worker_id`` no longer holds it (taken over, finished, gone)."""
        now = self._now()
        with self._txn() as txn:
            old = self._cache.get(JOB_KEY.format(job_id))
            if old is None or old["state"] != RUNNING or old["lease_owner"] != worker_id:
                return False
            txn.save(old, {**old, "lease_expires": now + lease_seconds})
        return True

    def update(self, job_id: str, worker_id: str | None = None, **fields: Any) -> Job:
        """Record progress and run details (see ``UPDATABLE_FIELDS``); a final job is returned unchanged.

        Only the small record is rewritten; the job returned carries a workflow only if one was set here.

        Raises :class:`QueueError` for other fields, or when ``worker_id`` no longer holds the lease.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise QueueError(f"update() cannot set {', '.join(sorted(unknown))}; it sets {sorted(UPDATABLE_FIELDS)}.")
        if "progress" in fields:
            fields["progress"] = min(max(float(fields["progress"]), 0.0), 1.0)

        def change(old: dict[str, Any], now: float) -> dict[str, Any]:
            _check_lease(old, worker_id)
            return {**old, **fields}

        return self._change(job_id, change, heavy=False)

    def finish(self, job_id: str, worker_id: str | None, *, outputs: list[dict[str, Any]]) -> Job:
        """Mark the job SUCCEEDED with its outputs; a job already final is returned unchanged."""

        def change(old: dict[str, Any], now: float) -> dict[str, Any]:
            _check_lease(old, worker_id)
            return {**old, **_ENDED, "state": JobState.SUCCEEDED.value, "progress": 1.0, "outputs": outputs,
                    "finished_at": now}

        return self._change(job_id, change)

    def annotate(self, job_id: str, *, outputs: list[dict[str, Any]] | None = None, note: str | None = None) -> Job:
        """Change the ``outputs`` and ``note`` of a FINAL job, for what happens after it ended (an upload's
        object keys, "upload pending: <reason>"). ``None`` leaves a field as it is; ``note=""`` clears it.

        Raises :class:`JobNotFound`, or :class:`QueueError` when the job is not final (its worker owns it).
        """
        with self._txn() as txn:
            old = txn.record(job_id)
            if not JobState(old["state"]).is_final:
                raise QueueError(f"Job {job_id} is {old['state']}; only a finished job can be annotated.")
            new = dict(old)
            if outputs is not None:
                new["outputs"] = outputs
            if note is not None:
                new["note"] = note or None
            if new != old:
                txn.save(old, new)
            return Job.from_dict(with_heavy(self._cache, new))

    def fail(self, job_id: str, worker_id: str | None, *, code: str, message: str, retry: bool = False) -> Job:
        """Record a failure: with ``retry`` and attempts left (and no cancel asked), back to the front of the
        queue; otherwise FAILED with ``error``. A job already final is returned unchanged."""

        def change(old: dict[str, Any], now: float) -> dict[str, Any]:
            _check_lease(old, worker_id)
            if retry and old["attempts"] < self.max_attempts and not old["cancel_requested"]:
                return _requeued(old, message)
            return {**old, **_ENDED, "state": JobState.FAILED.value, "finished_at": now,
                    "error": {"code": code, "message": message}}

        return self._change(job_id, change)

    def requeue(self, job_id: str, worker_id: str, reason: str) -> Job:
        """Put a running job back at the front of the queue (attempts unchanged), e.g. after a take-over when
        nothing was submitted; FAILED (``worker_lost``) when its attempts are used up, CANCELLED if asked."""

        def change(old: dict[str, Any], now: float) -> dict[str, Any]:
            _check_lease(old, worker_id)
            if old["cancel_requested"]:
                return {**old, **_ENDED, "state": JobState.CANCELLED.value, "finished_at": now}
            if old["attempts"] >= self.max_attempts:
                return {**old, **_ENDED, "state": JobState.FAILED.value, "finished_at": now,
                        "error": {"code": "worker_lost", "message": reason}}
            return _requeued(old, reason)

        return self._change(job_id, change)

    def release(self, job_id: str, worker_id: str | None, reason: str, *, keep_handle: bool = False) -> Job:
        """Give a claimed job back, at the front, without counting the attempt: its backend is unreachable,
        so the job waits for it instead of using up its retries. CANCELLED if asked.

        The caller waits with backoff before it claims work for that backend again (the pool probes it), so
        this never spins. With ``keep_handle`` the run's handle stays on the job (``prompt_id``, ``backend``):
        the run may be there, so the next attempt looks for it before it submits anything.
        """

        def change(old: dict[str, Any], now: float) -> dict[str, Any]:
            _check_lease(old, worker_id)
            if old["cancel_requested"]:
                return {**old, **_ENDED, "state": JobState.CANCELLED.value, "finished_at": now}
            kept = {"prompt_id": old["prompt_id"]} if keep_handle else {}
            return {**_requeued(old, reason), **kept, "attempts": max(old["attempts"] - 1, 0)}

        return self._change(job_id, change)

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job at once (it never runs); a running one is flagged ``cancel_requested`` for its
        worker, which stops the backend and calls :meth:`mark_cancelled`. A final job is returned unchanged."""

        def change(old: dict[str, Any], now: float) -> dict[str, Any] | None:
            if old["state"] == QUEUED:
                return {**old, **_ENDED, "state": JobState.CANCELLED.value, "finished_at": now,
                        "cancel_requested": True}
            return None if old["cancel_requested"] else {**old, "cancel_requested": True}

        return self._change(job_id, change)

    def mark_cancelled(self, job_id: str, worker_id: str | None = None) -> Job:
        """The worker stopped a job whose cancel was requested: CANCELLED now."""

        def change(old: dict[str, Any], now: float) -> dict[str, Any]:
            _check_lease(old, worker_id)
            return {**old, **_ENDED, "state": JobState.CANCELLED.value, "finished_at": now, "cancel_requested": True}

        return self._change(job_id, change)

    def move(self, job_id: str, *, to_index: int) -> None:
        """Move a queued job to ``to_index`` in the run order (0 = front, clamped); QueueError if not queued."""
        with self._txn() as txn:
            if txn.record(job_id)["state"] != QUEUED:
                raise QueueError(f"Job {job_id} is not queued, so it cannot be moved.")
            txn.remove_pending(job_id)
            txn.insert_pending(job_id, to_index)

    def take_over(self, job_id: str, worker_id: str, *, lease_seconds: float, force: bool = False) -> Job | None:
        """Take the lease of a running job whose lease expired (any running job with ``force``, for an owner
        known dead). Attempts are not counted; None if another worker holds a live lease or it stopped running."""
        now = self._now()
        with self._txn() as txn:
            old = self._cache.get(JOB_KEY.format(job_id))
            if old is None or old["state"] != RUNNING:
                return None
            if not force and old["lease_owner"] != worker_id and lease_live(old["lease_expires"], now):
                return None
            new = {**old, "lease_owner": worker_id, "lease_expires": now + lease_seconds, "note": TAKEN_OVER_NOTE}
            txn.save(old, new)
            return Job.from_dict(with_heavy(self._cache, new))

    def prune(self, *, older_than: float, batch: int = 256) -> int:
        """Delete final jobs that finished before ``older_than``; returns how many. Never touches live jobs."""
        return len(self.prune_records(older_than=older_than, batch=batch))

    def prune_records(self, *, older_than: float, skip: Collection[str] = (), batch: int = 256) -> list[dict[str, Any]]:
        """Like :meth:`prune`, returning the deleted records (their files are the caller's); ``skip`` is kept."""
        final = {CODE[s.value] for s in FINAL}
        with _map_errors():
            candidates = [job_id for number, buf in self._buckets_down()
                          for _seq, job_id in bucket_matches(buf, number, final) if job_id not in skip]
        deleted: list[dict[str, Any]] = []
        for at in range(0, len(candidates), batch):  # short transactions: writers wait on each
            with self._txn() as txn:
                for job_id in candidates[at:at + batch]:
                    record = self._delete_if_old(txn, job_id, older_than)
                    if record is not None:
                        deleted.append(record)
        return deleted

    def _delete_if_old(self, txn: Txn, job_id: str, older_than: float) -> dict[str, Any] | None:
        record = self._cache.get(JOB_KEY.format(job_id))
        if record is None or not JobState(record["state"]).is_final:
            return None
        if record["finished_at"] is None or record["finished_at"] >= older_than:
            return None
        self._cache.delete(JOB_KEY.format(job_id))
        self._cache.delete(WORKFLOW_KEY.format(job_id))
        txn.index(record["seq"], PRUNED)
        if record["idempotency_key"]:
            idem = _idempotency_key(record["owner"], record["idempotency_key"])
            seen = self._cache.get(idem)
            if seen is not None and seen["job_id"] == job_id:
                self._cache.delete(idem)
        return record

    def _change(self, job_id: str, change: Callable[[dict[str, Any], float], dict[str, Any] | None], *,
                heavy: bool = True) -> Job:
        """Apply ``change`` to a live job's record in one transaction; final jobs are returned unchanged.

        Without ``heavy`` the job returned has no workflow unless ``change`` set one (progress stays cheap).
        """
        now = self._now()
        with self._txn() as txn:
            old = txn.record(job_id)
            new = None if JobState(old["state"]).is_final else change(old, now)
            if new is not None:
                txn.save(old, new)
            result = old if new is None else new
            return Job.from_dict(with_heavy(self._cache, result) if heavy else result)

    def claim_matching(self, worker_id: str, *, lease_seconds: float, accept: Callable[[Job], bool],
                       scan: int = 64) -> Job | None:
        """Like :meth:`claim`, but take the first of the next ``scan`` queued jobs that ``accept`` takes (a
        backend pool skips a job no free backend can run). ``accept`` runs inside the transaction: no I/O."""
        now = self._now()
        with self._txn() as txn:
            pending = txn.pending()
            for at in range(0, min(len(pending), scan * ID_BYTES), ID_BYTES):
                old = self._cache.get(JOB_KEY.format(pending[at:at + ID_BYTES].hex()))
                if old is None or old["state"] != QUEUED or not accept(Job.from_dict(with_heavy(self._cache, old))):
                    continue
                new = _claimed(old, worker_id, now + lease_seconds, now)
                txn.save(old, new)
                return Job.from_dict(with_heavy(self._cache, new))
        return None


#: What every end state clears: a lease only exists while a job runs.
_ENDED = {"lease_owner": None, "lease_expires": None}


def _requeued(old: dict[str, Any], reason: str) -> dict[str, Any]:
    return {**old, **_ENDED, "state": QUEUED, "prompt_id": None, "progress": 0.0, "node": None, "step": None,
            "steps": None, "note": reason}


def _check_lease(record: dict[str, Any], worker_id: str | None) -> None:
    if worker_id is not None and (record["state"] != RUNNING or record["lease_owner"] != worker_id):
        raise QueueError(f"Job {record['id']} is no longer leased by {worker_id} (lease lost).")


def _claimed(old: dict[str, Any], worker_id: str, lease_expires: float, now: float) -> dict[str, Any]:
    """The record of a queued job as ``worker_id`` takes it: running, one attempt more, leased."""
    return {**old, "state": RUNNING, "attempts": old["attempts"] + 1, "lease_owner": worker_id,
            "lease_expires": lease_expires, "started_at": old["started_at"] if old["started_at"] is not None else now}
