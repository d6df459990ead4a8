"""Where a job runs: the :class:`Backend` protocol the worker drives, and what a run hands back.

The worker owns everything about a job that does not depend on where it runs: the queue, leases,
events, saving outputs, recovery. A backend knows how to *run* one job on one kind of server and hands
back an :class:`Outcome` whose outputs the worker fetches and saves:

    Backend.run(ctx, attach)      build what to send → record the handle on the job (ctx.record) →
                                  submit (ctx.submitted) → follow (ctx.progress / ctx.preview / ctx.status)
                                  → Outcome(handle, outputs, execution_ms, notes)
    Backend.cancel(job)           stop it (delete it from the server's queue, interrupt it, POST /cancel)
    Backend.forget(handle)        the same for a handle the job has left behind (failover, see pool.py)
    Backend.health()              load and device, for routing and the status header; raises when down

The *handle* is what re-attaching needs after a restart and is stored on the job before anything is
submitted wherever the protocol allows: for ComfyUI the ``prompt_id`` and ``client_id`` we choose;
for RunPod the job id RunPod returns (see :mod:`comfy.backends.runpod`). ``job.backend`` names the backend.
A job that comes back to ``run`` with a handle for this very backend (it waited out an outage) is followed
there if the backend still has that run; only a run provably gone there is submitted again.

Two implementations: :class:`comfy.backends.comfyui.ComfyBackend` (one ComfyUI server: HTTP + WebSocket, previews,
``/history`` re-attach) and :class:`comfy.backends.runpod.RunPodBackend` (RunPod Serverless).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from comfy.jobs.records import Job
from comfy.storage.local import LocalStore

if TYPE_CHECKING:
    from comfy.graph.toolbox import Toolbox

__all__ = ["Backend", "BackendHealth", "Outcome", "Output", "RunContext", "redact_url", "required_checkpoints"]


def redact_url(url: str) -> str:
    """The URL without user:password or query (tokens), for pages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def required_checkpoints(job: Job) -> frozenset[str]:
    """The checkpoint files a job needs: the one it asks for, or every ``ckpt_name`` its workflow names.

    >>> required_checkpoints(Job(id="0" * 16, seq=1, kind="generate", params={"checkpoint": "a.safetensors"}))
    frozenset({'a.safetensors'})
    """
    if job.kind == "generate":
        name = job.params.get("checkpoint")
        return frozenset({name}) if isinstance(name, str) and name else frozenset()
    names = set()
    for node in (job.workflow or {}).values():
        value = (node.get("inputs") or {}).get("ckpt_name") if isinstance(node, dict) else None
        if isinstance(value, str) and value:
            names.add(value)
    return frozenset(names)


@dataclass(frozen=True)
class BackendHealth:
    """What a backend said about itself the last time it answered."""

    gpu: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    #: Work waiting or running there, ours included (ComfyUI's queue; RunPod's jobs in queue + in progress).
    queue_remaining: int | None = None
    version: str | None = None
    #: RunPod Serverless only: its GPU workers and its own job counters.
    workers_idle: int | None = None
    workers_running: int | None = None
    jobs_in_queue: int | None = None
    jobs_in_progress: int | None = None


@dataclass(frozen=True)
class Output:
    """One file a run produced; ``fetch()`` returns its bytes (prefetched, decoded or downloaded)."""

    node_id: str | None
    filename: str
    fetch: Callable[[], Awaitable[bytes]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Outcome:
    """A finished run: its handle, its outputs, the server's execution time and any warnings for the job."""

    handle: str
    outputs: tuple[Output, ...]
    execution_ms: int | None = None
    notes: tuple[str, ...] = ()
    #: What the PNGs record of the toolbox (:meth:`comfy.graph.Prepared.record`); None: the worker works it out.
    record: dict[str, Any] | None = None


class RunContext(Protocol):
    """What the worker gives a backend for one job (it owns the queue, the lease and the bus)."""

    job: Job
    files: LocalStore
    job_timeout: float
    #: Where a generate job's styles and wildcards are read from.
    toolbox: Toolbox

    async def record(self, **fields: Any) -> Job:
        """Store run details on the job (handle, backend, workflow, note); raises if the lease is lost."""

    def submitted(self) -> None:
        """The job reached the backend: from now on a failure uses up an attempt."""

    def started(self, *, job: Job | None = None, message: str | None = None) -> None:
        """Publish ``started``."""

    def progress(self, progress: float, *, node: str | None = None, step: int | None = None,
                 steps: int | None = None, message: str | None = None) -> None:
        """Publish progress; the stored record is updated at most every few hundred ms."""

    def preview(self, image: bytes, mime: str | None) -> None:
        """Publish a preview image."""

    async def status(self, text: str | None) -> None:
        """A waiting state worth showing (``waiting for a GPU worker``), stored as the job's note and node."""


class Backend(Protocol):
    """One place jobs can run; see the module docstring for the life of a run."""

    #: Stable name stored on jobs (``job.backend``) and shown to people: a redacted URL, ``runpod:<id>``.
    name: str
    #: ``comfyui`` or ``runpod``.
    kind: str
    #: Where it is, without credentials, for the status header.
    url: str
    max_in_flight: int

    async def health(self) -> BackendHealth:
        """Load and device; raises :class:`ServerError` when it does not answer."""

    async def refresh_models(self) -> None:
        """Fetch what it has installed again (after start-up or a return from down)."""

    def has_checkpoints(self, names: frozenset[str]) -> bool | None:
        """Whether it has every one of ``names``; None while unknown."""

    async def run(self, ctx: RunContext, *, attach: bool) -> Outcome:
        """Run ``ctx.job`` (or re-attach to its stored handle) to the end; raises a :class:`ComfyError`."""

    async def cancel(self, job: Job) -> bool | None:
        """Stop the job's current run there; quietly nothing when it has ended.

        True when the backend confirmed the run is gone before it started (deleted from its queue): the
        job is cancelled at once, without waiting for the run to report its end.
        """

    async def forget(self, handle: str) -> None:
        """Stop a run the job left there (it runs elsewhere now)."""

    async def aclose(self) -> None: ...
