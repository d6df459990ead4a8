"""``/api/v1``: the artist's toolbox beyond one job: X/Y/Z plots (grids) and the style library.

    GET /api/v1/grids/{grid_id}         {"status", "job_ids", "image", "plan"}; image is the labelled grid's URL
    GET /api/v1/grids/{grid_id}/image   the labelled grid PNG, once every cell has ended
    DELETE /api/v1/grids/{grid_id}      cancel every cell not ended yet; the grid as GET answers it
    GET /api/v1/styles                  {"styles": [{"name", "prompt", "negative_prompt"}]}

A grid is queued by ``POST /api/v1/jobs`` (or ``/generate/``) with a ``grid`` field. Like jobs, a caller
sees only its own grids: another caller's is a 404, as if there were none.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from api.errors import ApiError
from api.guard import ApiContext, Caller
from api.jobs import COMMON, root_of
from api.models import API_PREFIX, GridOut, StyleOut, StylesOut
from comfy.errors import GridNotFound

__all__ = ["toolbox_router"]

GRID_ID = re.compile(r"^[0-9a-f]{16}$")


def toolbox_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    caller_dep = Depends(ctx.caller)
    studio = ctx.studio

    async def visible_grid(caller: Caller, grid_id: str) -> dict:
        if not GRID_ID.match(grid_id):
            raise GridNotFound(grid_id[:40])
        record = await studio.grid(grid_id, with_jobs=False)  # a poll: the status, not every cell's job
        if not ctx.may_see(caller, record.get("owner")):
            raise GridNotFound(grid_id)
        return record

    @router.get("/grids/{grid_id}", response_model=GridOut, responses=COMMON, tags=["grids"],
                summary="An X/Y/Z plot: its status and, once every cell ended, its image")
    async def get_grid(request: Request, grid_id: str, caller: Caller = caller_dep) -> GridOut:
        return grid_out(request, await visible_grid(caller, grid_id))

    @router.delete("/grids/{grid_id}", response_model=GridOut, responses=COMMON, tags=["grids"],
                   summary="Cancel an X/Y/Z plot: every cell not ended yet")
    async def cancel_grid(request: Request, grid_id: str, caller: Caller = caller_dep) -> GridOut:
        """Queued cells are cancelled at once, running ones are stopped on ComfyUI too (they become
        ``cancelled`` moments later); cells that ended stay. A grid of another caller is a 404."""
        record = await visible_grid(caller, grid_id)
        return grid_out(request, await studio.cancel_grid(record["grid_id"]))

    @router.get("/grids/{grid_id}/image", response_class=FileResponse, tags=["grids"], summary="The grid PNG",
                responses={200: {"content": {"image/png": {}}}, **COMMON})
    async def get_grid_image(grid_id: str, caller: Caller = caller_dep) -> FileResponse:
        record = await visible_grid(caller, grid_id)
        path = studio.grid_image_path(record)
        if path is None and record.get("image"):
            raise ApiError(404, "not_found", f"The image of grid {grid_id} is no longer in the outputs.")
        if path is None:
            raise ApiError(404, "not_found", f"Grid {grid_id} is {record['status']}: its image is drawn once every "
                           "cell has ended.")
        return FileResponse(path, media_type="image/png", filename=f"grid_{grid_id}.png")

    @router.get("/styles", response_model=StylesOut, responses=COMMON, tags=["styles"],
                summary="The style library: shipped, plus the user's CSV files")
    async def get_styles(caller: Caller = caller_dep) -> StylesOut:
        return StylesOut(styles=[StyleOut(**style.to_dict()) for style in studio.styles()])

    return router


def grid_out(request: Request, record: dict) -> GridOut:
    grid_id = record["grid_id"]
    image = f"{root_of(request)}{API_PREFIX}/grids/{grid_id}/image" if record.get("image") else None
    return GridOut(grid_id=grid_id, status=record["status"], job_ids=record["job_ids"], image=image,
                   plan=record["plan"])
