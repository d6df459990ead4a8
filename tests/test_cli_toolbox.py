"""The toolbox flags of ``python -m comfy generate``, run in a subprocess against the fake ComfyUI."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from comfy.graph import pngmeta
from tests.fakes.comfyui import FakeComfy
from tests.test_cli import run_cli
from tests.toolbox_support import LORAS, UPSCALERS, VAES, classes, inputs_of, toolbox_comfy

SMALL = ("--steps", "2", "--seed", "5", "--width", "64", "--height", "64")


@pytest.fixture
def fake_comfy(tmp_path: Path) -> Iterator[FakeComfy]:
    with toolbox_comfy(tmp_path) as server:
        yield server


def write_png(path: Path, size: tuple[int, int], color=(90, 120, 200), box=None) -> Path:
    picture = Image.new("RGB", size, color)
    if box is not None:
        picture.paste((255, 255, 255), box)
    picture.save(path, format="PNG")
    return path


def metadata(result) -> dict:
    [path] = [line.strip() for line in result.stdout.splitlines() if line.strip().endswith(".png")]
    return json.loads(pngmeta.read_text_chunks(Path(path).read_bytes())["comfyui_studio"])


def test_lora_vae_hires_style_and_family_flags(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    result = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--lora", "detail-tweaker:0.6",
                     "--lora", "film_grain", "--vae", VAES[0], "--hires", "2", "--style", "Cinematic",
                     "--family", "sd15")
    assert result.returncode == 0, result.stderr
    graph = fake_comfy.prompts[-1]["prompt"]
    assert [inputs_of(graph, "LoraLoader", i)["lora_name"] for i in (0, 1)] == [LORAS[0], LORAS[2]]
    assert inputs_of(graph, "LoraLoader")["strength_model"] == 0.6 and "VAELoader" in classes(graph)
    assert classes(graph).count("KSampler") == 2 and "LatentUpscale" in classes(graph)
    toolbox = metadata(result)["toolbox"]
    assert toolbox["styles"] == ["Cinematic"] and toolbox["hires"]["size"] == [128, 128]
    assert [lora["strength"] for lora in toolbox["loras"]] == [0.6, 1.0]


def test_mask_flag_inpaints_and_needs_an_image(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    image = write_png(tmp_path / "in.png", (64, 64))
    mask = write_png(tmp_path / "mask.png", (64, 64), (0, 0, 0), (8, 8, 24, 24))
    result = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--image", str(image), "--mask", str(mask))
    assert result.returncode == 0, result.stderr
    assert "LoadImageMask" in classes(fake_comfy.prompts[-1]["prompt"]) and "mask" in metadata(result)["toolbox"]
    alone = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--mask", str(mask))
    assert alone.returncode == 2 and alone.stderr.strip().splitlines()[-1] == \
        "error: --mask needs --image (the picture the mask was drawn on)."
    small = write_png(tmp_path / "small.png", (32, 32), (0, 0, 0), (0, 0, 8, 8))
    wrong = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--image", str(image), "--mask", str(small))
    assert wrong.returncode == 2 and "The mask is 32×32 but the init image is 64×64" in wrong.stderr


def test_unknown_names_are_one_line_errors(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    lora = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--lora", "nope")
    assert lora.returncode == 2 and LORAS[0] in lora.stderr and "Traceback" not in lora.stderr
    style = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--style", "Nope")
    assert style.returncode == 2 and "There is no style 'Nope'" in style.stderr
    axis = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--x", "steps")
    assert axis.returncode == 2 and "--x must be PARAM=V1,V2" in axis.stderr


def test_an_xy_plot_from_the_command_line(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    result = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--x", "steps=1-2", "--y", "cfg=5,7")
    assert result.returncode == 0, result.stderr
    assert "queued grid" in result.stderr and len(fake_comfy.prompts) == 4
    assert [inputs_of(p["prompt"], "KSampler")["cfg"] for p in fake_comfy.prompts] == [5.0, 5.0, 7.0, 7.0]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("grid ")]
    grid = Image.open(io.BytesIO(Path(line.split(": ", 1)[1]).read_bytes()))
    assert grid.format == "PNG" and grid.size[0] > 128
    models = run_cli(tmp_path, fake_comfy.url, "models")
    assert json.loads(models.stdout)["upscale_models"] == UPSCALERS


def test_a_grid_under_an_idempotency_key_is_queued_once(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    runs = [run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--x", "steps=1-2",
                    "--idempotency-key", "plot-1") for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[1].stderr
    grids = [next(line for line in run.stderr.splitlines() if "queued grid" in line) for run in runs]
    assert grids[0] == grids[1] and len(fake_comfy.prompts) == 2  # the retry ran nothing again
    other = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", *SMALL, "--x", "steps=1-3",
                    "--idempotency-key", "plot-1")
    assert other.returncode != 0 and "plot-1" in other.stderr and "Traceback" not in other.stderr
