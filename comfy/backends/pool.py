"""A pool of backends: which answer, how loaded they are, where the next job goes, probing the rest.

Routing: a job goes to the backend that is **up**, has a free slot (``max_in_flight``), has the job's
checkpoint (``object_info`` for pods; configured, or assumed, for RunPod Serverless), and has the least
work: our prompts in flight there plus the foreign work its queue had at the last look. Ties go to the
one listed first (pods before the serverless endpoint). A job that no free backend can run stays in the
queue, skipped, with a note when the reason is not just "all busy": it never fails because a backend is
down. Only a checkpoint that no backend has at all (every catalogue known) lets it run and fail there,
with ComfyUI's own message.

Health: every backend is checked at start (except a lone one, which is assumed up, as before pools
existed), then every ``refresh_interval`` while up. One that stops answering, in a check or in a job,
is marked **down** and probed with exponential backoff (``probe_min`` doubling to ``probe_max``) until it
answers; its models are fetched again then. One that fails a job again soon after it came back (it
answers the probe but not the jobs: a proxy passing HTTP and not WebSockets) keeps its backoff doubling
instead of starting over, so the jobs that wait for it are not claimed and handed back in a tight loop. Probes run as background tasks, so a backend whose
connections hang never holds up the others.

Failover (the worker's side, see ``Worker._on_error``): a job whose backend stopped answering for longer
than its reconnect window is given up there and submitted again elsewhere (an attempt is used). First
its run there is cancelled; when that backend cannot be reached the run is remembered as an *orphan* and
cancelled as soon as the backend answers again, before it gets new work. A job therefore never has two
live runs that both reach the studio: only the newest one is followed and saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from comfy.backends.base import Backend, BackendHealth, redact_url, required_checkpoints
from comfy.errors import ComfyError
from comfy.graph.object_info import ObjectInfo
from comfy.jobs.records import Job

__all__ = ["BackendState", "BackendView", "Pool", "merge_object_info"]

logger = logging.getLogger(__name__)


class BackendState(str, Enum):
    """How a backend answered the last time it was asked."""

    UP = "up"  #: it answers; jobs may go there
    DOWN = "down"  #: it did not answer; probed with backoff
    PROBING = "probing"  #: being checked now (or not checked yet)


@dataclass
class _Entry:
    backend: Backend
    index: int
    state: BackendState
    checked: bool = False  # answered or failed at least once
    error: str | None = None
    health: BackendHealth | None = None
    in_flight: int = 0
    foreign: int = 0  # work there that is not ours, at the last look
    backoff: float = 0.0
    next_check: float = 0.0
    down_since: float | None = None
    models_known: bool = False
    orphans: dict[str, float] = field(default_factory=dict)  # run handle -> stopped again until then
    check: asyncio.Task[None] | None = None
    up_since: float | None = None  # when a probe last found it back
    last_backoff: float = 0.0  # the backoff it had then, resumed if it fails again soon


@dataclass(frozen=True)
class BackendView:
    """One backend as the pool sees it now (for status pages)."""

    backend: Backend
    state: BackendState
    error: str | None
    health: BackendHealth | None
    in_flight: int
    load: int
    down_since: float | None


class Pool:
    """Backends in the order configured; see the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        probe_min: float = 0.5,
        probe_max: float = 10.0,
        refresh_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("a pool needs at least one backend")
        self.probe_min = probe_min
        self.probe_max = probe_max
        self.refresh_interval = refresh_interval
        self._clock = clock
        # A lone backend is assumed up, as before pools: its first job finds out (and keeps no attempt).
        first = BackendState.UP if len(backends) == 1 else BackendState.PROBING
        self._entries = [_Entry(b, i, first) for i, b in enumerate(backends)]
        self._by_name = {b.name: e for b, e in zip(backends, self._entries)}
        self._on_change: Callable[[], None] = lambda: None

    # -- what is in it ------------------------------------------------------------------------------

    @property
    def backends(self) -> list[Backend]:
        return [e.backend for e in self._entries]

    @property
    def single(self) -> bool:
        return len(self._entries) == 1

    def find(self, name: str | None) -> Backend | None:
        """The backend a job names (``job.backend``); also matches a stored URL that still has credentials."""
        if not name:
            return None
        entry = self._by_name.get(name)
        if entry is None and "://" in name:
            entry = self._by_name.get(redact_url(name))
        return entry.backend if entry else None

    def state(self, backend: Backend) -> BackendState:
        return self._entry(backend).state

    def views(self) -> list[BackendView]:
        return [BackendView(e.backend, e.state, e.error, e.health, e.in_flight, self._load(e), e.down_since)
                for e in self._entries]

    # -- routing ------------------------------------------------------------------------------------

    def free(self) -> list[Backend]:
        """Backends that are up and have a free slot."""
        return [e.backend for e in self._entries
                if e.state is BackendState.UP and e.in_flight < e.backend.max_in_flight]

    def can_place(self, job: Job, free: Sequence[Backend]) -> bool:
        """Whether ``job`` should be claimed now for one of ``free``. No I/O: runs inside a queue transaction."""
        need = required_checkpoints(job)
        if not need or any(b.has_checkpoints(need) is not False for b in free):
            return True
        # Nobody free has it. Wait if any backend might; if none can, let it run and fail with the reason.
        return all(e.backend.has_checkpoints(need) is False for e in self._entries)

    def choose(self, job: Job, free: Sequence[Backend]) -> Backend:
        """The least-loaded of ``free`` that has the job's checkpoint (ties: the first configured)."""
        need = required_checkpoints(job)
        fits = [b for b in free if b.has_checkpoints(need) is not False] or list(free)
        return min(fits, key=lambda b: (self._load(self._entry(b)), self._entry(b).index))

    def acquire(self, backend: Backend) -> None:
        self._entry(backend).in_flight += 1

    def release(self, backend: Backend) -> None:
        entry = self._entry(backend)
        entry.in_flight = max(entry.in_flight - 1, 0)

    def waiting_reason(self, job: Job) -> str | None:
        """Why a queued job cannot start, when the answer is more than "every backend is busy"."""
        ups = [e for e in self._entries if e.state is BackendState.UP]
        if not ups:
            return None if not all(e.checked for e in self._entries) else f"waiting for the backend: {self.down_reason()}"
        need = required_checkpoints(job)
        if not need or any(e.backend.has_checkpoints(need) is not False for e in ups):
            return None
        maybe = [e.backend.name for e in self._entries
                 if e.state is not BackendState.UP and e.backend.has_checkpoints(need) is not False]
        if not maybe:
            return None
        return (f"waiting for a backend with {', '.join(sorted(need))}: {', '.join(maybe)} "
                f"{'does' if len(maybe) == 1 else 'do'} not answer")

    # -- health -------------------------------------------------------------------------------------

    def down_reason(self) -> str | None:
        """None while some backend answers (or is still being checked); otherwise why none does."""
        if any(e.state is BackendState.UP or not e.checked for e in self._entries):
            return None
        if self.single:
            return self._entries[0].error or "it does not answer"
        return "no backend answers (" + "; ".join(f"{e.backend.name}: {e.error}" for e in self._entries) + ")"

    def mark_down(self, backend: Backend, reason: str) -> None:
        """A job found the backend unreachable: stop sending it work and probe it."""
        self._down(self._entry(backend), reason)

    def add_orphan(self, backend: Backend, handle: str, *, linger: float = 0.0) -> None:
        """A run left on a backend that could not be told to stop: stop it when the backend answers again.

        With ``linger``, it is stopped again at every check for that many seconds: a run that may still
        arrive (a submission whose answer was lost) is stopped when it shows up.
        """
        orphans = self._entry(backend).orphans
        orphans[handle] = max(orphans.get(handle, 0.0), self._clock() + linger)

    def tick(self, on_change: Callable[[], None]) -> None:
        """Start the checks that are due, in the background; ``on_change`` is called when one comes back."""
        self._on_change = on_change
        now = self._clock()
        for entry in self._entries:
            if entry.check is not None:
                continue
            due = entry.next_check <= now
            if entry.state is BackendState.UP and (not due or (self.single and not entry.orphans)):
                continue  # a lone backend is checked by its jobs (unless it has runs to stop); others when due
            if entry.state is not BackendState.UP and not due:
                continue
            entry.check = asyncio.create_task(self._check(entry), name=f"check-{entry.backend.name}")

    def next_check_in(self) -> float:
        """Seconds until the next check is due (for the worker's wait)."""
        now = self._clock()
        due = [e.next_check - now for e in self._entries
               if e.check is None and (e.state is not BackendState.UP or not self.single or e.orphans)]
        return max(min(due), 0.0) if due else self.probe_max

    async def check_all(self, *, timeout: float = 3.0) -> None:
        """Check every backend now; wait up to ``timeout`` for the answers (start-up). Late ones land later."""
        for entry in self._entries:
            if entry.check is None:
                entry.check = asyncio.create_task(self._check(entry), name=f"check-{entry.backend.name}")
        checks = [e.check for e in self._entries if e.check is not None]
        if checks:
            await asyncio.wait(checks, timeout=timeout)

    async def aclose(self) -> None:
        checks = [e.check for e in self._entries if e.check is not None]
        for task in checks:
            task.cancel()
        await asyncio.gather(*checks, return_exceptions=True)

    async def _check(self, entry: _Entry) -> None:
        was_up = entry.state is BackendState.UP
        if not was_up:
            entry.state = BackendState.PROBING
        try:
            health = await entry.backend.health()
            if not was_up or not entry.models_known:
                await entry.backend.refresh_models()
                entry.models_known = True
            await self._forget_orphans(entry)
        except ComfyError as exc:
            self._down(entry, str(exc))
        except Exception as exc:  # a bug in a probe must not stop probing
            logger.exception("Checking backend %s failed", entry.backend.name)
            self._down(entry, f"{type(exc).__name__}: {exc}")
        else:
            self._up(entry, health, came_back=not was_up)
        finally:
            entry.check = None
            entry.checked = True

    async def _forget_orphans(self, entry: _Entry) -> None:
        for handle, until in list(entry.orphans.items()):
            await entry.backend.forget(handle)  # a ComfyError keeps it down: the run may still be there
            if until > self._clock():
                continue  # it may still arrive: looked for again at the next check
            del entry.orphans[handle]
            logger.info("Stopped run %s left on %s by a job that moved on", handle, entry.backend.name)

    def _up(self, entry: _Entry, health: BackendHealth, *, came_back: bool) -> None:
        if came_back and entry.down_since is not None:
            logger.info("Backend %s answers again", entry.backend.name)
        entry.state, entry.error, entry.health = BackendState.UP, None, health
        entry.foreign = max((health.queue_remaining or 0) - entry.in_flight, 0)
        if came_back:
            entry.up_since, entry.last_backoff = self._clock(), entry.backoff
        entry.backoff, entry.down_since = 0.0, None
        entry.next_check = self._clock() + self.refresh_interval
        if came_back:
            self._on_change()

    def _down(self, entry: _Entry, reason: str) -> None:
        now = self._clock()
        if entry.state is BackendState.UP or entry.down_since is None:
            if entry.state is BackendState.UP:
                logger.warning("Backend %s stopped answering: %s", entry.backend.name, reason)
            entry.down_since = now
            flapping = entry.up_since is not None and now - entry.up_since < max(self.probe_max, self.refresh_interval)
            entry.backoff = min(max(entry.last_backoff, self.probe_min) * 2, self.probe_max) if flapping \
                else self.probe_min
        else:
            entry.backoff = min(max(entry.backoff, self.probe_min) * 2, self.probe_max)
        entry.state, entry.error, entry.checked = BackendState.DOWN, reason, True
        entry.next_check = now + entry.backoff

    def _load(self, entry: _Entry) -> int:
        return entry.in_flight + entry.foreign

    def _entry(self, backend: Backend) -> _Entry:
        return self._by_name[backend.name]


# -- one catalogue for several servers -------------------------------------------------------------


def merge_object_info(infos: Sequence[ObjectInfo], *, extra_checkpoints: Sequence[str] = ()) -> ObjectInfo | None:
    """What the pool offers: every node class of every server, combo choices (checkpoints...) united."""
    if not infos:
        return None
    if len(infos) == 1 and not extra_checkpoints:
        return infos[0]
    merged: dict[str, Any] = {}
    for info in infos:
        for name, spec in info.raw.items():
            if name not in merged:
                merged[name] = spec
            elif spec is not merged[name] and spec != merged[name]:  # servers mostly agree: copy only what differs
                merged[name] = _merge_class(merged[name], spec)
    if extra_checkpoints:
        for name, spec in list(merged.items()):
            required = ((spec.get("input") or {}).get("required") or {}) if isinstance(spec, dict) else {}
            if "ckpt_name" in required:
                extra = {"input": {"required": {"ckpt_name": [list(extra_checkpoints), {}]}}}
                merged[name] = _merge_class(spec, extra)
    return ObjectInfo(merged)


def _merge_class(first: Any, second: Any) -> Any:
    if not isinstance(first, dict) or not isinstance(second, dict):
        return first
    out = copy.deepcopy(first)
    for section in ("required", "optional"):
        theirs = (second.get("input") or {}).get(section) or {}
        if not theirs:
            continue
        ours = out.setdefault("input", {}).setdefault(section, {})
        for name, raw in theirs.items():
            ours[name] = raw if name not in ours else _union_combo(ours[name], raw)
    return out


def _union_combo(first: Any, second: Any) -> Any:
    with contextlib.suppress(IndexError, TypeError, AttributeError):
        if isinstance(first[0], list) and isinstance(second[0], list):
            return [first[0] + [c for c in second[0] if c not in first[0]], *first[1:]]
        if first[0] == "COMBO" and second[0] == "COMBO":
            mine, theirs = list(first[1].get("options") or []), list(second[1].get("options") or [])
            return ["COMBO", {**first[1], "options": mine + [c for c in theirs if c not in mine]}]
    return first
