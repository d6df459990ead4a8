"""PNG metadata without re-encoding, and the local output store."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from comfy.errors import StorageError
from comfy.graph import pngmeta
from comfy.storage.local import METADATA_KEY, LocalStore, safe_name
from tests.fixtures_util import COMFY, image


def test_reads_comfyui_chunks_like_the_capture_says() -> None:
    data = image("txt2img_output_with_workflow_chunk.png")
    texts = pngmeta.read_text_chunks(data)
    expected = json.loads((COMFY / "images" / "txt2img_output_with_workflow_chunk.png.chunks.json").read_text())
    assert set(texts) == {"prompt", "workflow"}
    assert json.loads(texts["prompt"])["3"]["class_type"] == "KSampler"
    assert expected  # the capture lists the same chunks
    assert pngmeta.png_size(data) == (64, 64)


def test_adding_chunks_keeps_pixels_and_comfy_chunks() -> None:
    original = image("txt2img_output.png")
    added = pngmeta.add_text_chunks(original, {"comfyui_studio": '{"seed": 42}', "parameters": "a lighthouse – dawn"})
    texts = pngmeta.read_text_chunks(added)
    assert texts["comfyui_studio"] == '{"seed": 42}'
    assert texts["parameters"] == "a lighthouse – dawn"  # not Latin-1: stored as iTXt
    assert "prompt" in texts
    with Image.open(__import__("io").BytesIO(original)) as a, Image.open(__import__("io").BytesIO(added)) as b:
        assert a.tobytes() == b.tobytes()
        assert b.text["comfyui_studio"] == '{"seed": 42}'  # Pillow reads what we wrote
    # Replacing a keyword does not duplicate it.
    again = pngmeta.add_text_chunks(added, {"comfyui_studio": "{}"})
    assert pngmeta.read_text_chunks(again)["comfyui_studio"] == "{}"
    assert again.count(b"comfyui_studio") == 1


def test_a1111_parameters_line() -> None:
    text = pngmeta.a1111_parameters({"prompt": "a cat", "negative_prompt": "blurry", "steps": 20, "sampler": "euler",
                                     "scheduler": "karras", "cfg": 7.0, "seed": 42, "width": 512, "height": 768,
                                     "checkpoint": "sd15.safetensors", "denoise": 1.0, "init_image": None})
    assert text == ("a cat\nNegative prompt: blurry\nSteps: 20, Sampler: euler, Schedule type: karras, CFG scale: 7.0, "
                    "Seed: 42, Size: 512x768, Model: sd15.safetensors")


def test_local_store_saves_the_comfy_png_with_metadata(tmp_path) -> None:
    store = LocalStore(tmp_path / "outputs", tmp_path / "inputs")
    metadata = {"job_id": "abc123", "params": {"prompt": "a lighthouse", "seed": 7, "steps": 3}}
    stored = store.save_output("abc123", 0, image("txt2img_output.png"), metadata=metadata, node_id="9",
                               source="ComfyUI_00001_.png")
    assert stored.key == "abc123/image_0.png" and stored.width == 64 and stored.height == 64
    data = open(stored.path, "rb").read()
    texts = pngmeta.read_text_chunks(data)
    assert json.loads(texts[METADATA_KEY]) == metadata
    assert texts["parameters"].startswith("a lighthouse\nSteps: 3")
    assert "prompt" in texts  # ComfyUI's own graph stays
    assert not [p for p in os.listdir(tmp_path / "outputs" / "abc123") if p.endswith(".tmp")]
    # Saving again (a recovered job re-downloads) overwrites, never duplicates.
    store.save_output("abc123", 0, image("txt2img_output.png"), metadata=metadata)
    assert os.listdir(tmp_path / "outputs" / "abc123") == ["image_0.png"]


def test_inputs_are_kept_by_content(tmp_path) -> None:
    store = LocalStore(tmp_path / "outputs", tmp_path / "inputs")
    first = store.save_input(b"same bytes")
    assert store.save_input(b"same bytes") == first
    assert store.read_input(first) == b"same bytes"
    with pytest.raises(StorageError):
        store.read_input(tmp_path / "elsewhere.png")


@pytest.mark.parametrize("key", ["../x/image_0.png", "a/../../etc", "a/b/c", "/etc/passwd", "a/.hidden"])
def test_keys_cannot_escape_the_outputs_folder(tmp_path, key: str) -> None:
    store = LocalStore(tmp_path / "outputs", tmp_path / "inputs")
    with pytest.raises(StorageError):
        store.path_for(key)


def test_safe_name() -> None:
    assert safe_name("abc-1.png") == "abc-1.png"
    with pytest.raises(StorageError):
        safe_name("..")


def test_write_failure_is_a_storage_error(tmp_path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("a file where the folder should be")
    store = LocalStore(blocker, tmp_path / "inputs")
    with pytest.raises(StorageError, match="Could not save"):
        store.save_output("job1", 0, image("txt2img_output.png"), metadata={})
