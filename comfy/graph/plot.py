"""X/Y/Z plots: axes in AUTOMATIC1111's syntax, one job per cell, and the labelled grid image.

``grid = {"x": {"param": "steps", "values": "10-30 (+10)"}, "y": {"param": "cfg", "values": [5, 7]}}``:
an axis plots any generation field (see :data:`PLOT_PARAMS`), a toolbox field such as ``hires.denoise``,
or ``prompt_sr`` (search/replace: the first value is searched for in the prompts and each value put in
its place). Values are a list, or a text in A1111's syntax: ``a, b, "c, d"``; ``1-5``; ``1-10 (+2)``;
``10-1 (-3)``; ``1-10 [5]`` (5 values spread evenly); floats alike. Cells run row-major (x fastest,
then y, then z), all with the same seed unless the seed is an axis.

>>> axis_values("steps", "1-10 (+3)")
[1, 4, 7, 10]
>>> axis_values("cfg", "4-6 [3]")
[4.0, 5.0, 6.0]
>>> [c.label for c in plan_grid(_demo(), {"x": {"param": "steps", "values": [10, 20]}}).cells]
['steps: 10', 'steps: 20']
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from comfy.errors import WorkflowError
from comfy.graph.params import GenerationParams

__all__ = ["PLOT_PARAMS", "MAX_CELLS", "MAX_GRID_CELLS", "MAX_SHEET_PIXELS", "Axis", "Cell", "GridPlan",
           "axis_values", "plan_grid", "apply_value", "compose_grid"]

#: Without confirmation, a grid may have at most this many cells (jobs).
MAX_CELLS = 64
#: Even confirmed, a grid has at most this many cells: a request queues at most this many jobs (A1111 warns
#: at a few hundred images too), and its cells are planned and checked before anything is queued.
MAX_GRID_CELLS = 256
#: The labelled grid image stays within this many pixels (64 MP): bigger cells are drawn smaller.
MAX_SHEET_PIXELS = 64_000_000
#: Nor is a side of it longer than this (pixels).
MAX_SHEET_SIDE = 32_768
#: An axis given as text is at most this long (characters).
MAX_AXIS_TEXT = 10_000
_AXES = ("x", "y", "z")
#: What an axis may plot, and the kind of its values.
PLOT_PARAMS: dict[str, type] = {
    "prompt": str, "negative_prompt": str, "prompt_sr": str, "checkpoint": str, "sampler": str, "scheduler": str,
    "steps": int, "cfg": float, "seed": int, "width": int, "height": int, "denoise": float, "vae": str,
    "styles": str, "family": str, "guidance": float, "mask_blur": int, "mask_grow": int, "inpaint_padding": int,
    "hires.scale": float, "hires.denoise": float, "hires.steps": int, "hires.upscaler": str,
}
_NO_VAE = ("none", "automatic", "")

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(\s*([+-]\d+)\s*\))?\s*")
_RANGE_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]?\s*")
_RANGE_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(\s*([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_RANGE_COUNT_FLOAT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[\s*(\d+(?:\.\d*)?)\s*\]?\s*")
#: One axis has at most this many values (more could only make a grid over :data:`MAX_GRID_CELLS`).
_MAX_VALUES = MAX_GRID_CELLS


@dataclass(frozen=True)
class Axis:
    param: str
    values: tuple[Any, ...]

    def label(self, value: Any) -> str:
        if self.param == "prompt_sr":
            return str(value)
        if self.param in ("checkpoint", "vae", "hires.upscaler") and isinstance(value, str):
            return value.rsplit("/", 1)[-1].rsplit(".", 1)[0] if "." in value else value
        return f"{self.param}: {_show(value)}"


@dataclass(frozen=True)
class Cell:
    """One image of the grid: its place, the value of each axis, and the parameters it runs with."""

    index: int
    position: tuple[int, int, int]  #: (x, y, z) indices
    values: dict[str, Any]  #: axis name -> value
    params: GenerationParams
    label: str

    def metadata(self, plan: GridPlan) -> dict[str, Any]:
        """What the PNG records of the cell."""
        return {"index": self.index, "cells": len(plan.cells), "position": list(self.position),
                "axes": {name: {"param": axis.param, "value": self.values[name]} for name, axis in plan.axes.items()}}


@dataclass(frozen=True)
class GridPlan:
    axes: dict[str, Axis]
    cells: list[Cell]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(self.axes[a].values) if a in self.axes else 1 for a in _AXES)  # type: ignore[return-value]


def axis_values(param: str, values: Any) -> list[Any]:
    """The values of one axis, from a list or A1111's text syntax, converted to the parameter's kind."""
    kind = _kind(param)
    if isinstance(values, str):
        if len(values) > MAX_AXIS_TEXT:
            raise WorkflowError(f"The values of the {param} axis are {len(values)} characters long; the most is "
                                f"{MAX_AXIS_TEXT}.", field="grid")
        items = _split(values)
        if kind in (int, float):
            items = _expand_ranges(items, kind, param)
    elif isinstance(values, (list, tuple)):
        if len(values) > _MAX_VALUES:
            raise WorkflowError(f"The {param} axis has {len(values)} values; the most is {_MAX_VALUES}.",
                                field="grid")
        items = list(values)
    else:
        raise WorkflowError(f"The values of the {param} axis must be a list or a text like \"1, 2, 3\".",
                            field="grid")
    if not items:
        raise WorkflowError(f"The {param} axis has no values; give at least one.", field="grid")
    if len(items) > _MAX_VALUES:
        raise WorkflowError(f"The {param} axis has {len(items)} values; the most is {_MAX_VALUES}.", field="grid")
    return [_convert(item, kind, param) for item in items]


def plan_grid(params: GenerationParams, grid: Mapping[str, Any], *, confirmed: bool = False) -> GridPlan:
    """Every cell of a plot, row-major. The seed must be resolved, so that every cell shares it.

    Raises :class:`WorkflowError` (field ``grid``) for an unknown axis or parameter, bad values, a
    prompt S/R whose search text is not in the prompts, or more than :data:`MAX_CELLS` cells unless
    ``confirmed``.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise WorkflowError('grid must be an object like {"x": {"param": "steps", "values": [10, 20]}}.',
                            field="grid")
    unknown = sorted(set(grid) - set(_AXES))
    if unknown:
        raise WorkflowError(f"grid has no axis {unknown[0]!r}; the axes are x, y and z.", field=f"grid.{unknown[0]}")
    axes: dict[str, Axis] = {}
    for name in _AXES:
        spec = grid.get(name)
        if spec is None:
            continue
        if not isinstance(spec, Mapping) or "param" not in spec or "values" not in spec:
            raise WorkflowError(f'grid.{name} must be an object like {{"param": "steps", "values": [10, 20]}}.',
                                field=f"grid.{name}")
        param = spec["param"]
        if param not in PLOT_PARAMS:
            raise WorkflowError(f"{param!r} is not a plot parameter (grid.{name}); choose one of: "
                                f"{', '.join(PLOT_PARAMS)}.", field=f"grid.{name}.param")
        if any(axis.param == param for axis in axes.values()):
            raise WorkflowError(f"{param} is on two axes; plot each parameter once.", field=f"grid.{name}.param")
        axes[name] = Axis(param, tuple(axis_values(param, spec["values"])))
    shape = [len(axes[a].values) if a in axes else 1 for a in _AXES]
    total = math.prod(shape)
    sizes = " × ".join(str(len(a.values)) for a in axes.values())
    if total > MAX_GRID_CELLS:  # from the shape alone: no cell is built
        raise WorkflowError(f"This grid makes {total} images ({sizes}); the most a grid may make, even confirmed, "
                            f"is {MAX_GRID_CELLS}: use fewer values, or split it into several grids.", field="grid")
    if total > MAX_CELLS and not confirmed:
        raise WorkflowError(f"This grid makes {total} images ({sizes}), more than {MAX_CELLS}: confirm to run them "
                            "all, or use fewer values.", field="grid")
    cells = []
    for index, (z, y, x) in enumerate(itertools.product(*(range(n) for n in reversed(shape)))):
        values = {name: axes[name].values[(x, y, z)[_AXES.index(name)]] for name in axes}
        cell_params = params
        for name, value in values.items():
            cell_params = apply_value(cell_params, axes[name], value)
        label = ", ".join(axes[name].label(v) for name, v in values.items())
        cells.append(Cell(index, (x, y, z), values, cell_params, label))
    return GridPlan(axes, cells)


def apply_value(params: GenerationParams, axis: Axis, value: Any) -> GenerationParams:
    """``params`` with one axis set to ``value`` (as its cells have it)."""
    param = axis.param
    if param == "prompt_sr":
        search = axis.values[0]
        if search not in params.prompt and search not in params.negative_prompt:
            raise WorkflowError(f"Prompt S/R did not find {search!r} (its first value) in the prompt or the negative "
                                "prompt; the first value is the text to replace.", field="grid")
        return dataclasses.replace(params, prompt=params.prompt.replace(search, value),
                                   negative_prompt=params.negative_prompt.replace(search, value))
    if param.startswith("hires."):
        hires = dict(params.hires or {"scale": 2.0, "denoise": 0.5})
        hires[param.split(".", 1)[1]] = value
        return dataclasses.replace(params, hires=hires)
    if param == "styles":
        names = [s.strip() for s in str(value).split("+") if s.strip()]  # "Cinematic + Enhance": both
        return dataclasses.replace(params, styles=names or None)
    if param == "vae" and str(value).lower() in _NO_VAE:
        return dataclasses.replace(params, vae=None)
    if param == "seed" and value == -1:
        raise WorkflowError("A seed axis needs concrete seeds, not -1.", field="grid")
    return dataclasses.replace(params, **{param: value})


def _kind(param: str) -> type:
    return PLOT_PARAMS.get(param, str)


def _split(text: str) -> list[str]:
    """A1111's ``csv_string_to_list_strip``: comma-separated, quotes keep a comma."""
    row = next(csv.reader(io.StringIO(text), skipinitialspace=True), [])
    return [item.strip() for item in row if item.strip()]


def _expand_ranges(items: list[str], kind: type, param: str) -> list[Any]:
    """Ranges expanded, counting as it goes: past :data:`_MAX_VALUES` in all it stops with a sentence."""
    out: list[Any] = []
    for item in items:
        if len(out) >= _MAX_VALUES:
            raise WorkflowError(f"The {param} axis makes more than {_MAX_VALUES} values; the most is {_MAX_VALUES}.",
                                field="grid")
        if kind is int and (m := _RANGE.fullmatch(item)):
            start, end = _int(m.group(1)), _int(m.group(2))
            step = int(m.group(3)) if m.group(3) else 1
            out += _checked(range(start, end + 1, step), param, len(out))  # A1111's rule: 10-1 (-3) is 10, 7, 4
        elif kind is int and (m := _RANGE_COUNT.fullmatch(item)):
            out += [int(v) for v in _linspace(_int(m.group(1)), _int(m.group(2)), int(m.group(3)), param, len(out))]
        elif kind is float and (m := _RANGE_FLOAT.fullmatch(item)):
            start, end = _float(m.group(1)), _float(m.group(2))
            step = float(m.group(3)) if m.group(3) else 1.0
            out += _arange(start, end, step, param, len(out))
        elif kind is float and (m := _RANGE_COUNT_FLOAT.fullmatch(item)):
            out += _linspace(_float(m.group(1)), _float(m.group(2)), int(float(m.group(3))), param, len(out))
        else:
            out.append(item)
    return out


def _int(text: str) -> int:
    return int(text.replace(" ", ""))


def _float(text: str) -> float:
    return float(text.replace(" ", ""))


def _too_many(param: str, count: int, before: int) -> WorkflowError:
    more = f" after the {before} before it" if before else ""
    return WorkflowError(f"The {param} range makes {count} values{more}; the most is {_MAX_VALUES}.", field="grid")


def _checked(values: range, param: str, before: int = 0) -> list[int]:
    if before + len(values) > _MAX_VALUES:
        raise _too_many(param, len(values), before)
    if not values:
        raise WorkflowError(f"The {param} range is empty: its step goes away from its end.", field="grid")
    return list(values)


def _linspace(start: float, end: float, count: int, param: str, before: int = 0) -> list[float]:
    if not 1 <= count <= _MAX_VALUES:
        raise WorkflowError(f"The {param} count [{count}] must be between 1 and {_MAX_VALUES}.", field="grid")
    if before + count > _MAX_VALUES:
        raise _too_many(param, count, before)
    if count == 1:
        return [float(start)]
    return [round(start + (end - start) * i / (count - 1), 10) for i in range(count)]


def _arange(start: float, end: float, step: float, param: str, before: int = 0) -> list[float]:
    """A1111's ``np.arange(start, end + step, step)``, without float drift in the values."""
    if step == 0 or (end - start) / step < 0:
        raise WorkflowError(f"The {param} range is empty: its step goes away from its end.", field="grid")
    count = math.floor((end - start) / step + 1e-9) + 1
    if before + count > _MAX_VALUES:
        raise _too_many(param, count, before)
    return [round(start + i * step, 10) for i in range(count)]


def _convert(item: Any, kind: type, param: str) -> Any:
    if kind is str:
        if not isinstance(item, str):
            raise WorkflowError(f"The {param} axis takes text values; {item!r} is not text.", field="grid")
        return item
    if isinstance(item, bool):
        raise WorkflowError(f"The {param} axis takes numbers; {item!r} is not one.", field="grid")
    try:
        number = float(item)
    except (TypeError, ValueError):
        raise WorkflowError(f"The {param} axis takes numbers; {item!r} is not one (ranges look like 1-10 (+2) "
                            "or 1-10 [5]).", field="grid") from None
    if kind is int:
        if not number.is_integer():
            raise WorkflowError(f"The {param} axis takes whole numbers; {item!r} is not one.", field="grid")
        return int(number)
    return number


def _show(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


# ------------------------------------------------------------------------------------------------ image


def compose_grid(images: Sequence[Image.Image | bytes | Path | None], plan: GridPlan, *,
                 background: str = "white") -> Image.Image:
    """The plot as one image: cells row-major, x labels above, y labels on the left, one block per z value.

    ``images`` are the cells' images in :attr:`GridPlan.cells` order (PNG bytes, files or PIL images;
    None for a cell that failed, drawn empty; a file that cannot be read is drawn empty too). Files and
    bytes are decoded one at a time as they are drawn. Each cell's box is the largest cell's size; a cell of another
    shape is fitted into it keeping its proportions (letterboxed). Boxes are drawn smaller when the sheet
    would pass :data:`MAX_SHEET_PIXELS` or :data:`MAX_SHEET_SIDE`.
    """
    if len(images) != len(plan.cells):
        raise ValueError(f"{len(images)} images for {len(plan.cells)} cells")
    opened = [_open(i) for i in images]
    sizes = [i.size for i in opened if i is not None]
    cell_w, cell_h = (max(w for w, _ in sizes), max(h for _, h in sizes)) if sizes else (256, 256)
    columns, rows, blocks = plan.shape
    layout = _layout(plan, cell_w, cell_h)
    for _ in range(8):  # shrink the boxes until the sheet fits (labels do not shrink below 14 px)
        width, height = layout.size
        scale = min(1.0, math.sqrt(MAX_SHEET_PIXELS / (width * height)), MAX_SHEET_SIDE / width,
                    MAX_SHEET_SIDE / height)
        if scale >= 1.0:
            break
        cell_w, cell_h = max(8, int(cell_w * scale * 0.98)), max(8, int(cell_h * scale * 0.98))
        layout = _layout(plan, cell_w, cell_h)
    sheet = Image.new("RGB", layout.size, background)
    draw = ImageDraw.Draw(sheet)
    font, left, top, title, gap = layout.font, layout.left, layout.top, layout.title, layout.gap
    block_w = left + columns * cell_w
    for cell, image, given in zip(plan.cells, opened, images, strict=True):
        x, y, z = cell.position
        if image is not None:
            fitted = _fit(image, cell_w, cell_h)
            ox = z * (block_w + gap) + left + x * cell_w + (cell_w - fitted.width) // 2
            oy = title + top + y * cell_h + (cell_h - fitted.height) // 2
            sheet.paste(fitted, (ox, oy))
            if image is not given:  # opened here from bytes: one decoded cell at a time
                image.close()
    x_axis, y_axis, z_axis = (plan.axes.get(a) for a in _AXES)
    for z in range(blocks):
        ox = z * (block_w + gap)
        if z_axis:
            _centred(draw, z_axis.label(z_axis.values[z]), font, ox + left, 4, columns * cell_w, title - 8)
        if x_axis:
            for x, value in enumerate(x_axis.values):
                _centred(draw, x_axis.label(value), font, ox + left + x * cell_w, title + 4, cell_w, top - 8)
        if y_axis:
            for y, value in enumerate(y_axis.values):
                _centred(draw, y_axis.label(value), font, ox, title + top + y * cell_h, left, cell_h)
    return sheet


def _open(image: Image.Image | bytes | Path | None) -> Image.Image | None:
    """A lazily opened image (only its header read); None for a file that is not an image."""
    try:
        if isinstance(image, (bytes, bytearray)):
            return Image.open(io.BytesIO(image))
        return Image.open(image) if isinstance(image, Path) else image
    except (OSError, Image.UnidentifiedImageError):
        return None


@dataclass(frozen=True)
class _Layout:
    font: Any
    left: int
    top: int
    title: int
    gap: int
    size: tuple[int, int]


def _layout(plan: GridPlan, cell_w: int, cell_h: int) -> _Layout:
    """Where the labels go for cells of this size, and the sheet's size."""
    columns, rows, blocks = plan.shape
    font = _font(max(14, cell_w // 16))
    x_axis, y_axis, z_axis = (plan.axes.get(a) for a in _AXES)
    top = _text_height(font) * 2 + 16 if x_axis else 0
    left = min(cell_w, max((_text_width(font, y_axis.label(v)) for v in y_axis.values), default=0) + 24) \
        if y_axis else 0
    title = _text_height(font) + 16 if z_axis else 0
    gap = 24 if blocks > 1 else 0
    block_w, block_h = left + columns * cell_w, title + top + rows * cell_h
    return _Layout(font, left, top, title, gap, (blocks * block_w + (blocks - 1) * gap, block_h))


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image scaled to fit ``width`` × ``height`` keeping its proportions."""
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    picture = image.convert("RGB")
    return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _text_width(font: Any, text: str) -> int:
    box = font.getbbox(text)
    return int(box[2] - box[0])


def _text_height(font: Any) -> int:
    box = font.getbbox("Ag")
    return int(box[3] - box[1]) + 4


def _centred(draw: ImageDraw.ImageDraw, text: str, font: Any, x: int, y: int, width: int, height: int) -> None:
    """Draw ``text`` wrapped to ``width`` and centred in the box (lines that do not fit are cut)."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and _text_width(font, trial) > width - 8:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    step = _text_height(font)
    lines = lines[: max(1, height // step)]
    start = y + (height - step * len(lines)) // 2
    for i, text_line in enumerate(lines):
        draw.text((x + (width - _text_width(font, text_line)) // 2, start + i * step), text_line, fill="black",
                  font=font)


def _demo() -> GenerationParams:
    return GenerationParams(prompt="a fox", seed=1)
