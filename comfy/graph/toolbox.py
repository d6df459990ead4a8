"""The artist's toolbox as jobs use it: the style library and wildcard folders, and a job's graph from its params.

The studio ships styles (``styles/default.csv``) and wildcards (``wildcards/``); a user adds their own
under the data folder (``STUDIO_DATA_DIR/styles/*.csv``, AUTOMATIC1111's ``styles.csv`` as is, and
``STUDIO_DATA_DIR/wildcards/*.txt``), a user's file of the same name winning. Submission checks a request
and the worker builds what runs through the same :func:`comfy.graph.prepare`, so what was accepted is
what runs, and a retry redraws the same wildcards from the job's seed.

A job keeps the artist's own parameters; a grid cell also keeps its place in the plot under
:data:`GRID_CELL_KEY` (see :func:`split_job_params`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy.graph import wildcards
from comfy.graph.nodes import Graph
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams
from comfy.graph.recipe import Prepared, prepare
from comfy.graph.styles import SHIPPED_STYLES, Style, load_styles

__all__ = ["GRID_CELL_KEY", "MetadataOf", "Toolbox", "family_metadata", "split_job_params", "prepare_job"]

#: The job params key of a grid cell's place in its plot (not a generation parameter).
GRID_CELL_KEY = "grid_cell"


def split_job_params(params: dict[str, Any]) -> tuple[GenerationParams, dict[str, Any] | None]:
    """A generate job's parameters, and its grid cell when it is one."""
    values = dict(params)
    cell = values.pop(GRID_CELL_KEY, None)
    return GenerationParams.from_dict(values), cell if isinstance(cell, dict) else None


@dataclass(frozen=True)
class Toolbox:
    """Where styles and wildcards are read from: the shipped ones, then the user's (which win)."""

    style_paths: tuple[Path, ...] = (SHIPPED_STYLES,)
    #: Searched in order: the user's folder first.
    wildcard_dirs: tuple[Path, ...] = (wildcards.SHIPPED_WILDCARDS,)

    @classmethod
    def in_data_dir(cls, data_dir: Path | str) -> Toolbox:
        data_dir = Path(data_dir)
        return cls((SHIPPED_STYLES, data_dir / "styles"), (data_dir / "wildcards", wildcards.SHIPPED_WILDCARDS))

    @property
    def user_styles_dir(self) -> Path | None:
        return self.style_paths[-1] if len(self.style_paths) > 1 else None

    def styles(self) -> dict[str, Style]:
        """Every style by name (read each time: a user may add a CSV while the studio runs)."""
        return load_styles(*self.style_paths)

    def prepare(self, params: GenerationParams, object_info: ObjectInfo | None = None, *,
                mask_png: bytes | None = None, grid_cell: dict[str, Any] | None = None,
                checkpoint_metadata: dict[str, Any] | None = None) -> Prepared:
        return prepare(params, object_info, styles=self.styles(), wildcard_dirs=self.wildcard_dirs,
                       mask_png=mask_png, grid_cell=grid_cell, checkpoint_metadata=checkpoint_metadata)


#: The checkpoint's safetensors metadata by file name (ComfyClient.checkpoint_metadata), for its family.
MetadataOf = Callable[[str], Awaitable["dict[str, Any] | None"]]


async def family_metadata(params: GenerationParams, object_info: ObjectInfo | None,
                          metadata_of: MetadataOf | None) -> dict[str, Any] | None:
    """The metadata that decides the family: only asked when the artist left the family to the checkpoint."""
    if metadata_of is None or params.family is not None:
        return None
    checkpoint = params.checkpoint
    if checkpoint is None and object_info is not None and object_info.checkpoints:
        checkpoint = object_info.checkpoints[0]
    return await metadata_of(checkpoint) if checkpoint else None


async def prepare_job(params: dict[str, Any], toolbox: Toolbox, object_info: ObjectInfo | None, *,
                      read_input: Callable[[str], bytes], upload: Callable[[str], Awaitable[str]],
                      default_checkpoint: str | None = None,
                      metadata_of: MetadataOf | None = None) -> tuple[Prepared, Graph]:
    """What a generate job runs: its params prepared, its images uploaded (``upload`` of a kept input's
    name gives the server's name), and the graph, checked against ``object_info`` when there is one."""
    asked, cell = split_job_params(params)
    if asked.checkpoint is None and default_checkpoint is not None:
        asked = dataclasses.replace(asked, checkpoint=default_checkpoint)
    mask_png = read_input(asked.mask) if asked.mask and asked.inpaint_full_res else None
    metadata = await family_metadata(asked, object_info, metadata_of)
    ready = toolbox.prepare(asked, object_info, mask_png=mask_png, grid_cell=cell, checkpoint_metadata=metadata)
    uploaded = {name: await upload(getattr(asked, name)) for name in ("init_image", "mask") if getattr(asked, name)}
    if uploaded:
        ready = dataclasses.replace(ready, params=dataclasses.replace(ready.params, **uploaded))
    return ready, ready.graph(object_info, pending_uploads=False)
