"""X/Y/Z plots: A1111's axis syntax, the cells (row-major, one job each), refusals, and the grid image."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from comfy.errors import WorkflowError
from comfy.graph.builder import build_graph
from comfy.graph.params import GenerationParams
from comfy.graph.plot import (MAX_AXIS_TEXT, MAX_CELLS, MAX_GRID_CELLS, MAX_SHEET_PIXELS, PLOT_PARAMS, axis_values,
                              compose_grid, plan_grid)
from tests.toolbox_support import toolbox_info

BASE = GenerationParams(prompt="a cat in a hat", negative_prompt="a dog", seed=77,
                        checkpoint="random-sd15.safetensors")


@pytest.mark.parametrize(("param", "text", "expected"), [
    ("steps", "1-5", [1, 2, 3, 4, 5]),
    ("steps", "1-10 (+2)", [1, 3, 5, 7, 9]),
    ("steps", "10-1 (-3)", [10, 7, 4]),  # A1111's own result: the end + 1 is the stop
    ("steps", "1-10 [5]", [1, 3, 5, 7, 10]),
    ("steps", "5, 10-12, 20", [5, 10, 11, 12, 20]),
    ("seed", "-1-1", [-1, 0, 1]),
    ("cfg", "1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("cfg", "0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),
    ("cfg", "4-8 [3]", [4.0, 6.0, 8.0]),
    ("cfg", "7.5, 3", [7.5, 3.0]),
    ("sampler", "euler, dpmpp_2m,  ddim", ["euler", "dpmpp_2m", "ddim"]),
    ("prompt_sr", 'cat, "dog, big", bird', ["cat", "dog, big", "bird"]),
    ("steps", [10, 20.0], [10, 20]),
])
def test_a1111_axis_syntax(param: str, text: Any, expected: list[Any]) -> None:
    assert axis_values(param, text) == expected


@pytest.mark.parametrize(("param", "text", "match"), [
    ("steps", "ten", "takes numbers"), ("steps", "1.5", "whole numbers"), ("steps", "", "no values"),
    ("steps", "1-5000", "the most is 256"), ("cfg", "5-1 (+1)", "range is empty"), ("sampler", [1], "text"),
])
def test_bad_axis_values_are_a_sentence(param: str, text: Any, match: str) -> None:
    with pytest.raises(WorkflowError, match=match) as caught:
        axis_values(param, text)
    assert caught.value.field == "grid"


def test_cells_are_row_major_and_each_is_a_job_with_its_values() -> None:
    plan = plan_grid(BASE, {"x": {"param": "steps", "values": "10, 20, 30"}, "y": {"param": "cfg", "values": [5, 7]},
                            "z": {"param": "sampler", "values": ["euler", "ddim"]}})
    assert plan.shape == (3, 2, 2) and len(plan.cells) == 12
    assert [(c.params.steps, c.params.cfg, c.params.sampler) for c in plan.cells[:4]] == [
        (10, 5.0, "euler"), (20, 5.0, "euler"), (30, 5.0, "euler"), (10, 7.0, "euler")]
    assert plan.cells[6].params.sampler == "ddim" and plan.cells[6].position == (0, 0, 1)
    assert {c.params.seed for c in plan.cells} == {77}  # one seed, so the cells compare
    assert plan.cells[4].label == "steps: 20, cfg: 7, sampler: ddim".replace("ddim", "euler")
    meta = plan.cells[4].metadata(plan)
    assert meta == {"index": 4, "cells": 12, "position": [1, 1, 0], "axes": {
        "x": {"param": "steps", "value": 20}, "y": {"param": "cfg", "value": 7.0},
        "z": {"param": "sampler", "value": "euler"}}}
    for cell in plan.cells:  # every cell builds a valid graph
        build_graph(cell.params, toolbox_info())


def test_prompt_search_and_replace_uses_the_first_value_as_the_search() -> None:
    plan = plan_grid(BASE, {"x": {"param": "prompt_sr", "values": "cat, fox, dog"}})
    assert [c.params.prompt for c in plan.cells] == ["a cat in a hat", "a fox in a hat", "a dog in a hat"]
    assert plan.cells[1].params.negative_prompt == "a dog"  # as A1111: both prompts, plain text replacement
    assert [c.label for c in plan.cells] == ["cat", "fox", "dog"]
    with pytest.raises(WorkflowError, match="did not find 'zebra'"):
        plan_grid(BASE, {"x": {"param": "prompt_sr", "values": "zebra, horse"}})


def test_toolbox_fields_can_be_plotted() -> None:
    plan = plan_grid(BASE, {"x": {"param": "hires.denoise", "values": "0.3-0.5 [3]"},
                            "y": {"param": "styles", "values": ["Anime", "Cinematic + Enhance"]}})
    assert [c.params.hires for c in plan.cells[:3]] == [{"scale": 2.0, "denoise": d} for d in (0.3, 0.4, 0.5)]
    assert plan.cells[3].params.styles == ["Cinematic", "Enhance"]


def test_more_than_64_cells_needs_confirmation() -> None:
    grid = {"x": {"param": "steps", "values": "1-13"}, "y": {"param": "cfg", "values": "1-5"}}
    with pytest.raises(WorkflowError, match=f"65 images \\(13 × 5\\), more than {MAX_CELLS}: confirm") as caught:
        plan_grid(BASE, grid)
    assert caught.value.field == "grid"
    assert len(plan_grid(BASE, grid, confirmed=True).cells) == 65
    assert len(plan_grid(BASE, {"x": {"param": "steps", "values": "1-8"}, "y": {"param": "cfg",
                                                                                "values": "1-8"}}).cells) == 64


@pytest.mark.parametrize(("grid", "field", "match"), [
    ({"x": {"param": "stepz", "values": [1]}}, "grid.x.param", "'stepz' is not a plot parameter.*steps"),
    ({"w": {"param": "steps", "values": [1]}}, "grid.w", "no axis 'w'"),
    ({"x": {"param": "steps"}}, "grid.x", "must be an object"),
    ({"x": {"param": "steps", "values": [1]}, "y": {"param": "steps", "values": [2]}}, "grid.y.param", "two axes"),
    ({}, "grid", "must be an object"),
])
def test_a_bad_grid_is_refused_with_a_sentence(grid: dict[str, Any], field: str, match: str) -> None:
    with pytest.raises(WorkflowError, match=match) as caught:
        plan_grid(BASE, grid)
    assert caught.value.field == field


def test_every_plot_parameter_is_a_generation_field_or_a_toolbox_part() -> None:
    fields = set(GenerationParams.__dataclass_fields__)
    assert {p for p in PLOT_PARAMS if "." not in p} - fields == {"prompt_sr"}
    assert {p.split(".")[0] for p in PLOT_PARAMS if "." in p} == {"hires"}


# ------------------------------------------------------------------------------------------- the image


def cell_image(color: tuple[int, int, int], size: tuple[int, int] = (128, 96)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def is_white(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    return image.crop(box).convert("L").getextrema() == (255, 255)


def test_the_grid_image_has_every_cell_and_labels_on_both_axes() -> None:
    plan = plan_grid(BASE, {"x": {"param": "steps", "values": "10, 20, 30"}, "y": {"param": "cfg", "values": [5, 7]}})
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    sheet = compose_grid([cell_image(c) for c in colors], plan)
    top = sheet.height - 2 * 96
    left = sheet.width - 3 * 128
    assert top > 0 and left > 0  # room for the labels
    for index, color in enumerate(colors):
        x, y = index % 3, index // 3
        assert sheet.getpixel((left + x * 128 + 64, top + y * 96 + 48)) == color
    for x in range(3):  # a label above each column, on the left of each row
        assert not is_white(sheet, (left + x * 128, 0, left + (x + 1) * 128, top))
    for y in range(2):
        assert not is_white(sheet, (0, top + y * 96, left, top + (y + 1) * 96))
    assert is_white(sheet, (0, 0, left, top))  # the corner stays empty


def test_a_z_axis_makes_side_by_side_blocks_with_titles_and_a_failed_cell_is_blank() -> None:
    plan = plan_grid(BASE, {"x": {"param": "steps", "values": [10, 20]}, "z": {"param": "sampler",
                                                                             "values": ["euler", "ddim"]}})
    images: list[Any] = [cell_image((10, 10, 10), (64, 64))] * 4
    images[3] = None
    sheet = compose_grid(images, plan)
    assert sheet.width == 2 * (2 * 64) + 24
    assert sheet.getpixel((sheet.width - 32, sheet.height - 32)) == (255, 255, 255)
    assert sheet.getpixel((32, sheet.height - 32)) == (10, 10, 10)
    with pytest.raises(ValueError):
        compose_grid(images[:3], plan)


def test_ranges_are_counted_while_they_are_expanded() -> None:
    # 1000 ranges of 200 values each: refused at the second range, before 200 000 values exist.
    with pytest.raises(WorkflowError, match="makes 200 values after the 200 before it; the most is 256") as caught:
        axis_values("steps", ",".join(["1-200"] * 1000))
    assert caught.value.field == "grid"
    with pytest.raises(WorkflowError, match="makes more than 256 values"):
        axis_values("steps", ",".join(["1-128"] * 2 + ["5"]))
    with pytest.raises(WorkflowError, match="cfg range makes 200 values after the 200"):
        axis_values("cfg", "1-200 [200], 1-200 [200]")
    assert len(axis_values("steps", "1-128, 1-128")) == 256


def test_an_axis_text_has_a_length_cap_and_a_list_a_value_cap() -> None:
    with pytest.raises(WorkflowError, match=f"characters long; the most is {MAX_AXIS_TEXT}"):
        axis_values("prompt", "a," * MAX_AXIS_TEXT)
    with pytest.raises(WorkflowError, match="has 100000 values; the most is 256"):
        axis_values("steps", list(range(100_000)))


def test_a_confirmed_grid_still_has_a_hard_cap_checked_from_its_shape() -> None:
    grid = {"x": {"param": "seed", "values": "1-200"}, "y": {"param": "steps", "values": "1-200"},
            "z": {"param": "cfg", "values": "1-200"}}  # 8 million cells: refused before any is built
    with pytest.raises(WorkflowError, match=f"8000000 images \\(200 × 200 × 200\\); the most a grid may make, "
                                            f"even confirmed, is {MAX_GRID_CELLS}") as caught:
        plan_grid(BASE, grid, confirmed=True)
    assert caught.value.field == "grid"
    assert len(plan_grid(BASE, {"x": {"param": "seed", "values": "1-16"}, "y": {"param": "steps", "values": "1-16"}},
                         confirmed=True).cells) == MAX_GRID_CELLS


def test_the_grid_image_stays_within_its_pixel_budget() -> None:
    plan = plan_grid(BASE, {"x": {"param": "seed", "values": "1-16"}, "y": {"param": "steps", "values": "1-16"}},
                     confirmed=True)
    big = Image.new("RGB", (1024, 1024), (0, 90, 0))  # 256 cells of 1024²: 268 MP unbounded
    sheet = compose_grid([big] * len(plan.cells), plan)
    assert sheet.width * sheet.height <= MAX_SHEET_PIXELS
    assert sheet.width > 16 * 256  # still readable cells: drawn smaller, not dropped
    assert sheet.getpixel((sheet.width - 40, sheet.height - 40)) == (0, 90, 0)


def test_cells_of_other_sizes_are_letterboxed_not_squashed() -> None:
    plan = plan_grid(BASE, {"x": {"param": "width", "values": [64, 256]}})
    wide = Image.open(io.BytesIO(cell_image((200, 0, 0), (256, 64))))
    square = Image.open(io.BytesIO(cell_image((0, 0, 200), (64, 64))))
    sheet = compose_grid([square, wide], plan)
    top = sheet.height - 64
    assert sheet.width == 2 * 256  # each box is the largest cell's size
    assert sheet.getpixel((256 + 5, top + 32)) == (200, 0, 0) and sheet.getpixel((512 - 5, top + 32)) == (200, 0, 0)
    assert sheet.getpixel((128, top + 32)) == (0, 0, 200)  # the square, centred in its box, its own shape
    assert sheet.getpixel((10, top + 32)) == (255, 255, 255)  # with white on its sides
