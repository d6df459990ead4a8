"""From what the artist asked for to what runs: styles, wildcards, LoRA tags, names and family, then the graph.

:func:`prepare` applies the text features in A1111's order (styles first, so a style may use
wildcards; then wildcards and ``{a|b}`` choices, drawn from the seed; then ``<lora:...>`` tags are taken
out of the text), matches the file names to the server's, and fixes the model family. The job keeps the
artist's own parameters (so "use these settings" and retries redo the same draw); :meth:`Prepared.record`
is what the PNG metadata adds: the text that really ran and each feature used.

>>> from comfy.graph.params import GenerationParams
>>> ready = prepare(GenerationParams(prompt="a {red|red} fox <lora:ink:0.5>", checkpoint="sdxl_base.safetensors",
...                                  seed=3), styles={})
>>> ready.params.prompt, ready.params.family, ready.params.loras
('a red fox', 'sdxl', [{'name': 'ink', 'strength': 0.5, 'strength_clip': None}])
>>> sorted(ready.record())
['family', 'loras', 'prompt_ran']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy.graph import masks, wildcards
from comfy.graph.builder import build_graph, resolve_names
from comfy.graph.families import family_of
from comfy.graph.features import hires_of, hires_size, outpaint_of
from comfy.graph.masks import Region
from comfy.graph.nodes import Graph
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import RANDOM_SEED, GenerationParams
from comfy.graph.styles import SHIPPED_STYLES, Style, apply_styles, load_styles, resolve_styles

__all__ = ["Prepared", "prepare", "output_size"]


@dataclass(frozen=True)
class Prepared:
    """The parameters as they run (text expanded, names resolved) beside the artist's own."""

    asked: GenerationParams
    params: GenerationParams
    styles: tuple[Style, ...] = ()
    mask_region: Region | None = None
    #: The grid cell this image is, when it is part of an X/Y/Z plot (see comfy.graph.plot).
    grid_cell: dict[str, Any] | None = field(default=None)

    def graph(self, object_info: ObjectInfo | None = None, *, pending_uploads: bool = True) -> Graph:
        return build_graph(self.params, object_info, mask_region=self.mask_region, pending_uploads=pending_uploads)

    def record(self) -> dict[str, Any]:
        """What the PNG metadata records of the toolbox: only the features used."""
        run, out = self.params, {}
        if run.prompt != self.asked.prompt:
            out["prompt_ran"] = run.prompt
        if run.negative_prompt != self.asked.negative_prompt:
            out["negative_prompt_ran"] = run.negative_prompt
        if self.styles:
            out["styles"] = [s.name for s in self.styles]
        if run.loras:
            out["loras"] = run.loras
        if run.vae:
            out["vae"] = run.vae
        if run.hires:
            out["hires"] = {**run.hires, "size": list(hires_size(run.width, run.height, run.hires["scale"]))}
        if run.mask:
            out["mask"] = {"blur": run.mask_blur, "grow": run.mask_grow, "only_masked": run.inpaint_full_res,
                           "padding": run.inpaint_padding}
            if self.mask_region is not None:
                out["mask"]["region"] = list(self.mask_region.as_tuple())
        if run.outpaint:
            out["outpaint"] = run.outpaint
        if run.family and (self.asked.family != run.family or run.family != "sd15"):
            out["family"] = run.family
        if self.grid_cell is not None:
            out["grid"] = self.grid_cell
        return out


def prepare(params: GenerationParams, object_info: ObjectInfo | None = None, *,
            styles: Mapping[str, Style] | None = None,
            wildcard_dirs: Path | str | Sequence[Path | str] = (wildcards.SHIPPED_WILDCARDS,),
            checkpoint_metadata: Mapping[str, Any] | None = None,
            mask_png: bytes | None = None, grid_cell: dict[str, Any] | None = None) -> Prepared:
    """Everything :func:`~comfy.graph.builder.build_graph` needs, from the artist's parameters.

    ``styles`` is the library (:func:`~comfy.graph.styles.load_styles`; by default the shipped one);
    ``wildcard_dirs`` are searched in order (the user's folder first). ``checkpoint_metadata`` is the
    checkpoint's safetensors metadata (GET /view_metadata/checkpoints), for its family. ``mask_png``
    gives the "only masked" area. The seed must be resolved. Raises :class:`WorkflowError`.
    """
    if params.seed == RANDOM_SEED:
        raise ValueError("resolve the seed (GenerationParams.resolve_seed) before preparing: wildcards draw from it")
    library = load_styles(SHIPPED_STYLES) if styles is None else styles
    chosen = tuple(resolve_styles(params.styles, library))
    prompt, negative = apply_styles(params.prompt, params.negative_prompt, chosen)
    prompt = wildcards.expand(prompt, params.seed, wildcard_dirs, stream="prompt")
    negative = wildcards.expand(negative, params.seed, wildcard_dirs, stream="negative_prompt")
    run = resolve_names(dataclasses.replace(params, prompt=prompt, negative_prompt=negative, styles=None),
                        object_info)
    run = dataclasses.replace(run, family=family_of(params.family, run.checkpoint, checkpoint_metadata).name)
    region = None
    if run.mask and run.inpaint_full_res and mask_png is not None:
        region = masks.masked_region(mask_png, run.inpaint_padding, run.width, run.height)
    return Prepared(params, run, chosen, region, grid_cell)


def output_size(params: GenerationParams, image_size: tuple[int, int] | None = None) -> tuple[int, int] | None:
    """The size of the images the graph saves, when it can be known (an init image's size is needed for img2img).

    >>> output_size(GenerationParams(prompt="x", width=512, height=768, hires={"scale": 2}))
    (1024, 1536)
    """
    if not params.init_image:
        hires = hires_of(params.hires)
        return hires_size(params.width, params.height, hires.scale) if hires else (params.width, params.height)
    if image_size is None:
        return None
    outpaint = outpaint_of(params.outpaint)
    if outpaint is not None:
        return (image_size[0] + outpaint.left + outpaint.right, image_size[1] + outpaint.top + outpaint.bottom)
    return image_size
