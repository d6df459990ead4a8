"""What a job is: its record (``Job``), its states, and a page of a listing. Plain data, no storage."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Job", "JobPage", "JobState", "UPDATABLE_FIELDS", "TAKEN_OVER_NOTE"]


#: Fields a worker may set with :meth:`JobQueue.update`; the rest belong to the queue's transitions.
UPDATABLE_FIELDS = frozenset(
    {"progress", "node", "step", "steps", "prompt_id", "client_id", "backend", "note", "outputs", "workflow"}
)
TAKEN_OVER_NOTE = "re-attached after restart"


class JobState(str, Enum):
    """Where a job is in its life; stored as its value."""

    QUEUED = "queued"  #: waiting in the queue
    RUNNING = "running"  #: claimed by a worker (a lease is held)
    SUCCEEDED = "succeeded"  #: finished with outputs
    FAILED = "failed"  #: gave up; ``error`` says why
    CANCELLED = "cancelled"  #: cancelled by a person

    @property
    def is_final(self) -> bool:
        return self in FINAL


FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


QUEUED, RUNNING = JobState.QUEUED.value, JobState.RUNNING.value


@dataclass(frozen=True)
class Job:
    """One job as stored; build it from storage with :meth:`from_dict`, send it anywhere with :meth:`to_dict`.

    >>> job = Job(id="0123456789abcdef", seq=1, kind="generate", params={"prompt": "a cat"})
    >>> job.state, job.done, Job.from_dict(job.to_dict()) == job
    (<JobState.QUEUED: 'queued'>, False, True)
    """

    id: str
    seq: int
    kind: str
    params: dict[str, Any]
    workflow: dict[str, Any] | None = None
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    node: str | None = None
    step: int | None = None
    steps: int | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    prompt_id: str | None = None
    client_id: str | None = None
    backend: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, str] | None = None
    attempts: int = 0
    idempotency_key: str | None = None
    owner: str | None = None
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires: float | None = None
    note: str | None = None

    @property
    def done(self) -> bool:
        """True once the job reached a final state (derived from ``state``, not stored)."""
        return self.state.is_final

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (the state as its string value)."""
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job; unknown keys (from newer code) are ignored, missing ones take their defaults."""
        if cls is Job and _FIELD_NAMES <= data.keys():  # a whole stored record (every read): no defaults to fill
            values = {name: data[name] for name in _FIELD_ORDER}
            values["state"] = _STATE_OF.get(values["state"]) or JobState(values["state"])
            job = _new_object(cls)
            job.__dict__.update(values)  # what the generated __init__ would set, without its 26 setattr calls
            return job
        values = {name: data[name] for name in _FIELD_NAMES if name in data}
        values["state"] = JobState(data.get("state", QUEUED))
        return cls(**values)


_FIELDS = dataclasses.fields(Job)
_FIELD_ORDER = tuple(f.name for f in _FIELDS)
_FIELD_NAMES = frozenset(_FIELD_ORDER)
_STATE_OF = {state.value: state for state in JobState}
_new_object = object.__new__


@dataclass(frozen=True)
class JobPage:
    """One page of :meth:`JobQueue.list`, newest first; pass ``next_cursor`` back for the next page."""

    jobs: list[Job]
    next_cursor: int | None
    total: int | None
