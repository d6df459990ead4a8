"""X/Y/Z plots as the studio runs them: one job per cell, one record, one labelled grid image (a mixin of Studio).

:meth:`Grids.submit_grid` plans the plot (:func:`comfy.graph.plan_grid`: A1111's axis syntax, 64 cells
at most unless confirmed), checks every cell against the server as a single submission would, queues
one job per cell (row-major: x fastest) and stores the plot's record in the job store, scoped to its
owner like jobs. :meth:`Grids.grid` answers its status; once every cell has ended it composes the
labelled grid (:func:`comfy.graph.plot.compose_grid`, a failed cell drawn empty), saves it with the
outputs and keeps its key on the record. Each cell's job records its place (``grid_cell``), so its
PNG says which cell it is.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from typing import TYPE_CHECKING, Any

from comfy.errors import GridNotFound, StorageError
from comfy.graph.params import GenerationParams
from comfy.graph.plot import GridPlan, compose_grid, plan_grid
from comfy.jobs.records import Job, JobState
from comfy.graph.toolbox import GRID_CELL_KEY

if TYPE_CHECKING:
    from comfy.jobs.store import JobStore
    from comfy.jobs.worker import Worker
    from comfy.storage.local import LocalStore

__all__ = ["Grids", "grid_status"]


def grid_status(jobs: list[Job]) -> str:
    """``queued``, ``running`` (some cell started or ended, not all), ``succeeded``, ``failed`` (no cell
    succeeded) or ``partial`` (every cell ended, some without an image)."""
    if not all(job.state.is_final for job in jobs):
        return "queued" if all(job.state is JobState.QUEUED for job in jobs) else "running"
    succeeded = sum(job.state is JobState.SUCCEEDED for job in jobs)
    return "succeeded" if succeeded == len(jobs) else "partial" if succeeded else "failed"


class Grids:
    """Studio's plot methods; they use its store, files, worker and submission checks."""

    store: JobStore
    files: LocalStore
    worker: Worker

    if TYPE_CHECKING:
        async def _prepared_request(self, params: Any, image: bytes | None, mask: bytes | None,
                                    idempotency_key: str | None, owner: str | None) -> Any: ...
        async def _check_against_server(self, params: GenerationParams, mask_png: bytes | None = None) -> Any: ...
        async def _enqueue(self, params: dict[str, Any], key: str | None, owner: str | None,
                           note: str | None) -> Job: ...

    async def submit_grid(self, params: GenerationParams | dict[str, Any], grid: dict[str, Any], *,
                          confirmed: bool = False, image: bytes | None = None, mask: bytes | None = None,
                          owner: str | None = None) -> dict[str, Any]:
        """Queue one job per cell; the plot's record ``{grid_id, job_ids (row-major), plan, ...}``.

        Raises :class:`WorkflowError` (field ``grid``, or the cell's field) before any job exists.
        """
        params, note, mask_png = await self._prepared_request(params, image, mask, None, owner)
        plan = plan_grid(params, grid, confirmed=confirmed)
        checked = [await self._check_against_server(cell.params, mask_png) for cell in plan.cells]
        grid_id = uuid.uuid4().hex[:16]
        job_ids = []
        for cell, run in zip(plan.cells, checked):
            cell_record = {"grid_id": grid_id, **cell.metadata(plan), "label": cell.label}
            job = await self._enqueue({**run.to_dict(), GRID_CELL_KEY: cell_record}, None, owner, note)
            job_ids.append(job.id)
        self.worker.wake()
        record = {"grid_id": grid_id, "owner": owner, "job_ids": job_ids, "created_at": time.time(),
                  "params": params.to_dict(), "grid": grid, "confirmed": confirmed, "plan": _plan_summary(plan),
                  "image": None}
        await self.store.save_grid(record)
        return record

    async def grid(self, grid_id: str, *, owner: str | None = None, scoped: bool = False) -> dict[str, Any]:
        """The plot's record with its ``status`` and ``jobs``; ``image`` (an output key) once every cell ended.

        With ``scoped``, a plot of another owner is :class:`GridNotFound` (as if there were none).
        """
        record = await self.store.get_grid(grid_id)
        if scoped and record.get("owner") != owner:
            raise GridNotFound(grid_id)
        jobs = [await self.store.get(job_id) for job_id in record["job_ids"]]
        status = grid_status(jobs)
        if status in ("succeeded", "partial", "failed") and record.get("image") is None:
            record["image"] = await asyncio.to_thread(self._compose, record, jobs)
            await self.store.save_grid(record)
        return {**record, "status": status, "jobs": jobs}

    def grid_image_path(self, record: dict[str, Any]) -> str | None:
        """The local file of a plot's labelled image (None until every cell ended)."""
        return str(self.files.path_for(record["image"])) if record.get("image") else None

    def _compose(self, record: dict[str, Any], jobs: list[Job]) -> str:
        """Draw and save the labelled grid; its output key. Reads each cell's first image (in a thread)."""
        params = GenerationParams.from_dict(record["params"])
        plan = plan_grid(params, record["grid"], confirmed=True)
        images: list[bytes | None] = []
        for job in jobs:
            data = None
            if job.state is JobState.SUCCEEDED and job.outputs:
                try:
                    data = self.files.path_for(job.outputs[0]["key"]).read_bytes()
                except (OSError, StorageError, KeyError):
                    data = None  # a cell whose file is gone is drawn empty
            images.append(data)
        picture = compose_grid(images, plan)
        out = io.BytesIO()
        picture.save(out, format="PNG")
        stored = self.files.save_output(f"grid_{record['grid_id']}", 0, out.getvalue(), metadata={
            "grid_id": record["grid_id"], "kind": "grid", "grid": record["grid"], "job_ids": record["job_ids"]})
        return stored.key


def _plan_summary(plan: GridPlan) -> dict[str, Any]:
    columns, rows, blocks = plan.shape
    return {"axes": {name: {"param": axis.param, "values": list(axis.values)} for name, axis in plan.axes.items()},
            "shape": [columns, rows, blocks], "labels": [cell.label for cell in plan.cells]}

