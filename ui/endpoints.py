"""The page's named Gradio API (``/generate``, ``/job_status``, ``/cancel``, ``/jobs``) for gradio_client and MCP.

A mixin of :class:`ui.handlers.Handlers`: it uses the handler's studio, owner checks and image URLs.
"""

from __future__ import annotations

import base64
import functools
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from comfy import ComfyError, GenerationParams, Job, JobEvent, JobState, WorkflowError
from ui.errors import _owner, _to_gr_error
from ui.numbers import api_flag, api_number

__all__ = ["NamedEndpoints", "named"]


def _decode_data_url(value: str) -> bytes:
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise WorkflowError("init_image must be a base64 string (or a data: URL) of a PNG or JPEG.",
                            field="init_image") from None


class NamedEndpoints:
    """The named endpoints; their docstrings are the descriptions gradio_client and MCP clients see."""

    studio: Any
    auth_on: bool
    streams: Any  #: ui.streams.PageStreams

    async def api_generate(self, prompt: str, negative_prompt: str = "", checkpoint: str = "",
                           sampler: str = "euler", scheduler: str = "normal", steps: int = 20, cfg: float = 7.0,
                           seed: int = -1, width: int = 512, height: int = 512, batch_size: int = 1,
                           batch_count: int = 1, denoise: float = 1.0, init_image: str = "",
                           loras: list[dict] | None = None, vae: str = "", hires: dict | None = None,
                           mask: str = "", mask_blur: int = 4, mask_grow: int = 0, inpaint_full_res: bool = False,
                           inpaint_padding: int = 32, outpaint: dict | None = None, styles: list[str] | None = None,
                           family: str = "", guidance: float | None = None,
                           request: gr.Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        """Queue a generation (text to image, or image to image with init_image); returns {"job_ids": [...],
        "seeds": [...]} at once: follow a job with job_status, list them with jobs.

        Args:
            prompt: What to draw.
            negative_prompt: What to avoid.
            checkpoint: A checkpoint file on the server; empty for its first.
            sampler: A ComfyUI sampler name (euler, dpmpp_2m...).
            scheduler: A ComfyUI scheduler name (normal, karras...).
            steps: Sampling steps.
            cfg: Classifier-free guidance scale.
            seed: -1 for a random seed; the one used is returned.
            width: Pixels, a multiple of 8.
            height: Pixels, a multiple of 8.
            batch_size: Images per job.
            batch_count: Jobs to queue (seeds count up).
            denoise: How much of init_image to repaint (image to image).
            init_image: A PNG or JPEG as base64 (or a data: URL), for image to image.
            loras: LoRAs as [{"name", "strength"}], names from the server's list; <lora:name:0.8> in the prompt works too.
            vae: A VAE file; empty for the checkpoint's own.
            hires: Hires fix {"scale", "denoise", "steps", "upscaler"}: a second pass at scale x the size.
            mask: Inpainting: a PNG the size of init_image as base64, white = repaint.
            mask_blur: Pixels of blur on the mask's edge.
            mask_grow: Pixels the mask grows (negative: shrinks).
            inpaint_full_res: Repaint only the masked area, at full size.
            inpaint_padding: Pixels around the masked area, with inpaint_full_res.
            outpaint: Pixels {"left", "top", "right", "bottom"} (multiples of 8) added around init_image.
            styles: Style names, applied in order.
            family: sd15, sdxl or flux; empty recognises it from the checkpoint.
            guidance: Flux guidance; empty for the family's default.
        """
        try:
            params = GenerationParams(prompt=prompt, negative_prompt=negative_prompt, checkpoint=checkpoint or None,
                                      sampler=sampler, scheduler=scheduler, steps=api_number(int, "steps", steps), cfg=api_number(float, "cfg", cfg),
                                      seed=api_number(int, "seed", seed), width=api_number(int, "width", width), height=api_number(int, "height", height),
                                      batch_size=api_number(int, "batch_size", batch_size), denoise=api_number(float, "denoise", denoise), loras=loras or None,
                                      vae=vae or None, hires=hires or None, mask_blur=api_number(int, "mask_blur", mask_blur),
                                      mask_grow=api_number(int, "mask_grow", mask_grow), inpaint_full_res=api_flag("inpaint_full_res", inpaint_full_res),
                                      inpaint_padding=api_number(int, "inpaint_padding", inpaint_padding), outpaint=outpaint or None,
                                      styles=styles or None, family=family or None,
                                      guidance=None if guidance is None else api_number(float, "guidance", guidance))
            image = _decode_data_url(init_image) if init_image else None
            mask_png = _decode_data_url(mask) if mask else None
            jobs = await self.studio.submit(params, count=api_number(int, "batch_count", batch_count), image=image, mask=mask_png,
                                            owner=_owner(request, self.auth_on))
        except ComfyError as exc:
            raise _to_gr_error(exc) from exc
        return {"job_ids": [j.id for j in jobs], "seeds": [j.params["seed"] for j in jobs]}

    async def api_job_status(self, job_id: str, request: gr.Request = None) -> AsyncIterator[dict[str, Any]]:  # type: ignore[assignment]
        """Follow a job: yields its state on every change (queued place, progress, node), ending when done.

        Args:
            job_id: The id generate returned.
        """
        try:
            await self._own(job_id, request)
            with self.streams.slot(self.streams.caller(request, _owner(request, self.auth_on))):
                job: Job | None = None
                async for event in self.studio.follow(job_id):
                    if event.kind == "preview":
                        continue
                    if job is None or event.kind != "progress" or job.state is not JobState.RUNNING:
                        job = await self.studio.job(job_id)  # progress changes nothing else: read on the rest
                    yield await self._status_dict(job, event)
                    if event.final:
                        return
        except ComfyError as exc:
            raise _to_gr_error(exc) from exc

    async def _status_dict(self, job: Job, event: JobEvent) -> dict[str, Any]:
        """One update; only a queued job has a place, and only one with outputs has images to look up."""
        return {
            "job_id": job.id, "state": job.state.value, "event": event.kind,
            "progress": event.progress if event.progress is not None else job.progress,
            "node": event.node or job.node, "step": event.step, "steps": event.steps,
            "position": await self.studio.position(job.id) if job.state is JobState.QUEUED else None,
            "seed": job.params.get("seed"), "images": await self.images(job) if job.outputs else [],
            "error": job.error, "at": event.at, "sent": time.time(),
        }

    async def api_cancel(self, job_id: str, request: gr.Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        """Cancel a job (a running one is interrupted on ComfyUI too); returns its state.

        Args:
            job_id: The id generate returned.
        """
        try:
            await self._own(job_id, request)
            job = await self.studio.cancel(job_id)
        except ComfyError as exc:
            raise _to_gr_error(exc) from exc
        return {"job_id": job.id, "state": job.state.value, "cancel_requested": job.cancel_requested}

    async def api_jobs(self, state: str = "", limit: int = 20, request: gr.Request = None) -> list[dict[str, Any]]:  # type: ignore[assignment]
        """The newest jobs, newest first, with their state, prompt, progress, image URLs and error.

        Args:
            state: Only jobs in this state (queued, running, succeeded, failed, cancelled); empty for all.
            limit: How many, 1 to 200.
        """
        try:
            states = [JobState(state)] if state else None
            size = max(1, min(api_number(int, "limit", limit), 200))
        except ValueError:
            raise gr.Error(f"state must be one of: {', '.join(s.value for s in JobState)}.") from None
        except WorkflowError as exc:
            raise _to_gr_error(exc) from exc
        page = await self.studio.jobs(states=states, **self._whose(request), limit=size)
        return [{"job_id": j.id, "state": j.state.value, "prompt": j.params.get("prompt"), "progress": j.progress,
                 "images": await self.images(j), "error": j.error} for j in page.jobs]


def named(fn: Any, name: str) -> Any:
    """``fn`` under another name (what gradio_client and MCP call the tool), with its signature and docstring."""
    if inspect.isasyncgenfunction(fn):
        async def stream(*args: Any, **kwargs: Any) -> Any:
            async for item in fn(*args, **kwargs):
                yield item
        wrapper: Any = stream
    else:
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)
        wrapper = call
    functools.update_wrapper(wrapper, fn)
    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper
