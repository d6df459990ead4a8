"""The job queue in Redis, for several replicas and workers on several machines (``REDIS_URL``).

Same records (:class:`~comfy.jobs.records.Job`), same states and the same rules as the diskcache
:class:`~comfy.jobs.queue.JobQueue`; tests/test_store_contract.py runs one set of promises against both.
Every transition is one Lua function (:mod:`comfy.jobs.redis_scripts`), so two workers never claim one job
and a crash never leaves a record and its indexes disagreeing; calls made together by several tasks go
as one ``FCALL`` (:mod:`comfy.jobs.redis_batch`). The keys, all under ``REDIS_PREFIX``, are
listed once in :data:`comfy.jobs.redis_scripts.KEYS`.

Times come from this process's clock (``now``), as with diskcache, so the machines' clocks should agree
(NTP): a lease is compared with the clock of the worker that looks at it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from comfy.errors import IdempotencyConflict, JobNotFound, QueueError, QueueUnavailable
from comfy.jobs import grid_records
from comfy.jobs.leases import held_elsewhere
from comfy.jobs.queue import _request, _Request  # one definition of a valid request and its fingerprint
from comfy.jobs.records import RUNNING, TAKEN_OVER_NOTE, UPDATABLE_FIELDS, Job, JobPage, JobState
from comfy.jobs.redis_batch import ScriptBatcher
from comfy.jobs.redis_scripts import KEYS
from comfy.jobs.redis_wire import use_hiredis_packing

__all__ = ["RedisStore", "map_redis_errors"]

log = logging.getLogger(__name__)

_STATES = [state.value for state in JobState]


@contextlib.contextmanager
def map_redis_errors() -> Iterator[None]:
    """The one place Redis errors become :class:`QueueError` (the message never holds the URL's password)."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise QueueUnavailable(f"The job queue's Redis (REDIS_URL) could not be reached; check that it runs: {exc}") from exc
    except redis.exceptions.RedisError as exc:
        raise QueueError(f"The job queue's Redis refused an operation: {exc}") from exc


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)  # one, not one per call
_CONSTANTS = {None: "null", True: "true", False: "false"}
_encode_str = json.encoder.encode_basestring  # what _ENCODER does with a str (ensure_ascii=False), minus the call


def _enc(value: Any) -> str:
    """A value as the JSON text the scripts store and compare (the same text for the same value)."""
    if value is None or value is True or value is False:  # most fields of a new job: skip the encoder
        return _CONSTANTS[value]
    kind = type(value)
    if kind is str:
        return _encode_str(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)  # as the encoder writes it
    try:
        return _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise QueueError(f"Job parameters must be plain JSON data: {exc}") from exc


#: What a new job's record holds in the fields no request sets, as "name\0json\0" (see the enqueue script).
_ASKED = ("id", "seq", "kind", "params", "workflow", "queued_at", "idempotency_key", "owner", "note")
_NEW_DEFAULTS = "".join(f"{name}\0{_enc(value)}\0" for name, value
                        in Job(id="", seq=0, kind="generate", params={}).to_dict().items() if name not in _ASKED)


def _record(stored: str | dict[str, str]) -> dict[str, Any]:
    """A record from a script's JSON object, or from HGETALL (``_`` fields are the store's own, not JSON)."""
    if isinstance(stored, str):
        return json.loads(stored)
    return {name: json.loads(text) for name, text in stored.items() if not name.startswith("_")}


def _idem(owner: str | None, key: str) -> str:
    return hashlib.sha256(json.dumps([owner, key], ensure_ascii=False).encode()).hexdigest()


#: Seconds a Redis call may wait for its answer (each of its tries): a call answers in milliseconds, and
#: one that hangs longer is a partition, to be said (QueueUnavailable) rather than waited out for ever.
SOCKET_TIMEOUT = 5.0


class RedisStore:
    """Jobs in Redis under ``prefix``; the async :class:`~comfy.jobs.store.JobStore` contract.

    Raises :class:`JobNotFound`, :class:`IdempotencyConflict` and :class:`QueueError` as JobQueue does.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "studio", now: Callable[[], float] = time.time,
                 max_attempts: int = 3, owns_client: bool = True) -> None:
        self.client = client
        self.prefix = prefix
        self.max_attempts = max_attempts
        self._now = now
        self._owns_client = owns_client
        self._batcher = ScriptBatcher(client)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisStore:
        """A store on its own connection pool to ``url`` (redis://, rediss:// for TLS, unix://)."""
        # A blip (a failover, a dropped socket) is retried for about a second; an outage is said at once.
        # A partition that drops packets silently ends in a timeout too (a call never hangs the lease keeper).
        client = aioredis.Redis.from_url(url, decode_responses=True, health_check_interval=30, socket_connect_timeout=5,
                                         socket_timeout=SOCKET_TIMEOUT,
                                         retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
        return cls(use_hiredis_packing(client), **kwargs)

    def key(self, name: str, *parts: str) -> str:
        """A key or channel of :data:`KEYS` under this prefix: ``key("job", id)``."""
        return self.prefix + KEYS[name] + ":".join(parts)

    async def save_grid(self, record: dict[str, Any]) -> None:
        await grid_records.redis_save(self, record)

    async def get_grid(self, grid_id: str) -> dict[str, Any]:
        return await grid_records.redis_get(self, grid_id)

    async def delete_grid(self, grid_id: str) -> None:
        await grid_records.redis_delete(self, grid_id)

    async def grid_ids(self) -> list[str]:
        return await grid_records.redis_ids(self)

    async def get_many(self, job_ids: list[str]) -> list[Job]:
        """The jobs of ``job_ids`` still there, in order, in one round trip."""
        with map_redis_errors():
            return await self._jobs(job_ids)

    async def close(self) -> None:
        await self._batcher.aclose()
        if self._owns_client:
            await self.client.aclose()

    async def _run(self, script: str, *args: str) -> list[Any]:
        with map_redis_errors():
            return await self._batcher.call(script, [self.prefix, *args])

    # -- enqueue ------------------------------------------------------------------------------------

    async def enqueue(self, params: dict[str, Any], *, kind: str = "generate", workflow: dict[str, Any] | None = None,
                      idempotency_key: str | None = None, owner: str | None = None,
                      note: str | None = None) -> tuple[Job, bool]:
        return (await self._enqueue([_request(params, kind, workflow, idempotency_key, owner, note)]))[0]

    async def enqueue_many(self, requests: list[dict[str, Any]], *, owner: str | None = None) -> list[Job]:
        prepared = [_request(r["params"], r.get("kind", "generate"), r.get("workflow"), r.get("idempotency_key"),
                             owner, r.get("note")) for r in requests]
        return [job for job, _created in await self._enqueue(prepared)]

    async def _enqueue(self, requests: list[_Request]) -> list[tuple[Job, bool]]:
        if not requests:
            return []
        now = self._now()
        for _draw in range(8):
            ids, args = [], []
            for request in requests:
                job_id = os.urandom(8).hex()
                fields = (f"id\0{_encode_str(job_id)}\0kind\0{_enc(request.kind)}\0params\0{_enc(request.params)}\0"
                          f"workflow\0{_enc(request.workflow)}\0queued_at\0{_enc(now)}\0"
                          f"idempotency_key\0{_enc(request.idempotency_key)}\0owner\0{_enc(request.owner)}\0"
                          f"note\0{_enc(request.note)}\0{_NEW_DEFAULTS}")
                key = _idem(request.owner, request.idempotency_key) if request.idempotency_key else ""
                args += [job_id, key, request.fingerprint, fields]
                ids.append(job_id)
            reply = await self._run("enqueue", *args)
            if reply[0] == "conflict":
                raise IdempotencyConflict(requests[reply[1] - 1].idempotency_key or "", reply[2])
            if reply[0] == "changed":
                continue  # a 1-in-2**64 id collision: draw again
            return [(Job(id=job_id, seq=int(entry[2]), kind=request.kind, params=request.params,
                         workflow=request.workflow, queued_at=now, idempotency_key=request.idempotency_key,
                         owner=request.owner, note=request.note), True) if entry[0] == "new"
                    else (Job.from_dict(_record(entry[2])), False)
                    for job_id, request, entry in zip(ids, requests, reply[1:])]
        raise QueueError("Could not draw a free job id; try again.")

    # -- reading ------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        with map_redis_errors():
            flat = await self.client.hgetall(self.key("job", job_id))
        if not flat:
            raise JobNotFound(job_id)
        return Job.from_dict(_record(flat))

    async def list(self, *, states: Collection[JobState] | None = None, owner: str | None = None, limit: int = 50,
                   cursor: int | None = None, unowned: bool = False) -> JobPage:
        """Newest first, as :meth:`JobQueue.list`; one script reads the page and its total at one instant."""
        wanted = _STATES if states is None else sorted({JobState(s).value for s in states})
        if not wanted:
            return JobPage([], None, 0)
        indexes = [self.key("unowned", state) if unowned else self.key("owner", state, owner) if owner is not None
                   else self.key("state", state) for state in wanted]
        highest = "+inf" if cursor is None else f"({int(cursor)}"
        reply = await self._run("list", highest, str(max(limit, 0)), *indexes)
        records = [_record(flat) for flat in reply[3:]]
        if not all(records):  # indexed, but its record is gone: a Redis that evicts keys (run it with noeviction)
            log.warning("Redis lost %d job record(s) its indexes still name; set maxmemory-policy noeviction",
                        records.count({}))
        jobs = [Job.from_dict(record) for record in records if record]
        return JobPage(jobs, int(reply[2]) if reply[2] else None, int(reply[1]))

    async def counts(self) -> dict[JobState, int]:
        """How many jobs are in each state: the sizes of the state indexes, read in one MULTI."""
        with map_redis_errors():
            async with self.client.pipeline(transaction=True) as pipe:
                for state in _STATES:
                    pipe.zcard(self.key("state", state))
                sizes = await pipe.execute()
        return {JobState(state): int(size) for state, size in zip(_STATES, sizes)}

    async def position(self, job_id: str) -> int | None:
        with map_redis_errors():
            return await self.client.lpos(self.key("pending"), job_id)

    async def pending_ids(self) -> list[str]:
        with map_redis_errors():
            return await self.client.lrange(self.key("pending"), 0, -1)

    async def expired(self) -> list[Job]:
        """Running jobs whose lease has expired, from the lease index (no scan of every job)."""
        now = self._now()
        with map_redis_errors():
            ids = await self.client.zrangebyscore(self.key("leases"), "-inf", f"({now!r}")
            jobs = await self._jobs(ids)
        return [job for job in jobs if job.state is JobState.RUNNING
                and (job.lease_expires is None or job.lease_expires < now)]

    async def _jobs(self, ids: list[str]) -> list[Job]:
        """The records of ``ids`` still there, in one round trip."""
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.key("job", job_id))
            records = await pipe.execute()
        return [Job.from_dict(_record(flat)) for flat in records if flat]

    # -- claims and leases ----------------------------------------------------------------------------

    async def claim(self, worker_id: str, *, lease_seconds: float) -> Job | None:
        """Take the first queued job (RUNNING, leased to ``worker_id``), or None when none is queued."""
        now = self._now()
        reply = await self._run("claim", _enc(worker_id), _enc(now + lease_seconds), _enc(now))
        return Job.from_dict(_record(reply[1])) if reply[0] == "ok" else None

    async def claim_matching(self, worker_id: str, *, lease_seconds: float, accept: Callable[[Job], bool],
                             scan: int = 64) -> Job | None:
        """Like :meth:`claim`, for the first of the next ``scan`` queued jobs that ``accept`` takes.

        ``accept`` runs here, between reading the candidates and claiming one; the claim itself checks the
        job is still queued, so a job another worker took meanwhile is skipped, never claimed twice.
        """
        with map_redis_errors():
            candidates = await self._jobs(await self.client.lrange(self.key("pending"), 0, max(scan, 1) - 1))
        for job in candidates:
            if job.state is not JobState.QUEUED or not accept(job):
                continue
            now = self._now()
            reply = await self._run("claim_id", _enc(worker_id), _enc(now + lease_seconds), _enc(now), job.id)
            if reply[0] == "ok":
                return Job.from_dict(_record(reply[1]))
        return None

    async def renew(self, job_id: str, worker_id: str, *, lease_seconds: float) -> bool:
        """Extend the lease; False when ``worker_id`` no longer holds it (taken over, finished, gone)."""
        reply = await self._run("renew", job_id, _enc(worker_id), _enc(self._now() + lease_seconds))
        return reply[0] == "ok"

    async def take_over(self, job_id: str, worker_id: str, *, lease_seconds: float,
                        force: bool = False) -> Job | None:
        """As :meth:`JobQueue.take_over`. Whether the holder lives is asked here (it may be on this host), then
        the script takes the lease only if it is still the one looked at; else look again."""
        for _look in range(8):
            now = self._now()
            with map_redis_errors():
                raw = await self.client.hgetall(self.key("job", job_id))
            if not raw or json.loads(raw["state"]) != RUNNING:
                return None
            if not force and held_elsewhere(json.loads(raw["lease_owner"]), json.loads(raw["lease_expires"]),
                                            worker_id, now):
                return None
            reply = await self._run("take_over", job_id, _enc(worker_id), _enc(now + lease_seconds),
                                    raw["lease_owner"], raw["lease_expires"], "1" if force else "0",
                                    _enc(TAKEN_OVER_NOTE))
            if reply[0] != "changed":
                return Job.from_dict(_record(reply[1])) if reply[0] == "ok" else None
        return None

    # -- transitions ----------------------------------------------------------------------------------

    async def _transition(self, script: str, job_id: str, worker_id: str | None, *args: str) -> Job:
        reply = await self._run(script, job_id, "" if worker_id is None else _enc(worker_id), _enc(self._now()),
                                *args)
        if reply[0] == "notfound":
            raise JobNotFound(job_id)
        if reply[0] == "lease":
            raise QueueError(f"Job {job_id} is no longer leased by {worker_id} (lease lost).")
        return Job.from_dict(_record(reply[1]))

    async def update(self, job_id: str, worker_id: str | None = None, **fields: Any) -> Job:
        """Record progress and run details (see ``UPDATABLE_FIELDS``); a final job is returned unchanged."""
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise QueueError(f"update() cannot set {', '.join(sorted(unknown))}; it sets {sorted(UPDATABLE_FIELDS)}.")
        if "progress" in fields:
            fields["progress"] = min(max(float(fields["progress"]), 0.0), 1.0)
        pairs = [part for name, value in fields.items() for part in (name, _enc(value))]
        return await self._transition("update", job_id, worker_id, *pairs)

    async def finish(self, job_id: str, worker_id: str | None, *, outputs: list[dict[str, Any]]) -> Job:
        return await self._transition("finish", job_id, worker_id, _enc(outputs))

    async def fail(self, job_id: str, worker_id: str | None, *, code: str, message: str,
                   retry: bool = False) -> Job:
        return await self._transition("fail", job_id, worker_id, _enc({"code": code, "message": message}),
                                      _enc(message), "1" if retry else "0", str(self.max_attempts))

    async def requeue(self, job_id: str, worker_id: str, reason: str) -> Job:
        return await self._transition("requeue", job_id, worker_id, _enc(reason),
                                      _enc({"code": "worker_lost", "message": reason}), str(self.max_attempts))

    async def release(self, job_id: str, worker_id: str | None, reason: str, *, keep_handle: bool = False) -> Job:
        """Give a claimed job back without counting the attempt (see :meth:`JobQueue.release`)."""
        return await self._transition("release", job_id, worker_id, _enc(reason), "1" if keep_handle else "0")

    async def cancel(self, job_id: str) -> Job:
        return await self._transition("cancel", job_id, None)

    async def mark_cancelled(self, job_id: str, worker_id: str | None = None) -> Job:
        return await self._transition("mark_cancelled", job_id, worker_id)

    async def annotate(self, job_id: str, *, outputs: list[dict[str, Any]] | None = None,
                       note: str | None = None) -> Job:
        """Change the ``outputs`` and ``note`` of a FINAL job (``note=""`` clears it), as JobQueue does."""
        pairs = []
        if outputs is not None:
            pairs += ["outputs", _enc(outputs)]
        if note is not None:
            pairs += ["note", _enc(note or None)]
        reply = await self._run("annotate", job_id, *pairs)
        if reply[0] == "notfound":
            raise JobNotFound(job_id)
        if reply[0] == "notfinal":
            raise QueueError(f"Job {job_id} is {reply[1]}; only a finished job can be annotated.")
        return Job.from_dict(_record(reply[1]))

    async def move(self, job_id: str, *, to_index: int) -> None:
        """Move a queued job to ``to_index`` in the run order (0 = front, clamped); QueueError if not queued."""
        reply = await self._run("move", job_id, str(max(int(to_index), 0)))
        if reply[0] == "notfound":
            raise JobNotFound(job_id)
        if reply[0] == "notqueued":
            raise QueueError(f"Job {job_id} is not queued, so it cannot be moved.")

    async def prune(self, *, older_than: float, batch: int = 256) -> int:
        """Delete final jobs that finished before ``older_than``; returns how many. Never touches live jobs:
        only the index of finished jobs is read, and each record is checked again before it goes."""
        deleted = 0
        while True:  # short scripts: other clients are served between batches
            reply = await self._run("prune", _enc(float(older_than)), str(max(batch, 1)))
            deleted += int(reply[1])
            if int(reply[2]) < max(batch, 1):
                return deleted

    async def prune_records(self, *, older_than: float, skip: Collection[str] = (),
                            batch: int = 256) -> list[dict[str, Any]]:
        """Like :meth:`prune`, keeping the ids in ``skip``; the deleted jobs as ``{"id": ...}`` (their files
        are the caller's). Read from the index of finished jobs, each record checked again as it goes."""
        with map_redis_errors():
            ids = await self.client.zrangebyscore(self.key("finished"), "-inf", f"({float(older_than)!r}")
        kept = set(skip)
        wanted = [job_id for job_id in ids if job_id not in kept]
        deleted: list[dict[str, Any]] = []
        for at in range(0, len(wanted), max(batch, 1)):
            reply = await self._run("prune_ids", _enc(float(older_than)), *wanted[at:at + max(batch, 1)])
            deleted += [{"id": job_id} for job_id in reply[1:]]
        return deleted
