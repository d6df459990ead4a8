"""ObjectInfo against the real ComfyUI 0.8.0 ``/object_info`` capture (446 node classes)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from comfy.errors import ProtocolError, WorkflowError
from comfy.graph.object_info import InputSpec, ObjectInfo

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return json.loads((FIXTURES / "object_info.json").read_bytes())


@pytest.fixture(scope="module")
def info(raw: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(raw)


@pytest.fixture(scope="module")
def core() -> dict[str, Any]:
    return json.loads((FIXTURES / "object_info_core.json").read_bytes())


def test_from_json_reads_the_byte_exact_body() -> None:
    info = ObjectInfo.from_json((FIXTURES / "object_info.json").read_bytes())
    assert len(info) == 446
    assert "KSampler" in info and "NoSuchNode" not in info


@pytest.mark.parametrize("body", [b"<html>502</html>", b"[1, 2]", "null"])
def test_from_json_refuses_what_is_not_an_object_info(body: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        ObjectInfo.from_json(body)


def test_model_lists(info: ObjectInfo, core: dict[str, Any]) -> None:
    assert info.checkpoints == ["random-sd15.safetensors"]
    assert info.samplers == core["ksampler_sampler_names"]
    assert len(info.samplers) == 44 and info.samplers[0] == "euler"
    assert info.schedulers == core["ksampler_schedulers"]
    assert "normal" in info.schedulers and "karras" in info.schedulers
    assert info.loras == []  # LoraLoader: [[], {...}], the classic combo form with no files
    assert info.upscale_models == []  # UpscaleModelLoader: ["COMBO", {"options": []}], the newer form
    assert info.vaes == ["pixel_space"]


def test_unknown_node_names_the_class(info: ObjectInfo) -> None:
    assert not info.has("NoSuchSamplerNode")
    with pytest.raises(WorkflowError, match="'NoSuchSamplerNode' is not installed on the ComfyUI server; install"):
        info.node("NoSuchSamplerNode")
    assert info.choices("NoSuchSamplerNode", "x") == []
    assert info.is_output_node("NoSuchSamplerNode") is False


def test_widget_specs(info: ObjectInfo) -> None:
    seed = info.input_spec("KSampler", "seed")
    assert seed == InputSpec(name="seed", type="INT", default=0, min=0, max=2**64 - 1,
                             tooltip="The random seed used for creating the noise.")
    steps = info.input_spec("KSampler", "steps")
    assert (steps.type, steps.default, steps.min, steps.max, steps.is_link) == ("INT", 20, 1, 10000, False)
    cfg = info.input_spec("KSampler", "cfg")
    assert (cfg.type, cfg.default, cfg.min, cfg.max, cfg.step) == ("FLOAT", 8.0, 0.0, 100.0, 0.1)
    text = info.input_spec("CLIPTextEncode", "text")
    assert text.type == "STRING" and text.multiline
    assert info.input_spec("SaveImage", "filename_prefix").multiline is False
    noise_mask = info.input_spec("InpaintModelConditioning", "noise_mask")
    assert (noise_mask.type, noise_mask.default) == ("BOOLEAN", True)


def test_classic_combo_form(info: ObjectInfo) -> None:
    sampler = info.input_spec("KSampler", "sampler_name")
    assert sampler.type == "COMBO" and not sampler.is_link
    assert sampler.choices == tuple(info.samplers)
    assert sampler.default == "euler"  # no default declared: the first choice, as the frontend shows
    image = info.input_spec("LoadImage", "image")
    assert (image.type, image.choices, image.image_upload) == ("COMBO", ("example.png",), True)


def test_new_combo_form(info: ObjectInfo) -> None:
    select = info.input_spec("KSamplerSelect", "sampler_name")
    assert select.type == "COMBO" and select.choices == tuple(info.samplers)
    assert info.input_spec("BasicScheduler", "scheduler").choices == tuple(info.schedulers)
    behaviour = info.input_spec("LatentBatchSeedBehavior", "seed_behavior")
    assert (behaviour.choices, behaviour.default) == (("random", "fixed"), "fixed")
    remote = info.input_spec("LoadImageOutput", "image")  # a "remote" combo: no options listed
    assert (remote.type, remote.choices, remote.image_upload) == ("COMBO", None, True)


def test_link_specs_optional_and_hidden(info: ObjectInfo) -> None:
    model = info.input_spec("KSampler", "model")
    assert model.type == "MODEL" and model.is_link and model.required
    vae = info.input_spec("ControlNetApplyAdvanced", "vae")
    assert vae.type == "VAE" and vae.required is False
    assert info.input_spec("SaveImage", "prompt") is None  # hidden inputs are the server's business
    assert info.input_spec("KSampler", "no_such_input") is None


def test_input_specs_follow_input_order(info: ObjectInfo, raw: dict[str, Any]) -> None:
    names = [spec.name for spec in info.input_specs("KSampler")]
    assert names == raw["KSampler"]["input_order"]["required"]
    names = [spec.name for spec in info.input_specs("ControlNetApplyAdvanced")]
    assert names[-1] == "vae"


def test_every_installed_input_parses(info: ObjectInfo, raw: dict[str, Any]) -> None:
    before = copy.deepcopy(raw)
    count = 0
    for class_type in info.class_types:
        for spec in info.input_specs(class_type):
            assert isinstance(spec.type, str)
            assert spec.is_link == (spec.type not in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
            count += 1
    declared = sum(len(n["input"].get(section) or {}) for n in raw.values() for section in ("required", "optional"))
    assert count == declared == 2215
    assert raw == before  # read-only
    assert info.raw is raw  # kept as is, so it can be saved and reloaded


def test_outputs(info: ObjectInfo) -> None:
    assert info.output_types("CheckpointLoaderSimple") == ("MODEL", "CLIP", "VAE")
    assert info.output_types("SaveImage") == ()
    assert info.is_output_node("SaveImage") and info.is_output_node("PreviewImage")
    assert not info.is_output_node("KSampler")
    assert info.display_name("CLIPTextEncode") == "CLIP Text Encode (Prompt)"


def test_core_subset_and_single_class_answer(core: dict[str, Any]) -> None:
    subset = ObjectInfo(core["nodes"])
    assert subset.samplers == core["ksampler_sampler_names"]
    assert subset.checkpoints == ["random-sd15.safetensors"]
    envelope = json.loads((FIXTURES / "http" / "object_info_KSampler.json").read_bytes())
    single = ObjectInfo(envelope["response"]["body"])  # GET /object_info/KSampler
    assert single.schedulers == core["ksampler_schedulers"]
    assert single.checkpoints == []
