"""Uploaded images at the edges: bombs and oversize images refused or fitted with a sentence, img2img at the size
that really runs (and recorded so), no server path in any output."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from comfy import JobState, Studio
from comfy.errors import WorkflowError
from comfy.graph import pngmeta
from comfy.graph.params import GenerationParams
from comfy.graph.pnginfo import read_png_info
from comfy.graph.workflow import load_template
from tests.api_support import Api, error_of
from tests.fakes.comfyui import FakeComfy


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A small file that says it is ``width`` × ``height`` grey pixels (each row compresses to a few bytes)."""
    packer = zlib.compressobj(9)
    row = bytes(width + 1)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def photo(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(out, fmt)
    return out.getvalue()


PAINT = GenerationParams(prompt="paint it", steps=2, seed=3, denoise=0.5)


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 9000)])
async def test_a_decompression_bomb_is_refused_with_a_sentence(studio: Studio, size) -> None:
    data = bomb_png(*size)
    assert len(data) < 2_000_000
    with pytest.raises(WorkflowError, match="megapixels") as info:
        await studio.submit(PAINT, image=data)
    assert info.value.field == "image" and f"{size[0]}×{size[1]}" in str(info.value)
    assert (await studio.store.counts())[JobState.QUEUED] == 0


async def test_a_bomb_as_init_image_is_a_400_not_a_500(api: Api) -> None:
    body = {"prompt": "paint it", "steps": 2, "init_image": base64.b64encode(bomb_png(20000, 20000)).decode()}
    response = await api.http.post("/api/v1/jobs", json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["field"] == "init_image" and "megapixels" in error["message"]


async def test_a_bomb_as_a_workflow_image_or_mask_is_refused(studio: Studio) -> None:
    graph = load_template("img2img")
    loader = next(node_id for node_id, node in graph.items() if node["class_type"] == "LoadImage")
    with pytest.raises(WorkflowError, match="megapixels") as info:
        await studio.submit_workflow(graph, images={loader: bomb_png(20000, 20000)})
    assert info.value.field == f"node {loader}"


async def test_a_large_init_image_is_scaled_to_the_limits_and_runs_at_that_size(studio: Studio,
                                                                                 fake_comfy: FakeComfy) -> None:
    [job] = await studio.submit(PAINT, image=photo(4032, 3024, "JPEG"))
    assert (job.params["width"], job.params["height"]) == (2048, 1536)
    assert "4032×3024" in job.note and "2048×1536" in job.note  # the user is told
    done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED, done.error
    graph = fake_comfy.prompts[-1]["prompt"]
    name = next(n for n in graph.values() if n["class_type"] == "LoadImage")["inputs"]["image"]
    sent = fake_comfy._files.get("input", "", name)
    with Image.open(io.BytesIO(sent.data)) as img:
        assert img.size == (2048, 1536)  # what ComfyUI got is within STUDIO_MAX_WIDTH / STUDIO_MAX_HEIGHT


async def test_img2img_records_the_size_that_ran_and_no_server_path(studio: Studio, tmp_path: Path) -> None:
    [job] = await studio.submit(PAINT, image=photo(640, 480))
    done = await studio.wait(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.note is None  # nothing was changed
    data = Path(done.outputs[0]["path"]).read_bytes()
    recorded = json.loads(pngmeta.read_text_chunks(data)[pngmeta.METADATA_KEY])["params"]
    assert (recorded["width"], recorded["height"]) == (640, 480)
    assert "Size: 640x480" in pngmeta.read_text_chunks(data)["parameters"]
    assert str(tmp_path) not in data.decode("latin-1")  # no absolute path of the server in the PNG
    assert "/" not in recorded["init_image"]
    assert str(tmp_path) not in json.dumps(done.params)


async def test_an_init_image_smaller_than_the_latent_minimum_is_refused(studio: Studio) -> None:
    with pytest.raises(WorkflowError, match="at least 64 pixels"):
        await studio.submit(PAINT, image=photo(40, 30))


def test_a_huge_ztxt_chunk_on_the_png_info_path_is_not_inflated() -> None:
    text = zlib.compress(b"x" * 200_000_000, 9)  # 200 MB of text in about 200 KB
    png = photo(8, 8)
    end = png.rindex(b"IEND") - 4
    data = png[:end] + _chunk(b"zTXt", b"parameters\x00\x00" + text) + png[end:]
    assert len(data) < 1_000_000
    info = read_png_info(data)  # the page's PNG-info reader; the huge chunk is skipped, not inflated
    assert "parameters" not in info.texts and info.source == "none"


def test_decodes_wait_while_their_pixels_do_not_fit_the_budget_together() -> None:
    import threading

    from comfy.graph.images import _PixelBudget

    budget = _PixelBudget(100)
    inside: list[str] = []
    big_entered, small_done = threading.Event(), threading.Event()

    def decode(name: str, pixels: int, entered: threading.Event | None = None) -> None:
        with budget.take(pixels):
            inside.append(name)
            if entered is not None:
                entered.set()

    with budget.take(80):  # one large decode under way
        second = threading.Thread(target=decode, args=("second large", 80, big_entered))
        second.start()
        small = threading.Thread(target=decode, args=("small", 20, small_done))
        small.start()
        assert small_done.wait(5)  # 80 + 20 fit: it went ahead
        assert not big_entered.wait(0.2) and inside == ["small"]  # 80 + 80 do not: it waits
    assert big_entered.wait(5)  # the first one done: its turn
    second.join(5)
    small.join(5)
    with budget.take(500):  # alone, a decode may take more than the budget (up to the bomb limit)
        pass
