"""The demo backend: the whole studio without a GPU or a ComfyUI, for trying it out (``--demo``, ``STUDIO_DEMO=1``).

It runs in the studio's own process and draws plausible placeholder pictures (a sky, a sun, hills, in
colours drawn from the prompt and the seed) with Pillow, at the size and batch asked for, reporting real
step progress and latent-like previews (the picture emerging from noise) as ComfyUI would. The same
prompt and seed give the same picture. Each image says "demo" in a corner, so no one mistakes it for a
render. Its catalogue (``demo_catalog.json``) holds core ComfyUI node definitions, so requests are checked
as they would be against a real server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import math
import random
import time
import uuid
from pathlib import Path
from typing import Any

from comfy.backends.base import BackendHealth, Outcome, Output, RunContext
from comfy.errors import ExecutionInterrupted
from comfy.graph.object_info import ObjectInfo
from comfy.graph.params import GenerationParams
from comfy.graph.toolbox import split_job_params
from comfy.jobs.records import Job

__all__ = ["DEMO_CHECKPOINTS", "DemoBackend", "demo_image"]

CATALOG_FILE = Path(__file__).with_name("demo_catalog.json")
DEMO_CHECKPOINTS = ("demo-sd15.safetensors", "demo-sdxl.safetensors")
#: Longest side of a preview, as ComfyUI's latent previews are small.
PREVIEW_SIDE = 256
#: Every how many steps a preview is sent.
PREVIEW_EVERY = 2


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _palette(prompt: str, seed: int) -> tuple[tuple[int, int, int], ...]:
    rng = _rng(prompt.strip().lower(), seed)

    def colour(lo: int, hi: int) -> tuple[int, int, int]:
        return tuple(rng.randint(lo, hi) for _ in range(3))  # type: ignore[return-value]

    return colour(40, 200), colour(150, 255), colour(200, 255), colour(20, 140), colour(10, 90)


def demo_image(prompt: str, seed: int, width: int, height: int, *, index: int = 0) -> Any:
    """The placeholder picture for a prompt and seed (a PIL image); the same inputs, the same picture."""
    from PIL import Image, ImageDraw, ImageFilter

    sky_top, sky_bottom, sun, hill_near, hill_far = _palette(prompt, seed + index)
    rng = _rng(prompt, seed + index, "shapes")
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):  # the sky: a vertical gradient
        t = y / max(height - 1, 1)
        draw.line([(0, y), (width, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(sky_top, sky_bottom)))
    radius = rng.uniform(0.06, 0.14) * min(width, height)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.15, 0.45) * height
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=sun)
    for colour, base, amplitude in ((hill_far, 0.62, 0.10), (hill_near, 0.78, 0.08)):
        phase, wavelength = rng.uniform(0, 6.28), rng.uniform(0.5, 1.4) * width
        points = [(0, height)]
        for x in range(0, width + 8, 8):
            y = height * (base + amplitude * math.sin(phase + 6.28 * x / wavelength))
            points.append((x, y))
        points.append((width, height))
        draw.polygon(points, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=max(width, height) / 400))
    label = ImageDraw.Draw(img)
    label.text((8, height - 18), "demo", fill=(255, 255, 255))
    return img


def _png(img: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _preview(final: Any, t: float, rng: random.Random) -> bytes:
    """What a latent preview looks like at fraction ``t`` of the steps: the picture emerging from noise."""
    from PIL import Image

    small = final.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    noise = Image.effect_noise(small.size, 90).convert("RGB")
    tint = Image.new("RGB", small.size, tuple(rng.randint(60, 180) for _ in range(3)))
    start = Image.blend(noise, tint, 0.5)
    out = io.BytesIO()
    Image.blend(start, small, min(max(t, 0.0), 1.0)).save(out, format="JPEG", quality=70)
    return out.getvalue()


class DemoBackend:
    """A backend that needs nothing: pictures drawn in-process, with real progress, previews and cancel."""

    kind = "demo"
    name = url = "demo (no GPU)"

    def __init__(self, *, step_time: float = 0.05, max_in_flight: int = 1) -> None:
        self.step_time = step_time
        self.max_in_flight = max_in_flight
        self.last_info = ObjectInfo(json.loads(CATALOG_FILE.read_text(encoding="utf-8")))
        self._cancelled: set[str] = set()

    def __repr__(self) -> str:
        return "DemoBackend()"

    async def object_info(self, *, refresh: bool = False) -> ObjectInfo:
        return self.last_info

    async def health(self) -> BackendHealth:
        return BackendHealth(gpu="demo: pictures drawn on the CPU", queue_remaining=0, version="demo")

    async def refresh_models(self) -> None:
        return None

    def has_checkpoints(self, names: frozenset[str]) -> bool | None:
        return names <= set(DEMO_CHECKPOINTS)

    async def cancel(self, job: Job) -> None:
        if job.prompt_id:
            self._cancelled.add(job.prompt_id)

    async def forget(self, handle: str) -> None:
        self._cancelled.add(handle)

    async def aclose(self) -> None:
        return None

    async def run(self, ctx: RunContext, *, attach: bool) -> Outcome:
        job = ctx.job
        params = _params_of(job)
        handle = job.prompt_id if attach and job.prompt_id else uuid.uuid4().hex
        job = await ctx.record(prompt_id=handle, backend=self.name, note=None)
        ctx.submitted()
        ctx.started(job=job)
        began = time.monotonic()
        finals = await asyncio.to_thread(
            lambda: [demo_image(params.prompt, params.seed, params.width, params.height, index=i)
                     for i in range(params.batch_size)])
        rng = _rng(params.seed, "preview")
        steps = max(1, round(params.steps * (params.denoise if params.init_image else 1.0)))
        for step in range(1, steps + 1):
            if handle in self._cancelled:
                raise ExecutionInterrupted("Cancelled.")
            await asyncio.sleep(self.step_time)
            ctx.progress(step / steps, node="KSampler", step=step, steps=steps)
            if step % PREVIEW_EVERY == 0 or step == steps:
                ctx.preview(await asyncio.to_thread(_preview, finals[0], step / steps, rng), "image/jpeg")
        blobs = await asyncio.to_thread(lambda: [_png(img) for img in finals])
        outputs = tuple(Output("9", f"demo_{handle[:8]}_{i:05}_.png", fetch=_constant(blob))
                        for i, blob in enumerate(blobs))
        return Outcome(handle, outputs, execution_ms=round((time.monotonic() - began) * 1000),
                       notes=("demo backend: a placeholder picture, not a render",))


def _params_of(job: Job) -> GenerationParams:
    if job.kind == "generate":
        return split_job_params(job.params)[0]
    # A workflow job: draw from what the studio bound onto it, with the defaults for the rest.
    known = {f.name for f in dataclasses.fields(GenerationParams)}
    values = {k: v for k, v in job.params.items() if k in known and k != "init_image"}
    values.setdefault("prompt", "a workflow")
    return GenerationParams(**values)


def _constant(data: bytes) -> Any:
    async def fetch() -> bytes:
        return data

    return fetch
