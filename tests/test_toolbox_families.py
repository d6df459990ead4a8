"""Model families: recognised from safetensors metadata (as ComfyUI serves it) or the file name; their defaults."""

from __future__ import annotations

import pytest

from comfy.errors import WorkflowError
from comfy.graph.families import FAMILY_SPECS, apply_family_defaults, detect_family, family_of
from comfy.graph.params import GenerationParams, Limits
from tests.fixtures_util import http


def test_the_captured_view_metadata_answer_is_recognised() -> None:
    # GET /view_metadata/checkpoints?filename=random-sd15.safetensors from a real ComfyUI 0.8
    capture = http("view_metadata_checkpoint")
    assert capture["request"]["path"].startswith("/view_metadata/checkpoints?filename=")
    metadata = capture["response"]["body"]
    assert detect_family("model.safetensors", metadata) == "sd15"  # its description says "SD1.5 architecture"


@pytest.mark.parametrize(("metadata", "family"), [
    ({"modelspec.architecture": "stable-diffusion-xl-v1-base"}, "sdxl"),
    ({"modelspec.architecture": "stable-diffusion-xl-v1-refiner"}, "sdxl"),
    ({"modelspec.architecture": "stable-diffusion-v1"}, "sd15"),
    ({"modelspec.architecture": "Flux.1-dev", "modelspec.title": "Flux"}, "flux"),
    ({"modelspec.architecture": "flux-1-schnell"}, "flux"),
    ({"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"ss_base_model_version": "sd_v1"}, "sd15"),
    ({"ss_sdxl_something": "1", "format": "pt"}, "sdxl"),  # a key that names the architecture
])
def test_families_from_safetensors_metadata(metadata: dict[str, str], family: str) -> None:
    assert detect_family("unnamed.safetensors", metadata) == family


def test_metadata_wins_over_the_name() -> None:
    assert detect_family("sd15-looking-name.safetensors", {"modelspec.architecture": "stable-diffusion-xl-v1-base"}) \
        == "sdxl"
    assert detect_family("juggernautXL.safetensors", {"format": "pt"}) == "sdxl"  # metadata that says nothing


@pytest.mark.parametrize(("name", "family"), [
    ("sd_xl_base_1.0.safetensors", "sdxl"), ("juggernautXL_v9Rdphoto2Lightning.safetensors", "sdxl"),
    ("dreamshaperXLTurbo.safetensors", "sdxl"), ("ponyDiffusionV6XL.safetensors", "sdxl"),
    ("illustrious/noobaiXL_v1.safetensors", "sdxl"), ("flux1-dev-fp8.safetensors", "flux"),
    ("FLUX.1-schnell.safetensors", "flux"), ("v1-5-pruned-emaonly.safetensors", "sd15"),
    ("random-sd15.safetensors", "sd15"), ("sd1.5/anything.ckpt", "sd15"), ("pixelart.safetensors", None),
    ("realisticVision_v51.safetensors", None), ("maxl.safetensors", None),
])
def test_families_from_file_names(name: str, family: str | None) -> None:
    assert detect_family(name) == family


def test_the_artist_can_always_override_the_family() -> None:
    assert family_of("sd15", "flux1-dev.safetensors").name == "sd15"
    assert family_of(None, "flux1-dev.safetensors").name == "flux"
    assert family_of(None, "mystery.safetensors").name == "sd15"  # as before families
    with pytest.raises(WorkflowError) as caught:
        family_of("sd3")
    assert caught.value.field == "family"


def test_each_family_has_defaults_the_request_can_override() -> None:
    assert FAMILY_SPECS["sd15"].defaults()["width"] == 512
    sdxl = apply_family_defaults({"prompt": "x"}, FAMILY_SPECS["sdxl"])
    assert (sdxl["width"], sdxl["height"], sdxl["sampler"], sdxl["scheduler"]) == (1024, 1024, "dpmpp_2m", "karras")
    flux = apply_family_defaults({"prompt": "x", "width": 768, "cfg": None}, FAMILY_SPECS["flux"])
    assert (flux["width"], flux["cfg"], flux["guidance"]) == (768, 1.0, 3.5)
    for family in FAMILY_SPECS.values():  # the defaults are valid parameters
        GenerationParams(**apply_family_defaults({"prompt": "x", "family": family.name}, family)).check(
            Limits(max_width=2048, max_height=2048))
