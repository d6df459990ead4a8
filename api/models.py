"""The REST API's request and response bodies (pydantic), and how jobs become them.

Requests are strict (``"20"`` is not a number of steps) and refuse unknown fields, so a typo is a
422 that names it instead of a silently ignored option. The bounds here are the engine's hard ones;
the limits an operator configures (``STUDIO_MAX_STEPS``...) are checked by the engine and answer 400.

URLs in responses are root-relative (``/api/v1/jobs/<id>/images/0``): they stay right behind any
proxy (RunPod, Hugging Face) without trusting forwarded headers.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.errors import ApiError
from comfy.graph.params import MAX_SEED
from comfy.jobs.records import Job

__all__ = [
    "API_PREFIX", "Artifact", "BackendOut", "BatchAccepted", "BatchResult", "ErrorBody", "ErrorResponse",
    "FieldProblem", "GenerateRequest", "GridAccepted", "GridOut", "StyleOut", "StylesOut", "GenerateResult", "HealthOut", "ImageOut", "JobAccepted", "JobError",
    "JobList", "JobOut", "JobStatus", "ModelsOut", "ReadyOut", "StorageOut", "WorkerOut", "WorkflowJobRequest",
    "accepted", "artifacts", "decode_image", "job_out", "job_url", "result_of",
]

API_PREFIX = "/api/v1"

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


# -- errors -----------------------------------------------------------------------------------------


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable: not_found, invalid_request, validation_error, ...")
    message: str = Field(description="A sentence for a person.")
    field: str | None = Field(None, description="The request field to fix, when one is to blame.")
    job_id: str | None = Field(None, description="The job concerned (e.g. the one an idempotency key names).")
    details: list[FieldProblem] | None = Field(None, description="Every validation problem (422 only).")


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- requests ---------------------------------------------------------------------------------------

class GenerateRequest(BaseModel):
    """The studio's generation parameters (what the UI's form sets)."""

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{"prompt": "a lighthouse at dawn, oil painting", "steps": 20, "seed": 42}]},
    )

    prompt: str = Field(min_length=1, description="What to draw.")
    negative_prompt: str = Field("", description="What to avoid.")
    checkpoint: str | None = Field(None, description="A checkpoint from GET /models; the server's first by default.")
    sampler: str = Field("euler", description="A sampler from GET /models.")
    scheduler: str = Field("normal", description="A scheduler from GET /models.")
    steps: int = Field(20, ge=1, description="Sampling steps (at most STUDIO_MAX_STEPS).")
    cfg_scale: float = Field(7.0, ge=0, le=100, description="Classifier-free guidance scale; `cfg` (the page's "
                             "name for it) is accepted as well.")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed; the one used is returned.")
    width: int = Field(512, ge=64, multiple_of=8, description="Pixels, a multiple of 8 (at most STUDIO_MAX_WIDTH).")
    height: int = Field(512, ge=64, multiple_of=8, description="Pixels, a multiple of 8 (at most STUDIO_MAX_HEIGHT).")
    batch_size: int = Field(1, ge=1, description="Images per job (at most STUDIO_MAX_BATCH_SIZE).")
    denoise: float = Field(1.0, ge=0, le=1, description="How much of the init image to repaint (img2img).")
    init_image: str | None = Field(
        None, description="For img2img: a PNG, JPEG or WebP as base64 (a data: URL is accepted too). The job runs "
        "at the image's own size, scaled down to fit STUDIO_MAX_WIDTH x STUDIO_MAX_HEIGHT (sides multiples of 8; "
        "width and height are then the size that runs); over 64 megapixels is refused."
    )

    # -- the artist's toolbox -------------------------------------------------------------------------
    loras: list[LoraIn] | None = Field(None, description="LoRAs from GET /models \"loras\", chained after the "
                                       "checkpoint (LoraLoader). A1111's <lora:name:0.8> in the prompt works too.")
    vae: str | None = Field(None, description="A VAE from GET /models \"vaes\"; null for the checkpoint's own.")
    hires: HiresIn | None = Field(None, description="Hires fix: a second pass on the upscaled result, scale x the size.")
    mask: str | None = Field(None, description="Inpainting: a PNG the size of init_image as base64, white = repaint.")
    mask_blur: int = Field(4, description="Pixels of blur on the mask's edge.")
    mask_grow: int = Field(0, description="Pixels the mask grows (negative: shrinks) before the blur.")
    inpaint_full_res: bool = Field(False, description="\"Only masked\": repaint the masked area at full size.")
    inpaint_padding: int = Field(32, description="Pixels around the masked area, with inpaint_full_res.")
    outpaint: OutpaintIn | None = Field(None, description="Pixels (multiples of 8) added around init_image.")
    styles: list[str] | None = Field(None, description="Style names from GET /api/v1/styles, applied in order.")
    family: str | None = Field(None, description="sd15, sdxl or flux; null recognises it from the checkpoint.")
    guidance: float | None = Field(None, description="Flux guidance (FluxGuidance); null for the family's default.")
    grid: dict[str, Any] | None = Field(
        None, description='X/Y/Z plot: {"x": {"param": "steps", "values": [10, 20]}, "y": ..., "z": ...}, one job '
        "per cell; values may be A1111's text (\"1-5\", \"1-10 (+2)\"). Answers 202 with the grid's URL.")
    grid_confirmed: bool = Field(False, description="Run a grid of more than 64 cells.")

    @model_validator(mode="before")
    @classmethod
    def _cfg_alias(cls, data: Any) -> Any:
        """``cfg`` is ``cfg_scale`` (the page and the engine call it ``cfg``); both at once must agree."""
        if isinstance(data, dict) and "cfg" in data:
            data = dict(data)
            cfg = data.pop("cfg")
            if "cfg_scale" in data and data["cfg_scale"] != cfg:
                raise ApiError(422, "validation_error", "cfg and cfg_scale are the same setting; send one of them.",
                               field="cfg")
            data["cfg_scale"] = cfg
        return data

    def left_out(self) -> set[str]:
        """The engine's names of the generation fields this request did not set (the family fills them in)."""
        given = {"cfg" if name == "cfg_scale" else name for name in self.model_fields_set}
        return {"width", "height", "steps", "cfg", "sampler", "scheduler", "guidance"} - given

    def engine_params(self) -> dict[str, Any]:
        """The engine's :class:`GenerationParams` fields (``cfg_scale`` is ``cfg`` there), without the images."""
        values = self.model_dump(exclude={"init_image", "mask", "cfg_scale", "grid", "grid_confirmed"})
        values["cfg"] = self.cfg_scale
        return values


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, description="A file from GET /models \"loras\" (the extension may be left out).")
    strength: float = Field(1.0, description="Strength on the model.")
    strength_clip: float | None = Field(None, description="Strength on the text encoder; null: the same.")


class HiresIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    scale: float = Field(2.0, description="1.0 to 4.0: the output is scale x width x height.")
    denoise: float = Field(0.5, description="How much the second pass repaints.")
    steps: int | None = Field(None, description="Steps of the second pass; null: the same as steps.")
    upscaler: str = Field("latent", description="\"latent\", or a file from GET /models \"upscale_models\".")


class OutpaintIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    left: int = Field(0, ge=0)
    top: int = Field(0, ge=0)
    right: int = Field(0, ge=0)
    bottom: int = Field(0, ge=0)


GenerateRequest.model_rebuild()


class WorkflowJobRequest(BaseModel):
    """Any ComfyUI workflow in API format (Export (API) in ComfyUI), with optional changes."""

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{
            "workflow": {"3": {"class_type": "KSampler", "inputs": {"seed": 1}}},
            "values": {"prompt": "a fox in the snow", "seed": 7},
            "inputs": {"3": {"steps": 12}},
        }]},
    )

    workflow: dict[str, Any] = Field(description="The API-format graph: node id -> {class_type, inputs}.")
    values: dict[str, Any] = Field(
        default_factory=dict,
        description="Studio parameters bound onto the graph by role (prompt, negative_prompt, seed, steps, "
                    "cfg_scale, sampler, scheduler, width, height, checkpoint, denoise); seed -1 is random.",
    )
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Direct overrides: node id -> {input name: value}."
    )
    images: dict[str, str] = Field(
        default_factory=dict, description="Images for LoadImage nodes: node id -> PNG/JPEG/WebP as base64."
    )


# -- responses --------------------------------------------------------------------------------------


class ImageOut(BaseModel):
    url: str = Field(description="Root-relative URL of the image file.")
    width: int | None
    height: int | None
    content_type: str


class Artifact(ImageOut):
    index: int
    filename: str
    size: int | None = None
    node_id: str | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    location: str = Field(description="Root-relative URL to poll (GET) or cancel (DELETE) the job.")
    events: str = Field(description="Root-relative URL of the job's Server-Sent Events stream.")


class BatchAccepted(BaseModel):
    jobs: list[JobAccepted]


class GenerateResult(BaseModel):
    job_id: str
    status: JobStatus
    images: list[ImageOut]
    metadata: dict[str, Any] = Field(
        description="seed, generation_time (s, started to finished), queue_wait, execution_time, download_time "
                    "(s, when known) and the parameters used."
    )
    error: JobError | None = None


class BatchResult(BaseModel):
    results: list[GenerateResult]


class JobOut(BaseModel):
    job_id: str
    kind: Literal["generate", "workflow"]
    status: JobStatus
    progress: float = Field(description="0..1")
    node: str | None = Field(description="The node running now, as ComfyUI names it.")
    step: int | None
    steps: int | None
    position: int | None = Field(description="Place in our queue, 0 = next; null unless queued.")
    attempts: int
    cancel_requested: bool
    note: str | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    images: list[Artifact]
    error: JobError | None
    params: dict[str, Any]
    location: str
    events: str


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: int | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last.")
    total: int | None = Field(description="Jobs matching the filter, all pages together.")


class ModelsOut(BaseModel):
    checkpoints: list[str]
    samplers: list[str]
    schedulers: list[str]
    loras: list[str] = Field(default_factory=list)
    vaes: list[str] = Field(default_factory=list)
    upscale_models: list[str] = Field(default_factory=list)


class StyleOut(BaseModel):
    name: str
    prompt: str = Field(description="The style's prompt; {prompt} is where the artist's prompt goes.")
    negative_prompt: str


class StylesOut(BaseModel):
    styles: list[StyleOut]


class GridAccepted(BaseModel):
    grid_id: str
    job_ids: list[str] = Field(description="One job per cell, row-major (x fastest, then y, then z).")
    location: str = Field(description="Root-relative URL of the grid: GET it for its status and image.")


class GridOut(BaseModel):
    grid_id: str
    status: Literal["queued", "running", "succeeded", "partial", "failed", "cancelled"] = Field(
        description="partial: every cell ended, some failed; failed: none has an image; cancelled: every cell "
        "without an image was cancelled (DELETE /api/v1/grids/{grid_id}).")
    job_ids: list[str]
    image: str | None = Field(description="Root-relative URL of the labelled grid PNG once every cell ended.")
    plan: dict[str, Any] = Field(description="The axes, their values, the shape [x, y, z] and each cell's label.")


class BackendOut(BaseModel):
    url: str = Field(description="The ComfyUI URL (or RunPod endpoint URL) without credentials or query.")
    name: str | None = Field(None, description="What jobs record as their backend: the URL, or runpod:<endpoint>.")
    kind: Literal["comfyui", "runpod", "demo"] = Field(
        "comfyui", description="A ComfyUI server, RunPod Serverless, or the built-in demo backend.")
    state: Literal["up", "down", "probing"] = Field(
        "up", description="down: marked down by the pool (its jobs go elsewhere); probing: being asked again.")
    reachable: bool
    error: str | None = None
    gpu: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    queue_remaining: int | None = Field(None, description="Prompts pending or running there, ours included.")
    comfyui_version: str | None = None
    load: int | None = Field(None, description="What routing compares: our jobs there plus its own queue.")
    in_flight: int | None = Field(None, description="Our jobs running there now.")
    max_in_flight: int | None = Field(None, description="How many of our jobs it takes at once.")
    workers_idle: int | None = Field(None, description="RunPod Serverless: idle GPU workers.")
    workers_running: int | None = Field(None, description="RunPod Serverless: busy GPU workers.")
    jobs_in_queue: int | None = Field(None, description="RunPod Serverless: jobs waiting for a worker.")
    jobs_in_progress: int | None = Field(None, description="RunPod Serverless: jobs running.")
    down_for_s: float | None = Field(None, description="Seconds since it was marked down.")


class WorkerOut(BaseModel):
    running: bool
    in_flight: int = Field(description="Prompts this worker has on ComfyUI now.")
    backend_down: str | None = Field(None, description="Why the worker is waiting for the backend, if it is.")


class StorageOut(BaseModel):
    writable: bool
    free_bytes: int | None
    total_bytes: int | None
    error: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    backend: BackendOut = Field(description="The first backend configured (see backends for all of them).")
    backends: list[BackendOut] = Field(description="Every backend, in the order configured.")
    queue: dict[str, int] = Field(description="Our jobs by state.")
    worker: WorkerOut
    storage: StorageOut = Field(description="The data folder: writable, free space.")
    objects: dict[str, Any] = Field(description="Where outputs are kept: local, or the S3 bucket and whether it "
                                                "answers (secrets never shown).")
    store: dict[str, Any] = Field(default_factory=dict, description=(
        "The job store: diskcache or redis, reachable, latency_ms, error, and with Redis the replicas and workers "
        "alive (id, role, host, pid, started_at, seen_at)."))


class ReadyOut(BaseModel):
    status: Literal["ready"]
    backend: str = Field(description="The first backend that answers.")
    backends_up: int = Field(description="How many backends answer.")
    backends_total: int
    queue: dict[str, int]


# -- conversions ------------------------------------------------------------------------------------


def job_url(job_id: str, root: str = "") -> str:
    return f"{root}{API_PREFIX}/jobs/{job_id}"


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def artifacts(job: Job, root: str = "") -> list[Artifact]:
    out = []
    for index, output in enumerate(job.outputs):
        key = str(output.get("key", ""))
        out.append(Artifact(
            index=index, url=f"{job_url(job.id, root)}/images/{index}", filename=key.rsplit("/", 1)[-1],
            width=output.get("width"), height=output.get("height"),
            content_type=output.get("content_type") or "application/octet-stream",
            size=output.get("size"), node_id=output.get("node_id"),
        ))
    return out


def _public_params(job: Job) -> dict[str, Any]:
    """The job's parameters as the API names them, without local file paths."""
    params = dict(job.params)
    if "cfg" in params:
        params["cfg_scale"] = params.pop("cfg")
    for name in ("init_image", "mask"):
        if params.get(name):
            params[name] = True  # the kept copy's path is the server's business
    if isinstance(params.get("images"), dict):
        params["images"] = sorted(params["images"])  # node ids that received an image
    return params


def job_out(job: Job, *, position: int | None = None, root: str = "") -> JobOut:
    return JobOut(
        job_id=job.id, kind=job.kind, status=job.state.value, progress=job.progress, node=job.node,  # type: ignore[arg-type]
        step=job.step, steps=job.steps, position=position, attempts=job.attempts,
        cancel_requested=job.cancel_requested, note=job.note, queued_at=_time(job.queued_at),
        started_at=_time(job.started_at), finished_at=_time(job.finished_at), images=artifacts(job, root),
        error=JobError(**job.error) if job.error else None, params=_public_params(job),
        location=job_url(job.id, root), events=f"{job_url(job.id, root)}/events",
    )


def accepted(job: Job, root: str = "") -> JobAccepted:
    return JobAccepted(job_id=job.id, status=job.state.value, location=job_url(job.id, root),  # type: ignore[arg-type]
                       events=f"{job_url(job.id, root)}/events")


def result_of(job: Job, timings: dict[str, float] | None = None, root: str = "") -> GenerateResult:
    """What the synchronous endpoint answers for a job that ended."""
    metadata: dict[str, Any] = _public_params(job)
    metadata.pop("images", None)
    if job.started_at is not None and job.finished_at is not None:
        metadata["generation_time"] = round(job.finished_at - job.started_at, 4)
    if timings:
        metadata["queue_wait"] = round(timings.get("queue_wait_s", 0.0), 4)
        metadata["execution_time"] = round(timings.get("execution_s", 0.0), 4)
        metadata["download_time"] = round(timings.get("download_s", 0.0), 4)
    elif job.started_at is not None and job.queued_at is not None:
        metadata["queue_wait"] = round(max(job.started_at - job.queued_at, 0.0), 4)
    images = [ImageOut(url=a.url, width=a.width, height=a.height, content_type=a.content_type)
              for a in artifacts(job, root)]
    return GenerateResult(job_id=job.id, status=job.state.value, images=images, metadata=metadata,  # type: ignore[arg-type]
                          error=JobError(**job.error) if job.error else None)


def decode_image(data: str, field: str) -> bytes:
    """Bytes of a base64 image (or ``data:...;base64,`` URL); a 400 naming ``field`` when it is not base64."""
    text = data.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ApiError(400, "invalid_request", f"{field} must be base64 data (a data: URL with ;base64).",
                           field=field)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_request", f"{field} is not valid base64.", field=field) from None
