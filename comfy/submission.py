"""Submitting work to the studio: checked completely before a job exists, then queued (a mixin of Studio).

A generation is checked against the limits, then against the server's own lists through the same
graph the worker will build (:func:`comfy.graph.prepare`: styles, wildcards, LoRAs, VAE, hires fix,
inpainting, outpainting, family), so a bad LoRA, VAE or style name is refused with the field and the
choices before anything is queued. Init images and masks are fitted to the size limits and kept under
the data folder; the job keeps the artist's own parameters (the wildcards are drawn again from its
seed when it runs, so a retry is the same image).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from comfy import graph as workflows
from comfy.errors import ComfyError, WorkflowError
from comfy.graph import masks
from comfy.graph.families import family_of
from comfy.graph.features import check_output_size
from comfy.graph.file_inputs import check_file_inputs
from comfy.graph.images import FittedImage, fit_image
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams, Limits
from comfy.graph.styles import Style, resolve_styles
from comfy.jobs.events import EventBus, JobEvent
from comfy.jobs.records import Job
from comfy.graph.toolbox import MetadataOf, Toolbox, family_metadata

if TYPE_CHECKING:
    from comfy.backends.pool import Pool
    from comfy.jobs.store import JobStore
    from comfy.jobs.worker import Worker
    from comfy.settings import Settings
    from comfy.storage.local import LocalStore

__all__ = ["Submission", "UPLOAD_PLACEHOLDER", "MASK_PLACEHOLDER"]

#: What stands for an image not uploaded yet, when a graph is only checked.
UPLOAD_PLACEHOLDER = "studio-upload.png"
MASK_PLACEHOLDER = "studio-mask.png"


class Submission:
    """Studio's submitting methods; they use the Studio's settings, limits, store, bus, files and worker."""

    settings: Settings
    limits: Limits
    store: JobStore
    bus: EventBus
    files: LocalStore
    worker: Worker
    pool: Pool

    if TYPE_CHECKING:
        async def object_info(self, *, refresh: bool = False) -> ObjectInfo | None: ...  # Studio's

    @property
    def toolbox(self) -> Toolbox:
        """Where styles and wildcards are read from (the worker's, so checks and runs agree)."""
        return self.worker.toolbox

    def styles(self) -> list[Style]:
        """The style library: the shipped styles, then the user's CSV files (A1111's ``styles.csv`` as is)."""
        return sorted(self.toolbox.styles().values(), key=lambda style: style.name.lower())

    async def submit(
        self,
        params: GenerationParams | dict[str, Any],
        *,
        count: int = 1,
        image: bytes | None = None,
        mask: bytes | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Queue ``count`` jobs (seeds counting up from the first). Raises :class:`WorkflowError` first if anything is wrong.

        ``mask`` (inpainting, white = repaint) must be a PNG the size of ``image``.
        """
        _count(count)
        params, note, mask_png = await self._prepared_request(params, image, mask, idempotency_key, owner)
        checked = await self._check_against_server(params, mask_png)
        # Under a key the default checkpoint is left to the worker (it fills it in when the job runs): a retry is
        # then the same request whether or not the server answered the first time (it may not have: a 503).
        params = dataclasses.replace(checked, checkpoint=params.checkpoint) if idempotency_key else checked
        jobs = []
        for index in range(count):
            one = params.with_seed((params.seed + index) % 2**64) if count > 1 else params
            key = f"{idempotency_key}#{index}" if idempotency_key and count > 1 else idempotency_key
            jobs.append(await self._enqueue(one.to_dict(), key, owner, note))
        self.worker.wake()
        return jobs

    async def _prepared_request(self, params: GenerationParams | dict[str, Any], image: bytes | None,
                                mask: bytes | None, idempotency_key: str | None,
                                owner: str | None) -> tuple[GenerationParams, str | None, bytes | None]:
        """The parameters checked, the seed resolved, the images kept: (params, note, the kept mask PNG)."""
        if isinstance(params, dict):
            params = GenerationParams.from_dict(params)
        # Under an idempotency key a random seed is drawn from the request, so a retry is the same job.
        params = params.resolve_seed(*((owner, idempotency_key) if idempotency_key else ()))
        if mask is not None and image is None:
            raise WorkflowError("A mask needs an init_image to repaint; add the image the mask was drawn on.",
                                field="mask")
        if image is not None:  # the features that need an image (inpainting, outpainting) are checked with one
            params = dataclasses.replace(params, init_image=UPLOAD_PLACEHOLDER,
                                         mask=MASK_PLACEHOLDER if mask is not None else None)
        params.check(self.limits)
        note = mask_png = None
        if image is not None:
            if mask is not None:
                await asyncio.to_thread(masks.check_mask, mask, image)
            name, fitted = await asyncio.to_thread(self._keep_image, image, multiple=8)
            if min(fitted.width, fitted.height) < 64:
                raise WorkflowError(f"The init image is {fitted.width}×{fitted.height}; it must be at least 64 "
                                    "pixels on each side.", field="image")
            # img2img runs at the image's own size (fitted to the limits), and records that size.
            params = dataclasses.replace(params, init_image=name, width=fitted.width, height=fitted.height)
            check_output_size(params, self.limits.max_width, self.limits.max_height)
            note = fitted.note
            if mask is not None:
                mask_name, kept = await asyncio.to_thread(self._keep_image, mask, multiple=8, field="mask")
                if (kept.width, kept.height) != (fitted.width, fitted.height):  # fitted alike: never seen
                    raise WorkflowError("The mask could not be fitted to the init image's size.", field="mask")
                params, mask_png = dataclasses.replace(params, mask=mask_name), kept.data
        return params, note, mask_png

    async def _enqueue(self, params: dict[str, Any], key: str | None, owner: str | None, note: str | None) -> Job:
        job, _created = await self.store.enqueue(params, kind="generate", idempotency_key=key, owner=owner, note=note)
        self.bus.publish(JobEvent(job.id, "queued", job=job.to_dict()))
        return job

    async def _check_against_server(self, params: GenerationParams, mask_png: bytes | None = None) -> GenerationParams:
        """The graph the worker will build, checked against the server's lists (None: the worker checks later)."""
        info = await self.object_info()
        if info is None:  # never seen the server: the worker checks when it is back
            resolve_styles(params.styles, self.toolbox.styles())  # the style names need no server
            return params
        if params.checkpoint is None:
            params = dataclasses.replace(params, checkpoint=workflows.default_checkpoint(info))
        probe = dataclasses.replace(params, init_image=UPLOAD_PLACEHOLDER if params.init_image else None,
                                    mask=MASK_PLACEHOLDER if params.mask else None)
        metadata = await family_metadata(params, info, self._metadata_source())
        ready = self.toolbox.prepare(probe, info, mask_png=mask_png, checkpoint_metadata=metadata)
        for name in ("prompt", "negative_prompt"):
            ran = len(getattr(ready.params, name))
            if ran > self.limits.max_prompt_length:
                raise WorkflowError(f"With its styles and wildcards the {name.replace('_', ' ')} is {ran} characters;"
                                    f" the limit is {self.limits.max_prompt_length}: use fewer styles.",
                                    field="styles" if params.styles else name)
        ready.graph(info, pending_uploads=True)
        return params

    async def with_family_defaults(self, values: dict[str, Any], left_out: Collection[str], *,
                                   by_name: bool = False) -> dict[str, Any]:
        """``values`` with the fields in ``left_out`` set to the defaults of the model family: the one chosen,
        else the checkpoint's (its metadata, else its name): SDXL at 1024×1024, Flux at CFG 1 with guidance.

        ``by_name``: decide by the checkpoint's name alone (under an idempotency key: a retry while the server
        is away must come to the same request)."""
        if not left_out:
            return values
        info = await self.object_info()
        checkpoint = values.get("checkpoint") or (workflows.default_checkpoint(info) if info else None)
        metadata, source = None, None if by_name else self._metadata_source()
        if values.get("family") is None and source is not None and checkpoint:
            with contextlib.suppress(ComfyError):  # unreachable now: the name decides
                metadata = await source(checkpoint)
        defaults = family_of(values.get("family"), checkpoint, metadata).defaults()
        return {**values, **{name: defaults[name] for name in left_out if name in defaults}}

    def _metadata_source(self) -> MetadataOf | None:
        """Where a checkpoint's metadata is asked (the one ComfyUI server; a pool's family comes from the name)."""
        backends = self.pool.backends
        return backends[0].client.checkpoint_metadata if len(backends) == 1 and backends[0].kind == "comfyui" \
            else None  # type: ignore[attr-defined]

    async def submit_workflow(
        self,
        workflow: dict[str, Any] | str | bytes,
        *,
        inputs: dict[tuple[str, str], Any] | None = None,
        images: dict[str, bytes] | None = None,
        idempotency_key: str | None = None,
        owner: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Job:
        """Queue any API-format workflow, with ``inputs`` set and ``images`` (node id → PNG) for LoadImage nodes.

        ``params`` records the studio parameters that were bound onto it, for history and metadata.
        """
        graph = workflows.parse_workflow(workflow)
        if inputs:
            graph = workflows.apply_inputs(graph, inputs)
        kept: dict[str, str] = {}
        notes = []
        for node_id, data in (images or {}).items():
            if node_id not in graph:
                raise WorkflowError(f"The workflow has no node {node_id} to take an image.", field=f"node {node_id}")
            kept[node_id], fitted = await asyncio.to_thread(self._keep_image, data, field=f"node {node_id}")
            if fitted.note:
                notes.append(f"Node {node_id}: {fitted.note}")
        info = await self.object_info()
        if self.settings.auth_users or self.settings.api_keys:  # several users: none reads another's files
            check_file_inputs(graph, info, uploads=kept)
        if info is not None:
            workflows.validate(graph, info, pending_uploads=True)
        job, _created = await self.store.enqueue({**(params or {}), "images": kept}, kind="workflow", workflow=graph,
                                                 idempotency_key=idempotency_key, owner=owner,
                                                 note=" ".join(notes) or None)
        self.bus.publish(JobEvent(job.id, "queued", job=job.to_dict()))
        self.worker.wake()
        return job

    async def submit_params_to_workflow(
        self,
        workflow: dict[str, Any] | str | bytes,
        values: dict[str, Any],
        *,
        count: int = 1,
        idempotency_key: str | None = None,
        owner: str | None = None,
    ) -> list[Job]:
        """Queue a user's workflow with some studio parameters (prompt, steps, ...) bound onto it.

        Only the parameters given are written; the workflow keeps its own values for the rest. With
        ``count`` > 1 the seeds count up from the given one (or from a random one).
        """
        if isinstance(workflow, bytes) and workflow[:8] == b"\x89PNG\r\n\x1a\n":
            graph = workflows.workflow_from_png(workflow)
        else:
            graph = workflows.parse_workflow(workflow)
        _count(count)
        base = GenerationParams.from_dict({"prompt": values.get("prompt", "-"), **values})
        base.check(self.limits)
        if count > 1 or values.get("seed") == -1:
            retry_material = (owner, idempotency_key, graph) if idempotency_key else ()
            values = {**values, "seed": base.resolve_seed(*retry_material).seed}
        jobs = []
        for index in range(count):
            one = {**values, "seed": (values["seed"] + index) % 2**64} if "seed" in values else values
            key = f"{idempotency_key}#{index}" if idempotency_key and count > 1 else idempotency_key
            jobs.append(await self.submit_workflow(workflows.bind_values(graph, one), idempotency_key=key,
                                                   owner=owner, params=one))
        return jobs

    def _keep_image(self, data: bytes, *, multiple: int = 1, field: str = "image") -> tuple[str, FittedImage]:
        """Check an upload, fit it to the size limits and keep it; the kept file's name (never a server path).

        Decoding is CPU work: call it in a thread.
        """
        if self.settings.redis_url is not None and not self.settings.shared_data:
            # The worker that runs the job may be on another machine: it reads the kept image from its own disk.
            raise WorkflowError("This studio shares its queue (REDIS_URL) but not its data folder, so an image "
                                "kept here cannot reach a worker on another machine. Mount one STUDIO_DATA_DIR on "
                                "every replica and worker and set STUDIO_SHARED_DATA=1.", field=field)
        fitted = fit_image(data, max_width=self.limits.max_width, max_height=self.limits.max_height,
                           max_bytes=self.settings.max_upload_bytes, multiple=multiple, field=field)
        return self.files.save_input(fitted.data).name, fitted


def _count(count: int) -> int:
    if not 1 <= count <= 100:
        raise WorkflowError(f"count is {count}; it must be between 1 and 100.", field="count")
    return count
