"""What the toolbox's events do (a mixin of :class:`ui.handlers.Handlers`): generate with LoRAs, VAE, hires fix,
styles, a mask or an outpaint; run an X/Y/Z plot and draw its grid as the cells finish; and bring a job's or a
PNG's toolbox settings back into the form. The conversions are :mod:`ui.toolbox`; the checks are the engine's.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from comfy import ComfyError, GenerationParams, WorkflowError
from comfy.graph.plot import plan_grid
from comfy.jobs.records import Job, JobState
from ui.errors import _owner, friendly
from ui.toolbox import (INPAINT_FIELDS, LORA_ROWS, NO_VAE, PLOT_FIELDS, RESTORED_FIELDS, TOOLBOX_FIELDS, editor_mask,
                        plot_grid, toolbox_params, toolbox_values)

__all__ = ["ToolboxHandlers"]

PLOT_POLL = 0.5  # seconds between looks at a plot's cells


class ToolboxHandlers:
    """The toolbox's handlers; they use the Handlers' studio, owner checks, queueing and image URLs."""

    studio: Any
    auth_on: bool
    scoped: bool
    copies: Any
    streams: Any  #: ui.streams.PageStreams

    if TYPE_CHECKING:  # the Handlers' own
        async def _queue(self, values: dict[str, Any], mode: str, image: str | None, request: Any, *,
                         toolbox: dict[str, Any] | None = None, mask: bytes | None = None) -> Any: ...
        def _params(self, values: dict[str, Any], *, img2img: bool,
                    toolbox: dict[str, Any] | None = None) -> GenerationParams: ...
        async def _watch(self, request: Any, job_ids: list[str]) -> None: ...
        def watched(self, request: Any) -> list[str]: ...
        async def images(self, job: Job) -> list[str]: ...
        async def _resolve(self, job_id: str, request: Any) -> Job: ...

    # -- lists ------------------------------------------------------------------------------------

    @friendly
    async def toolbox_lists(self, *current: Any, refresh: bool = False) -> list[Any]:
        """The LoRA pickers, VAE, upscaler and styles lists from the server (current values kept)."""
        models = await self.studio.models(refresh=refresh)
        names, vae, upscaler, styles = current[:LORA_ROWS], *current[LORA_ROWS:LORA_ROWS + 3]
        pickers = [gr.Dropdown(choices=list(models.loras), value=name) for name in names]
        style_names = [style.name for style in self.studio.styles()]
        return [*pickers, gr.Dropdown(choices=[NO_VAE, *models.vaes], value=vae or NO_VAE),
                gr.Dropdown(choices=["latent", *models.upscale_models], value=upscaler or "latent"),
                gr.Dropdown(choices=style_names, value=[s for s in styles or [] if s in style_names])]

    # -- generating -------------------------------------------------------------------------------

    def _split(self, values: tuple[Any, ...], *names: list[str]) -> list[dict[str, Any]]:
        from ui.handlers import FORM_FIELDS  # Handlers imports this module

        groups, at = [], 0
        for fields in (FORM_FIELDS, *names):
            groups.append(dict(zip(fields, values[at:at + len(fields)])))
            at += len(fields)
        if at != len(values):
            raise ValueError(f"{len(values)} values for {at} fields")
        return groups

    @staticmethod
    async def _init_image(image: str | None) -> bytes:
        """The init image's bytes (image to image, with or without the toolbox)."""
        if not image:
            raise WorkflowError("Image to image needs an image: upload or paste one first.", field="image")
        return await asyncio.to_thread(Path(image).read_bytes)

    async def _toolbox_request(self, mode: str, form: dict[str, Any], toolbox: dict[str, Any],
                               inpaint: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """The toolbox's parameters and the mask (the brush's strokes, else the uploaded file)."""
        img2img = mode == "img2img"
        extra = toolbox_params({**toolbox, **inpaint}, img2img=img2img, checkpoint=form.get("checkpoint"))
        mask = None
        if img2img:
            mask = await asyncio.to_thread(editor_mask, inpaint.get("mask_editor"))
            if mask is None and inpaint.get("mask_file"):
                mask = await asyncio.to_thread(Path(inpaint["mask_file"]).read_bytes)
        return extra, mask

    @friendly
    async def generate_toolbox(self, request: gr.Request, mode: str, image: str | None,
                               *values: Any) -> tuple[list[str], int]:
        """Generate with the form and its toolbox (values: FORM_FIELDS, TOOLBOX_FIELDS, INPAINT_FIELDS).

        The request comes first: Gradio passes it only to a parameter before ``*values``."""
        form, toolbox, inpaint = self._split(values, TOOLBOX_FIELDS, INPAINT_FIELDS)
        extra, mask = await self._toolbox_request(mode, form, toolbox, inpaint)
        return await self._queue(form, mode, image, request, toolbox=extra, mask=mask)

    # -- X/Y/Z plot -------------------------------------------------------------------------------

    @friendly
    async def run_plot(self, request: gr.Request, mode: str, image: str | None,
                       *values: Any) -> tuple[list[str], str, Any, str]:
        """Queue one job per cell; (watched jobs, the grid id, an empty grid, the status line)."""
        form, toolbox, inpaint, plot = self._split(values, TOOLBOX_FIELDS, INPAINT_FIELDS, PLOT_FIELDS)
        grid = plot_grid(plot)
        extra, mask = await self._toolbox_request(mode, form, toolbox, inpaint)
        img2img = mode == "img2img"
        params = self._params(form, img2img=img2img, toolbox=extra)
        data = await self._init_image(image) if img2img else None
        record = await self.studio.submit_grid(params, grid, confirmed=bool(plot.get("plot_confirmed")), image=data,
                                               mask=mask if img2img else None, owner=_owner(request, self.auth_on))
        await self._watch(request, record["job_ids"])
        columns, rows, blocks = record["plan"]["shape"]
        shape = f"{columns} × {rows}" + (f" × {blocks}" if blocks > 1 else "")
        gr.Info(f"Queued a {shape} plot: {len(record['job_ids'])} job(s).")
        return self.watched(request), record["grid_id"], None, _plot_status(0, len(record["job_ids"]), "queued")

    async def watch_plot(self, grid_id: str | None, request: gr.Request) -> AsyncIterator[tuple[Any, str]]:
        """The grid as its cells finish (empty places for the others), then the finished labelled grid."""
        if not grid_id:
            return
        owner = _owner(request, self.auth_on)
        with self.streams.slot(self.streams.caller(request, owner)):  # bounded per caller, like the page's watch
            async for update in self._plot_updates(grid_id, owner):
                yield update

    async def _plot_updates(self, grid_id: str, owner: str | None) -> AsyncIterator[tuple[Any, str]]:
        drawn = -1
        while True:
            try:
                record = await self.studio.grid(grid_id, owner=owner, scoped=self.scoped)
            except ComfyError as exc:
                yield gr.skip(), f"_{exc}_"
                return
            jobs: list[Job] = record["jobs"]
            finished = sum(job.state.is_final for job in jobs)
            if record.get("image") is not None:
                path = self.studio.grid_image_path(record)
                yield (await self._shown(record, path) if path else None,
                       _plot_status(finished, len(jobs), record["status"]) + " · the labelled grid")
                return
            if finished != drawn:
                drawn = finished
                picture = await self._live_grid(record, jobs)
                yield picture, _plot_status(finished, len(jobs), record["status"])
            await asyncio.sleep(PLOT_POLL)

    async def _live_grid(self, record: dict[str, Any], jobs: list[Job]) -> Any:
        """The labelled grid from the cells finished so far, as the page can show it."""
        from comfy.graph.plot import compose_grid

        images: list[bytes | None] = []
        for job in jobs:
            urls = await self.images(job) if job.state is JobState.SUCCEEDED else []
            local = next((u for u in urls if not u.startswith(("http://", "https://"))), None)
            images.append(await asyncio.to_thread(Path(local).read_bytes) if local else None)
        if not any(images):
            return None
        plan = plan_grid(GenerationParams.from_dict(record["params"]), record["grid"], confirmed=True)
        picture = await asyncio.to_thread(compose_grid, images, plan)
        if self.copies is None:
            return picture
        out = io.BytesIO()
        picture.save(out, format="PNG")
        done = sum(1 for i in images if i is not None)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"plot_{record['grid_id']}_{done}.png"
            path.write_bytes(out.getvalue())
            return await self._shown(record, str(path))

    async def _shown(self, record: dict[str, Any], path: str) -> str:
        """A plot image handed to Gradio as a copy gated like its first cell's images (the same owner)."""
        if self.copies is None:
            return path
        copies = self.copies
        return await asyncio.to_thread(copies.copy, record["job_ids"][0], path)

    # -- settings back into the form --------------------------------------------------------------

    async def _restored(self, params: dict[str, Any]) -> list[Any]:
        models = await self.studio.models()
        values, notes = toolbox_values(params, loras_offered=models.loras,
                                       styles_offered=[s.name for s in self.studio.styles()])
        if notes:
            gr.Warning("Toolbox: " + "; ".join(notes) + ".")
        shown = [bool(values[f"lora_{i}"]) for i in range(LORA_ROWS)]
        return [*(values[name] for name in RESTORED_FIELDS), shown, *(gr.Row(visible=v) for v in shown)]

    async def restore_toolbox(self, stored: dict[str, Any] | None) -> list[Any]:
        """After a (re)load: the toolbox values this browser kept (a style no longer offered is left out)."""
        stored = {k: v for k, v in (stored or {}).items() if k in RESTORED_FIELDS and v is not None}
        if not stored:
            return [gr.skip()] * (len(RESTORED_FIELDS) + 1 + LORA_ROWS)
        offered = {style.name for style in self.studio.styles()}
        stored["styles"] = [s for s in stored.get("styles") or [] if s in offered]
        shown = [bool(stored.get(f"lora_{i}")) for i in range(LORA_ROWS)]
        return [*(stored[name] if name in stored else gr.skip() for name in RESTORED_FIELDS), shown,
                *(gr.Row(visible=v) for v in shown)]

    @friendly
    async def toolbox_from_png(self, params: dict[str, Any] | None) -> list[Any]:
        """PNG info's "Use these settings" for the toolbox: LoRA rows, VAE, family, hires, styles, mask settings."""
        if not params or not params.get("prompt"):
            raise WorkflowError("This PNG has no settings to use.", field="image")
        return await self._restored(params)

    @friendly
    async def toolbox_from_job(self, job_id: str | None, request: gr.Request) -> list[Any]:
        """History's "Use these settings" for the toolbox."""
        if not job_id:
            raise WorkflowError("Select a job first.", field="job")
        job = await self._resolve(job_id, request)
        return await self._restored(job.params if job.kind == "generate" else {})


def _plot_status(done: int, total: int, status: str) -> str:
    return f"**Plot**: {done} of {total} cell(s) finished · {status}"
