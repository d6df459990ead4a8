"""X/Y/Z plots as the studio runs them: one job per cell, one record, one labelled grid image (a mixin of Studio).

:meth:`Grids.submit_grid` plans the plot (:func:`comfy.graph.plan_grid`: A1111's axis syntax, 64 cells
at most unless confirmed, :data:`~comfy.graph.plot.MAX_GRID_CELLS` even confirmed), checks every cell
against the limits and the server as a single submission would, then queues one job per cell
(row-major: x fastest) in one transaction, so a grid is queued whole or not at all, and stores the
plot's record in the job store, scoped to its owner like jobs. Under an idempotency key the grid's id
and its cells' keys come from the key: the same key and request answer the same grid, another request
is an :class:`IdempotencyConflict`. :meth:`Grids.grid` answers its status (``cancelled`` when every cell
that did not succeed was cancelled); once every cell has ended it composes the labelled grid
(:func:`comfy.graph.plot.compose_grid`, a failed cell drawn empty), saves it with the outputs and keeps
its key and final status on the record, so later reads need no job. :meth:`Grids.cancel_grid` cancels
every cell. Each cell's job records its place (``grid_cell``), so its PNG says which cell it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfy.errors import ComfyError, GridNotFound, IdempotencyConflict, StorageError, WorkflowError
from comfy.graph.params import GenerationParams, Limits
from comfy.graph.plot import GridPlan, apply_value, compose_grid, plan_grid
from comfy.jobs.events import JobEvent
from comfy.jobs.records import Job, JobState
from comfy.graph.toolbox import GRID_CELL_KEY

if TYPE_CHECKING:
    from comfy.jobs.events import EventBus
    from comfy.jobs.store import JobStore
    from comfy.jobs.worker import Worker
    from comfy.storage.local import LocalStore

__all__ = ["Grids", "grid_status", "FINAL_GRID"]

#: The statuses of a plot whose every cell has ended.
FINAL_GRID = ("succeeded", "partial", "failed", "cancelled")


def grid_status(jobs: list[Job]) -> str:
    """``queued``, ``running`` (some cell started or ended, not all), ``succeeded``, ``cancelled`` (every
    cell that did not succeed was cancelled), ``failed`` (no cell succeeded, some failed) or ``partial``
    (every cell ended, some failed)."""
    if not all(job.state.is_final for job in jobs):
        return "queued" if all(job.state is JobState.QUEUED for job in jobs) else "running"
    succeeded = sum(job.state is JobState.SUCCEEDED for job in jobs)
    if succeeded == len(jobs):
        return "succeeded"
    if all(job.state in (JobState.SUCCEEDED, JobState.CANCELLED) for job in jobs):
        return "cancelled"
    return "partial" if succeeded else "failed"


class Grids:
    """Studio's plot methods; they use its store, files, worker and submission checks."""

    store: JobStore
    files: LocalStore
    worker: Worker
    limits: Limits
    bus: EventBus

    if TYPE_CHECKING:
        async def _prepared_request(self, params: Any, image: bytes | None, mask: bytes | None,
                                    idempotency_key: str | None, owner: str | None) -> Any: ...
        async def _check_against_server(self, params: GenerationParams, mask_png: bytes | None = None) -> Any: ...
        async def cancel(self, job_id: str) -> Job: ...

    async def submit_grid(self, params: GenerationParams | dict[str, Any], grid: dict[str, Any], *,
                          confirmed: bool = False, image: bytes | None = None, mask: bytes | None = None,
                          owner: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue one job per cell; the plot's record ``{grid_id, job_ids (row-major), plan, ...}``.

        Raises :class:`WorkflowError` (field ``grid``, ``grid.<axis>.values[i]``, or the cell's field)
        before any job exists; :class:`IdempotencyConflict` for a key used with another request.
        """
        params, note, mask_png = await self._prepared_request(params, image, mask, idempotency_key, owner)
        fingerprint = _fingerprint(params.to_dict(), grid, confirmed)
        grid_id = _keyed_id(owner, idempotency_key) if idempotency_key else uuid.uuid4().hex[:16]
        if idempotency_key:
            seen = await self._seen_grid(grid_id, idempotency_key, fingerprint)
            if seen is not None:
                return seen
        # Planning and the limit checks run in a thread: at most MAX_GRID_CELLS cells, but not on the loop.
        plan = await asyncio.to_thread(_checked_plan, params, grid, confirmed, self.limits)
        checked = []
        for cell in plan.cells:
            try:
                run = await self._check_against_server(cell.params, mask_png)
            except WorkflowError as exc:
                raise WorkflowError(f"Grid cell {cell.index} ({cell.label}): {exc}", field=exc.field) from None
            if idempotency_key:  # as a single keyed submission: the default checkpoint is the worker's to fill
                run = dataclasses.replace(run, checkpoint=cell.params.checkpoint)
            checked.append(run)
            await asyncio.sleep(0)  # other requests and the leases' heartbeats run between cells
        requests = [{"params": {**run.to_dict(), GRID_CELL_KEY: {"grid_id": grid_id, **cell.metadata(plan),
                                                                 "label": cell.label}},
                     "idempotency_key": f"{idempotency_key}#g{cell.index}" if idempotency_key else None,
                     "note": note} for cell, run in zip(plan.cells, checked)]
        jobs = await self.store.enqueue_many(requests, owner=owner)  # one transaction: all cells or none
        record = {"grid_id": grid_id, "owner": owner, "job_ids": [job.id for job in jobs], "created_at": time.time(),
                  "params": params.to_dict(), "grid": grid, "confirmed": confirmed, "plan": _plan_summary(plan),
                  "image": None, "fingerprint": fingerprint}
        try:
            await self.store.save_grid(record)
        except ComfyError:
            if not idempotency_key:  # no orphan cells; under a key a retry finds them and writes the record
                for job in jobs:
                    await self.cancel(job.id)
            raise
        for job in jobs:
            self.bus.publish(JobEvent(job.id, "queued", job=job.to_dict()))
        self.worker.wake()
        return record

    async def _seen_grid(self, grid_id: str, key: str, fingerprint: str) -> dict[str, Any] | None:
        try:
            seen = await self.store.get_grid(grid_id)
        except GridNotFound:
            return None
        if seen.get("fingerprint") != fingerprint:
            raise IdempotencyConflict(key, grid_id, kind="grid")
        return seen

    async def grid(self, grid_id: str, *, owner: str | None = None, scoped: bool = False,
                   with_jobs: bool = True) -> dict[str, Any]:
        """The plot's record with its ``status``, its ``jobs`` (read in one batch), and ``image`` (an output
        key) once every cell ended. Once ended and drawn the record alone answers: without ``with_jobs``
        (a poll of the status) no job is read at all, and ``jobs`` is None.

        With ``scoped``, a plot of another owner is :class:`GridNotFound` (as if there were none); so is a
        plot whose cells are gone (removed by retention).
        """
        record = await self.store.get_grid(grid_id)
        if scoped and record.get("owner") != owner:
            raise GridNotFound(grid_id)
        if record.get("status") in FINAL_GRID and record.get("image"):  # ended and drawn: nothing changes any more
            return {**record, "jobs": await self.store.get_many(record["job_ids"]) if with_jobs else None}
        jobs = await self.store.get_many(record["job_ids"])  # one read for every cell
        if len(jobs) != len(record["job_ids"]):
            raise GridNotFound(grid_id)
        status = grid_status(jobs)
        if status in FINAL_GRID:
            async with self._compose_lock(grid_id):
                record = await self.store.get_grid(grid_id)  # another request may have drawn it meanwhile
                if record.get("image") is None:
                    record["image"] = await asyncio.to_thread(self._compose, record, jobs)
                record["status"] = status
                await self.store.save_grid(record)
        return {**record, "status": status, "jobs": jobs}

    async def cancel_grid(self, grid_id: str, *, owner: str | None = None, scoped: bool = False) -> dict[str, Any]:
        """Cancel every cell not ended yet (a running one is stopped on the server); the plot as :meth:`grid`."""
        record = await self.grid(grid_id, owner=owner, scoped=scoped)
        for job in record["jobs"] or ():
            if not job.state.is_final:
                await self.cancel(job.id)
        return await self.grid(grid_id, owner=owner, scoped=scoped)

    def _compose_lock(self, grid_id: str) -> asyncio.Lock:
        locks: dict[str, asyncio.Lock] = self.__dict__.setdefault("_grid_locks", {})
        if len(locks) > 256:  # only the grids being drawn now need one
            for name in [name for name, lock in locks.items() if not lock.locked()]:
                del locks[name]
        return locks.setdefault(grid_id, asyncio.Lock())

    def grid_image_path(self, record: dict[str, Any]) -> str | None:
        """The local file of a plot's labelled image (None until every cell ended, or once the file is gone)."""
        if not record.get("image"):
            return None
        try:
            path = self.files.path_for(record["image"])
        except StorageError:
            return None
        return str(path) if path.is_file() else None

    def _compose(self, record: dict[str, Any], jobs: list[Job]) -> str:
        """Draw and save the labelled grid; its output key. Reads each cell's first image (in a thread)."""
        params = GenerationParams.from_dict(record["params"])
        plan = plan_grid(params, record["grid"], confirmed=True)
        images: list[Path | None] = []
        for job in jobs:
            path = None
            if job.state is JobState.SUCCEEDED and job.outputs:
                try:
                    path = self.files.path_for(job.outputs[0]["key"])
                except (StorageError, KeyError):
                    path = None
            images.append(path if path is not None and path.is_file() else None)  # a file gone: drawn empty
        picture = compose_grid(images, plan)
        out = io.BytesIO()
        picture.save(out, format="PNG")
        stored = self.files.save_output(f"grid_{record['grid_id']}", 0, out.getvalue(), metadata={
            "grid_id": record["grid_id"], "kind": "grid", "grid": record["grid"], "job_ids": record["job_ids"]})
        return stored.key


def _checked_plan(params: GenerationParams, grid: dict[str, Any], confirmed: bool, limits: Limits) -> GridPlan:
    """The plan, each axis value and then each cell checked against the limits (as a single submission is)."""
    plan = plan_grid(params, grid, confirmed=confirmed)
    for name, axis in plan.axes.items():
        for index, value in enumerate(axis.values):
            try:
                apply_value(params, axis, value).check(limits)
            except WorkflowError as exc:
                raise WorkflowError(f"grid.{name} ({axis.param}) value {_short(value)}: {exc}",
                                    field=f"grid.{name}.values[{index}]") from None
    for cell in plan.cells:  # values that pass alone may not together
        try:
            cell.params.check(limits)
        except WorkflowError as exc:
            raise WorkflowError(f"Grid cell {cell.index} ({cell.label}): {exc}", field=exc.field) from None
    return plan


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}… ({len(str(value))} characters)"


def _fingerprint(params: dict[str, Any], grid: dict[str, Any], confirmed: bool) -> str:
    """What "the same grid request" means for an idempotency key."""
    text = json.dumps({"params": params, "grid": grid, "confirmed": confirmed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _keyed_id(owner: str | None, key: str) -> str:
    """A keyed grid's id: the same owner and key always name the same grid."""
    return hashlib.sha256(json.dumps(["grid", owner, key]).encode()).hexdigest()[:16]


def _plan_summary(plan: GridPlan) -> dict[str, Any]:
    columns, rows, blocks = plan.shape
    return {"axes": {name: {"param": axis.param, "values": list(axis.values)} for name, axis in plan.axes.items()},
            "shape": [columns, rows, blocks], "labels": [cell.label for cell in plan.cells]}

