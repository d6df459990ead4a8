"""``/api/v1``: generate (waiting), submit jobs, follow them, cancel them, fetch their images.

Every route here needs the caller's key when ``API_KEYS`` is set (see :mod:`api.guard`), and a
caller sees only the jobs it made. Idempotency: ``Idempotency-Key`` on any POST makes a retry with
the same key and body return the same job (409 for the same key with another body); keys are scoped
per API key. A random seed (-1) under an idempotency key is drawn from the key, so a retry is "the
same body" and not a new random request.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from api.errors import ApiError, api_field, error_response
from api.guard import ApiContext, Caller
from api.models import (
    API_PREFIX,
    BatchAccepted,
    BatchResult,
    ErrorResponse,
    GenerateRequest,
    GenerateResult,
    GridAccepted,
    JobAccepted,
    JobList,
    JobOut,
    JobStatus,
    WorkflowJobRequest,
    accepted,
    decode_image,
    job_out,
    job_url,
    result_of,
)
from comfy import graph as workflows
from comfy.errors import ComfyError, JobNotFound, StorageError, WorkflowError
from comfy.graph.params import RANDOM_SEED, GenerationParams, seed_from
from comfy.jobs.records import Job, JobState

__all__ = ["JOB_ID", "jobs_router", "root_of", "visible_job"]

#: Job ids are 16 lowercase hex digits; anything else is refused before touching storage.
JOB_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_BATCH = 50

_E = {"model": ErrorResponse}
COMMON = {401: _E, 404: _E, 422: _E, 429: _E}
SUBMIT = {**COMMON, 400: _E, 409: _E, 413: _E, 503: _E}

#: How a job's failure answers the synchronous endpoint (by the job's error code).
_FAILED_STATUS = {"invalid_request": 400, "prompt_rejected": 400, "server_timeout": 504,
                  "server_unavailable": 503, "storage_error": 503}

IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", max_length=200,
    description="Retry-safe submission: the same key and body give the same job; another body gives 409.",
)]


def root_of(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def visible_job(ctx: ApiContext, caller: Caller, job_id: str) -> Job:
    """The job if it exists and the caller may see it; :class:`JobNotFound` otherwise (no hint which)."""
    if not JOB_ID.match(job_id):
        raise JobNotFound(job_id[:40])
    job = await ctx.studio.job(job_id)
    if not ctx.may_see(caller, job.owner):
        raise JobNotFound(job_id)
    return job


async def _engine_params(ctx: ApiContext, req: GenerateRequest, owner: str | None, key: str | None) -> dict[str, Any]:
    # What the request leaves out (size, steps, CFG, sampler...) takes the model family's defaults.
    params = await ctx.studio.with_family_defaults(req.engine_params(), req.left_out(), by_name=key is not None)
    if params["seed"] == RANDOM_SEED and key:
        params["seed"] = seed_from(owner, key, req.model_dump(exclude={"init_image"}))
    return params


def _prefixed(index: int, exc: WorkflowError) -> ApiError:
    field = api_field(exc.field)
    return ApiError(400, exc.code, f"Item {index}: {exc}", field=f"[{index}].{field}" if field else f"[{index}]")


async def _images(req: GenerateRequest) -> tuple[bytes | None, bytes | None]:
    # Up to STUDIO_MAX_REQUEST_BYTES of base64: decoded in a thread, so other requests keep being served.
    image = await asyncio.to_thread(decode_image, req.init_image, "init_image") if req.init_image else None
    mask = await asyncio.to_thread(decode_image, req.mask, "mask") if req.mask else None
    return image, mask


async def _submit(ctx: ApiContext, req: GenerateRequest, caller: Caller, key: str | None) -> Job:
    if req.grid is not None:
        raise ApiError(400, "invalid_request", "A grid is one job per cell: send it alone to POST /api/v1/jobs or "
                       "POST /api/v1/generate/, not in a batch.", field="grid")
    image, mask = await _images(req)
    [job] = await ctx.studio.submit(await _engine_params(ctx, req, caller.owner, key), image=image, mask=mask,
                                    idempotency_key=key, owner=caller.owner)
    return job


async def _submit_grid(ctx: ApiContext, req: GenerateRequest, caller: Caller, request: Request,
                       key: str | None) -> Response:
    """202 {grid_id, job_ids, location} for a request with a ``grid``; the same Idempotency-Key and body
    answer the same grid, another body 409."""
    image, mask = await _images(req)
    record = await ctx.studio.submit_grid(await _engine_params(ctx, req, caller.owner, key), req.grid or {},
                                          confirmed=req.grid_confirmed, image=image, mask=mask, owner=caller.owner,
                                          idempotency_key=key)
    location = f"{root_of(request)}{API_PREFIX}/grids/{record['grid_id']}"
    body = GridAccepted(grid_id=record["grid_id"], job_ids=record["job_ids"], location=location)
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": location})


async def _wait(ctx: ApiContext, job_id: str, deadline: float) -> tuple[Job | None, dict[str, float] | None, str]:
    """Follow a job until it ends: (job, timings, "done"), or (None, None, "timeout" / "backend_down")."""
    try:
        async with asyncio.timeout_at(deadline), contextlib.aclosing(ctx.studio.follow(job_id)) as events:
            async for event in events:
                if event.kind == "retrying" and event.error_code == "server_unavailable":
                    return None, None, "backend_down"  # nothing reached ComfyUI: it is down
                if event.final:
                    return await ctx.studio.job(job_id), event.timings, "done"
    except TimeoutError:
        pass
    return None, None, "timeout"


async def _backend_down(ctx: ApiContext, cancel: list[str], *, keyed: bool = False) -> ApiError:
    """503 for a synchronous request while ComfyUI is down. Its jobs are cancelled, not left to run later;
    under an Idempotency-Key they stay queued instead, so that a retry with the key finds them alive."""
    if not keyed:
        for job_id in cancel:
            with contextlib.suppress(JobNotFound):
                await ctx.studio.cancel(job_id)
    reason = ctx.studio.worker.backend_down or "it does not answer"
    if keyed and cancel:
        done = ("the job stays queued and runs when ComfyUI is back; retry with the same Idempotency-Key "
                "to get its result")
    else:
        done = "the job was cancelled" if cancel else "nothing was queued"
    return ApiError(503, "backend_unavailable", f"ComfyUI cannot be reached ({reason}); {done}. Try again "
                    "later, or use POST /api/v1/jobs to queue work that waits for ComfyUI.",
                    headers={"Retry-After": "10"}, extra={"job_id": cancel[0] if len(cancel) == 1 else None})


async def _check_backend(ctx: ApiContext) -> None:
    if ctx.studio.worker.backend_down:
        raise await _backend_down(ctx, [])


def _answer(job: Job, timings: dict[str, float] | None, root: str) -> Response:
    if job.state is JobState.SUCCEEDED:
        return JSONResponse(result_of(job, timings, root).model_dump(mode="json"))
    if job.state is JobState.CANCELLED:
        return error_response(409, "cancelled", "The job was cancelled before it finished.", job_id=job.id)
    error = job.error or {"code": "failed", "message": "The job failed."}
    return error_response(_FAILED_STATUS.get(error["code"], 502), error["code"], error["message"], job_id=job.id)


def jobs_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    caller_dep = Depends(ctx.caller)
    studio = ctx.studio

    async def generate(request: Request, body: GenerateRequest, idempotency_key: IdempotencyKey = None,
                       caller: Caller = caller_dep) -> Response:
        if idempotency_key is None or body.grid is not None:
            await _check_backend(ctx)
        if body.grid is not None:  # one job per cell: answered at once, followed at the grid's URL
            return await _submit_grid(ctx, body, caller, request, idempotency_key)
        job = await _submit(ctx, body, caller, idempotency_key)
        if idempotency_key is not None and ctx.studio.worker.backend_down:
            # The key's job (queued now, or by an earlier try) stays queued: a retry with the key reaches it.
            raise await _backend_down(ctx, [job.id], keyed=True)
        loop = asyncio.get_running_loop()
        done, timings, outcome = await _wait(ctx, job.id, loop.time() + ctx.settings.sync_wait_seconds)
        if outcome == "backend_down":
            raise await _backend_down(ctx, [job.id], keyed=idempotency_key is not None)
        if done is None:
            current = await studio.job(job.id)
            location = job_url(job.id, root_of(request))
            return JSONResponse(accepted(current, root_of(request)).model_dump(), status_code=202,
                                headers={"Location": location})
        return _answer(done, timings, root_of(request))

    generate_doc = dict(
        response_model=GenerateResult, tags=["generate"],
        responses={**SUBMIT, 202: {"model": JobAccepted, "description": "Still running after "
                                   "STUDIO_SYNC_WAIT_SECONDS: poll the Location."},
                   502: _E, 504: _E},
        summary="Generate and wait for the images",
        description="Queues one job and waits for it. 200 with the images when it ends in time; 202 with the "
                    "job's URL (Location header and body) when it takes longer than STUDIO_SYNC_WAIT_SECONDS; "
                    "503 when ComfyUI is down (the job is cancelled then, unless an Idempotency-Key keeps it "
                    "queued for a retry with that key); 502/504/400 when the job fails.",
    )
    router.add_api_route("/generate/", generate, methods=["POST"], **generate_doc)  # type: ignore[arg-type]
    router.add_api_route("/generate", generate, methods=["POST"], include_in_schema=False,
                         response_model=GenerateResult)

    @router.post("/generate/batch", response_model=BatchResult, tags=["generate"], summary="Generate several, wait",
                 responses={**SUBMIT, 202: {"model": BatchAccepted, "description": "Not all ended in time."}})
    async def generate_batch(
        request: Request,
        items: Annotated[list[GenerateRequest], Body(min_length=1, max_length=MAX_BATCH)],
        idempotency_key: IdempotencyKey = None,
        caller: Caller = caller_dep,
    ) -> Response:
        """Queues every item (all are checked first), waits for all; results in the order given.
        A failed item is in the results with its ``error``; the whole answer is 202 if any is still running."""
        if idempotency_key is None:
            await _check_backend(ctx)
        for index, item in enumerate(items):
            try:
                GenerationParams.from_dict(item.engine_params()).check(studio.limits)
            except WorkflowError as exc:
                raise _prefixed(index, exc) from exc
        jobs: list[Job] = []
        for index, item in enumerate(items):
            key = f"{idempotency_key}#b{index}" if idempotency_key else None
            try:
                jobs.append(await _submit(ctx, item, caller, key))
            except (ComfyError, ApiError) as exc:
                if idempotency_key is None:
                    for job in jobs:  # all or nothing: withdraw the items already queued
                        await studio.cancel(job.id)
                error = _prefixed(index, exc) if isinstance(exc, WorkflowError) else exc
                if isinstance(exc, ApiError) and exc.field:
                    exc.field = f"[{index}].{exc.field}"
                if isinstance(error, ApiError) and idempotency_key is not None and jobs:
                    # Under a key they stay (cancelled, a retry with the key would meet 409 for each of them).
                    error.message += (f" Items before {index} stay queued under the Idempotency-Key; fix item "
                                      f"{index} and send the batch again with the same key.")
                if error is exc:
                    raise
                raise error from exc
        if idempotency_key is not None and studio.worker.backend_down:
            raise await _backend_down(ctx, [job.id for job in jobs], keyed=True)
        deadline = asyncio.get_running_loop().time() + ctx.settings.sync_wait_seconds
        waited = await asyncio.gather(*(_wait(ctx, job.id, deadline) for job in jobs))
        if any(outcome == "backend_down" for _, _, outcome in waited):
            raise await _backend_down(ctx, [job.id for job in jobs], keyed=idempotency_key is not None)
        root = root_of(request)
        if any(done is None for done, _, _ in waited):
            body = BatchAccepted(jobs=[accepted(await studio.job(job.id), root) for job in jobs])
            return JSONResponse(body.model_dump(), status_code=202)
        results = [result_of(done, timings, root) for done, timings, _ in waited if done is not None]
        return JSONResponse(BatchResult(results=results).model_dump(mode="json"))

    @router.post("/jobs", status_code=202, response_model=JobAccepted, responses=SUBMIT, tags=["jobs"],
                 summary="Queue a job")
    async def create_job(request: Request, body: GenerateRequest, idempotency_key: IdempotencyKey = None,
                         caller: Caller = caller_dep) -> Response:
        """Queues a job with the studio's parameters and answers at once; follow it at ``location``.

        With ``grid`` (an X/Y/Z plot) one job per cell is queued: 202 ``{grid_id, job_ids, location}``."""
        if body.grid is not None:
            return await _submit_grid(ctx, body, caller, request, idempotency_key)
        job = await _submit(ctx, body, caller, idempotency_key)
        return _accepted_response(job, request)

    @router.post("/workflows/jobs", status_code=202, response_model=JobAccepted, responses=SUBMIT,
                 tags=["jobs"], summary="Queue any API-format workflow")
    async def create_workflow_job(request: Request, body: WorkflowJobRequest, idempotency_key: IdempotencyKey = None,
                                  caller: Caller = caller_dep) -> Response:
        """Queues a ComfyUI workflow exported with *Export (API)*: ``values`` binds studio parameters by role,
        ``inputs`` sets node inputs directly, ``images`` feeds LoadImage nodes (base64)."""
        graph = workflows.parse_workflow(body.workflow)
        values = _workflow_values(ctx, body, caller.owner, idempotency_key)
        if values:
            graph = workflows.bind_values(graph, values)
        images = await asyncio.to_thread(
            lambda: {node: decode_image(data, f"images.{node}") for node, data in body.images.items()})
        inputs = {(node, name): value for node, given in body.inputs.items() for name, value in given.items()}
        job = await studio.submit_workflow(graph, inputs=inputs, images=images, idempotency_key=idempotency_key,
                                           owner=caller.owner, params=values or None)
        return _accepted_response(job, request)

    @router.get("/jobs", response_model=JobList, responses=COMMON, tags=["jobs"], summary="List jobs, newest first")
    async def list_jobs(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 50,
        cursor: Annotated[int | None, Query(ge=0, description="next_cursor of the previous page.")] = None,
        state: Annotated[list[JobStatus] | None, Query(description="Only these states (repeat to give several).")]
        = None,
        caller: Caller = caller_dep,
    ) -> JobList:
        page = await studio.jobs(states=[JobState(s) for s in state] if state else None,
                                 owner=None if ctx.guard.open else caller.owner, limit=limit, cursor=cursor)
        pending = {job_id: at for at, job_id in enumerate(await studio.store.pending_ids())} \
            if any(j.state is JobState.QUEUED for j in page.jobs) else {}
        root = root_of(request)
        return JobList(jobs=[job_out(j, position=pending.get(j.id), root=root) for j in page.jobs],
                       next_cursor=page.next_cursor, total=page.total)

    @router.get("/jobs/{job_id}", response_model=JobOut, responses=COMMON, tags=["jobs"], summary="One job")
    async def get_job(request: Request, job_id: str, caller: Caller = caller_dep) -> JobOut:
        """State, progress 0..1, the node running, queue position, images with URLs, timestamps and error."""
        job = await visible_job(ctx, caller, job_id)
        position = await studio.position(job.id) if job.state is JobState.QUEUED else None
        return job_out(job, position=position, root=root_of(request))

    @router.delete("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], summary="Cancel a job",
                   responses={**COMMON, 202: {"model": JobOut, "description": "Running: ComfyUI was told to stop."},
                              409: _E})
    async def cancel_job(request: Request, job_id: str, caller: Caller = caller_dep) -> Response:
        """A queued job is cancelled at once (200); a running one is stopped on ComfyUI too (202, it becomes
        ``cancelled`` moments later). 409 for a job that already succeeded or failed."""
        job = await visible_job(ctx, caller, job_id)
        if job.state in (JobState.SUCCEEDED, JobState.FAILED):
            raise ApiError(409, "already_finished", f"Job {job.id} already {job.state.value}; nothing to cancel.",
                           extra={"job_id": job.id})
        job = await studio.cancel(job.id)
        status = 200 if job.state is JobState.CANCELLED else 202
        return JSONResponse(job_out(job, root=root_of(request)).model_dump(mode="json"), status_code=status)

    image_doc = {200: {"content": {"image/png": {}}, "description": "The file, with its content type."}, **COMMON}

    @router.get("/jobs/{job_id}/images/{index}", response_class=FileResponse, responses=image_doc,
                tags=["artifacts"], summary="One output image by position")
    async def get_image(job_id: str, index: Annotated[int, PathParam(ge=0, le=10_000)],
                        caller: Caller = caller_dep) -> Response:
        job = await visible_job(ctx, caller, job_id)
        if index >= len(job.outputs):
            raise ApiError(404, "not_found", f"Job {job.id} has {len(job.outputs)} image(s); there is no #{index}.")
        return await _file(ctx, job, index)

    @router.get("/jobs/{job_id}/artifacts/{filename}", response_class=FileResponse, responses=image_doc,
                tags=["artifacts"], summary="One output file by name")
    async def get_artifact(job_id: str, filename: str, caller: Caller = caller_dep) -> Response:
        job = await visible_job(ctx, caller, job_id)
        for index, output in enumerate(job.outputs):
            if str(output.get("key", "")).rsplit("/", 1)[-1] == filename:
                return await _file(ctx, job, index)
        raise ApiError(404, "not_found", f"Job {job.id} has no file named {filename[:100]!r}.")

    @router.get("/jobs/{job_id}/preview", tags=["artifacts"], summary="The latest preview of a running job",
                responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **COMMON},
                response_class=Response)
    async def get_preview(job_id: str, caller: Caller = caller_dep) -> Response:
        job = await visible_job(ctx, caller, job_id)
        event = studio.bus.latest_preview(job.id)
        if event is None or event.preview is None:
            raise ApiError(404, "not_found", f"Job {job.id} has no preview now (only running jobs have one).")
        return Response(event.preview, media_type=event.preview_mime or "image/jpeg",
                        headers={"Cache-Control": "no-store"})

    return router


def _accepted_response(job: Job, request: Request) -> JSONResponse:
    body = accepted(job, root_of(request))
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": body.location})


def _workflow_values(ctx: ApiContext, body: WorkflowJobRequest, owner: str | None, key: str | None) -> dict[str, Any]:
    """The studio parameters to bind, in the engine's names, checked, with a random seed resolved."""
    values = dict(body.values)
    if "cfg_scale" in values:
        values["cfg"] = values.pop("cfg_scale")
    if "init_image" in values:
        raise ApiError(400, "invalid_request", "Send images in 'images' (node id -> base64), not in values.",
                       field="values.init_image")
    if not values:
        return values
    try:
        GenerationParams.from_dict({"prompt": values.get("prompt", "-"), **values}).check(ctx.studio.limits)
    except WorkflowError as exc:
        raise ApiError(400, exc.code, str(exc), field=f"values.{api_field(exc.field)}") from exc
    if values.get("seed") == RANDOM_SEED:
        values["seed"] = seed_from(owner, key, body.model_dump(exclude={"images"})) if key else secrets.randbelow(2**53)
    return values


async def _file(ctx: ApiContext, job: Job, index: int) -> Response:
    """Output ``index`` of ``job``: the local file (its key checked to stay inside the outputs folder) or,
    when only S3 has it now, a redirect to a presigned URL."""
    output = job.outputs[index]
    try:
        path = ctx.studio.files.path_for(str(output.get("key", "")))
    except StorageError:
        raise ApiError(404, "not_found", "That file does not exist.") from None
    outputs = Path(ctx.studio.files.outputs_dir).resolve()
    resolved = path.resolve()
    if resolved.is_relative_to(outputs) and resolved.is_file():
        return FileResponse(resolved, media_type=output.get("content_type") or "application/octet-stream",
                            filename=resolved.name, content_disposition_type="inline",
                            headers={"Cache-Control": "private, max-age=3600"})
    if getattr(ctx.studio, "uploader", None) is not None:  # S3_KEEP_LOCAL=false: the bucket has the only copy
        with contextlib.suppress(StorageError, IndexError):
            url = (await ctx.studio.image_urls(job))[index]
            if url.startswith(("https://", "http://")):
                return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    raise ApiError(404, "artifact_missing", "The file is no longer on the server.")
