"""The toolbox's structured parameters (LoRAs, hires fix, inpainting, outpainting), read from plain JSON.

:class:`~comfy.graph.params.GenerationParams` keeps them as JSON values (lists and dicts) so a job
record stays plain JSON; these functions turn them into checked values, or refuse them with a sentence
whose ``field`` names the part to fix (``loras[1].strength``, ``hires.scale``, ``outpaint.left``).

>>> loras_of([{"name": "detail.safetensors", "strength": 0.8}])
[Lora(name='detail.safetensors', strength=0.8, strength_clip=None)]
>>> hires_of({"scale": 2}).upscaler
'latent'
>>> outpaint_of({"left": 64, "right": 64})
Outpaint(left=64, top=0, right=64, bottom=0, feathering=40)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from comfy.errors import WorkflowError

__all__ = ["Lora", "Hires", "Outpaint", "FAMILIES", "LATENT_UPSCALER", "loras_of", "hires_of", "outpaint_of", "check_output_size", "MAX_LORAS", "MAX_STYLES",
           "hires_size", "check_features", "MAX_MASK_BLUR"]

#: The model families the builder knows (see :mod:`comfy.graph.families`).
FAMILIES = ("sd15", "sdxl", "flux")
#: ``hires.upscaler`` for a latent upscale (no upscale model file).
LATENT_UPSCALER = "latent"
#: ImageBlur's sigma goes up to 10 (and its radius to 31 = 2.5 × 12): the largest A1111-style mask blur.
MAX_MASK_BLUR = 10
_MAX_PIXELS = 16384  # the largest size ComfyUI's image and latent nodes accept
#: LoRAs one image may chain, and styles it may take (each style wraps the prompt once more).
MAX_LORAS = 32
MAX_STYLES = 16


@dataclass(frozen=True)
class Lora:
    """One LoRA in the chain: ``strength`` for the model, ``strength_clip`` (None: the same) for CLIP."""

    name: str
    strength: float = 1.0
    strength_clip: float | None = None

    @property
    def clip_strength(self) -> float:
        return self.strength if self.strength_clip is None else self.strength_clip

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "strength": self.strength, "strength_clip": self.strength_clip}


@dataclass(frozen=True)
class Hires:
    """A second sampling pass on the first one's result, upscaled ``scale`` times."""

    scale: float = 2.0
    denoise: float = 0.5
    #: None: as many steps as the first pass.
    steps: int | None = None
    #: ``"latent"`` or the file name of an upscale model (GET /models "upscale_models").
    upscaler: str = LATENT_UPSCALER

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "denoise": self.denoise, "steps": self.steps, "upscaler": self.upscaler}


@dataclass(frozen=True)
class Outpaint:
    """Pixels added on each side of the init image (multiples of 8), and the blend into the new area."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0
    feathering: int = 40

    def to_dict(self) -> dict[str, int]:
        return {"left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom,
                "feathering": self.feathering}


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The hires output size: ``scale`` × the size, rounded to the 8 pixels a latent is made of.

    >>> hires_size(512, 768, 1.5)
    (768, 1152)
    >>> hires_size(520, 512, 1.3)
    (680, 664)
    """
    return (max(8, int(width * scale / 8 + 0.5) * 8), max(8, int(height * scale / 8 + 0.5) * 8))  # half up


def loras_of(raw: Any) -> list[Lora]:
    """The LoRA chain from ``[{"name", "strength", "strength_clip"}]`` (None or [] is no LoRA)."""
    if raw is None:
        return []
    if isinstance(raw, (str, dict)) or not isinstance(raw, (list, tuple)):
        raise WorkflowError('loras must be a list like [{"name": "file.safetensors", "strength": 1.0}].',
                            field="loras")
    if len(raw) > MAX_LORAS:
        raise WorkflowError(f"{len(raw)} LoRAs is more than the {MAX_LORAS} one image may chain; drop some.",
                            field="loras")
    chain = []
    for index, item in enumerate(raw):
        where = f"loras[{index}]"
        if isinstance(item, Lora):
            chain.append(item)
            continue
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise WorkflowError(f'{where} must be an object like {{"name": "file.safetensors", "strength": 1.0}}.',
                                field=where)
        _no_unknown_keys(item, ("name", "strength", "strength_clip"), where)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise WorkflowError(f"{where} has no name: give the LoRA's file name (GET /models \"loras\").",
                                field=f"{where}.name")
        strength = float(_number(item.get("strength", 1.0), f"{where}.strength", -100.0, 100.0))
        clip = item.get("strength_clip")
        clip = None if clip is None else float(_number(clip, f"{where}.strength_clip", -100.0, 100.0))
        chain.append(Lora(name.strip(), strength, clip))
    return chain


def hires_of(raw: Any) -> Hires | None:
    """The hires fix from ``{"scale", "denoise", "steps", "upscaler"}``; None (or scale 1) is none."""
    if raw is None or isinstance(raw, Hires):
        return raw
    if not isinstance(raw, dict):
        raise WorkflowError('hires must be an object like {"scale": 2.0, "denoise": 0.5, "upscaler": "latent"}.',
                            field="hires")
    _no_unknown_keys(raw, ("scale", "denoise", "steps", "upscaler"), "hires")
    scale = float(_number(raw.get("scale", 2.0), "hires.scale", 1.0, 4.0))
    denoise = float(_number(raw.get("denoise", 0.5), "hires.denoise", 0.0, 1.0))
    steps = raw.get("steps")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise WorkflowError("hires.steps must be a whole number of steps, or null for the first pass's.",
                                field="hires.steps")
        _number(steps, "hires.steps", 1, 10000)
    upscaler = raw.get("upscaler") or LATENT_UPSCALER
    if not isinstance(upscaler, str):
        raise WorkflowError('hires.upscaler must be "latent" or the file name of an upscale model.',
                            field="hires.upscaler")
    upscaler = LATENT_UPSCALER if upscaler.strip().lower().startswith("latent") else upscaler.strip()
    return Hires(scale, denoise, steps, upscaler)


def outpaint_of(raw: Any) -> Outpaint | None:
    """The padding from ``{"left", "top", "right", "bottom"}`` in pixels, each a multiple of 8."""
    if raw is None or isinstance(raw, Outpaint):
        return raw
    if not isinstance(raw, dict):
        raise WorkflowError('outpaint must be an object like {"left": 0, "top": 0, "right": 256, "bottom": 0}.',
                            field="outpaint")
    _no_unknown_keys(raw, ("left", "top", "right", "bottom", "feathering"), "outpaint")
    sides = {}
    for side in ("left", "top", "right", "bottom"):
        value = raw.get(side, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkflowError(f"outpaint.{side} must be a whole number of pixels.", field=f"outpaint.{side}")
        _number(value, f"outpaint.{side}", 0, _MAX_PIXELS)
        if value % 8:
            raise WorkflowError(
                f"outpaint.{side} is {value} pixels; it must be a multiple of 8 (the latent is 1/8 of the "
                f"image): try {value - value % 8} or {value - value % 8 + 8}.", field=f"outpaint.{side}")
        sides[side] = value
    if not any(sides.values()):
        raise WorkflowError("outpaint adds nothing: give at least one of left, top, right, bottom in pixels.",
                            field="outpaint")
    feathering = raw.get("feathering", 40)
    if isinstance(feathering, bool) or not isinstance(feathering, int):
        raise WorkflowError("outpaint.feathering must be a whole number of pixels.", field="outpaint.feathering")
    _number(feathering, "outpaint.feathering", 0, _MAX_PIXELS)
    return Outpaint(**sides, feathering=feathering)


def check_features(params: Any) -> None:
    """Raise :class:`WorkflowError` for the first toolbox field of ``params`` that is malformed.

    Names are checked against a server later (by the builder, which knows its files); here only the shape.
    """
    loras_of(params.loras)
    hires = hires_of(params.hires)
    outpaint = outpaint_of(params.outpaint)
    for name in ("vae", "mask", "family"):
        value = getattr(params, name)
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise WorkflowError(f"{name} must be a name (text), or null.", field=name)
    if params.family is not None and params.family not in FAMILIES:
        raise WorkflowError(f"family {params.family!r} is not known; choose one of: {', '.join(FAMILIES)} "
                            "(or null to recognise it from the checkpoint).", field="family")
    if params.guidance is not None:
        _number(params.guidance, "guidance", 0.0, 100.0)
    styles = params.styles
    if styles is not None and (isinstance(styles, str) or not isinstance(styles, (list, tuple))
                               or not all(isinstance(s, str) and s.strip() for s in styles)):
        raise WorkflowError('styles must be a list of style names, like ["Cinematic"].', field="styles")
    if styles is not None and len(styles) > MAX_STYLES:
        raise WorkflowError(f"{len(styles)} styles is more than the {MAX_STYLES} one image may take; drop some.",
                            field="styles")
    for name, high in (("mask_blur", MAX_MASK_BLUR), ("mask_grow", 256), ("inpaint_padding", 1024)):
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise WorkflowError(f"{name} must be a whole number of pixels.", field=name)
        _number(value, name, -256 if name == "mask_grow" else 0, high)
    if not isinstance(params.inpaint_full_res, bool):
        raise WorkflowError("inpaint_full_res must be true or false.", field="inpaint_full_res")
    if params.mask is not None and not params.init_image:
        raise WorkflowError("A mask needs an init_image to repaint; add the image the mask was drawn on.",
                            field="mask")
    if outpaint is not None and not params.init_image:
        raise WorkflowError("Outpainting needs an init_image to extend; add the image.", field="outpaint")
    if outpaint is not None and params.mask is not None:
        raise WorkflowError("Use either a mask (inpainting) or outpaint, not both in one image.",
                            field="outpaint")
    if hires is not None and params.init_image:
        raise WorkflowError("Hires fix is for text-to-image; for an init image, upscale it first or drop hires.",
                            field="hires")
    if hires is not None:
        for size in hires_size(params.width, params.height, hires.scale):
            if size > _MAX_PIXELS:
                raise WorkflowError(f"hires would make a {size}-pixel side; the most is {_MAX_PIXELS}: "
                                    "lower hires.scale.", field="hires.scale")


def check_output_size(params: Any, max_width: int, max_height: int) -> None:
    """Refuse a hires fix or an outpaint whose output would pass the studio's size limits (for an init
    image, call it once ``width``/``height`` are the image's)."""
    hires, outpaint = hires_of(params.hires), outpaint_of(params.outpaint)
    if hires is not None:
        width, height = hires_size(params.width, params.height, hires.scale)
        field, fix = "hires.scale", "lower hires.scale or the size"
    elif outpaint is not None:
        width = params.width + outpaint.left + outpaint.right
        height = params.height + outpaint.top + outpaint.bottom
        field, fix = "outpaint", "add fewer pixels"
    else:
        return
    if width > max_width or height > max_height:
        raise WorkflowError(f"That makes a {width}×{height} image; the most this studio makes is "
                            f"{max_width}×{max_height} (STUDIO_MAX_WIDTH × STUDIO_MAX_HEIGHT): {fix}.", field=field)


def _no_unknown_keys(raw: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise WorkflowError(f"{where} has unknown key(s) {', '.join(unknown)}; it takes: {', '.join(known)}.",
                            field=f"{where}.{unknown[0]}")


def _number(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise WorkflowError(f"{field} must be a number.", field=field)
    if not low <= value <= high:
        raise WorkflowError(f"{field} is {value}; it must be between {low} and {high}.", field=field)
    return value
