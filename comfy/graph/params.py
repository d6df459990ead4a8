"""The studio's generation parameters: one value object, checked against the configured limits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
from dataclasses import dataclass, fields
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.features import check_features, check_output_size

__all__ = ["GenerationParams", "Limits", "MAX_SEED", "RANDOM_SEED", "seed_from"]

#: KSampler's seed input accepts 0..2**64-1 (``object_info``: ``"max": 18446744073709551615``).
MAX_SEED = 2**64 - 1
#: A seed of -1 asks for a random one; the seed actually used is recorded on the job.
RANDOM_SEED = -1


def seed_from(*material: Any) -> int:
    """A "random" seed drawn from ``material``: the same material always draws the same seed.

    For idempotent requests with seed -1: a retry under the same key must be the same request, and
    so must draw the same seed rather than look like a different one.

    >>> seed_from("key-1", {"prompt": "a fox"}) == seed_from("key-1", {"prompt": "a fox"})
    True
    """
    text = json.dumps(material, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 2**53  # exact in JavaScript


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one request may ask for (from the settings)."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 16
    max_prompt_length: int = 10_000

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class GenerationParams:
    """What an artist sets for one generation.

    >>> p = GenerationParams(prompt="a lighthouse at dawn", seed=42)
    >>> p.with_seed(43).seed
    43
    """

    prompt: str
    negative_prompt: str = ""
    #: None means the backend's first checkpoint, resolved when the job is created or run.
    checkpoint: str | None = None
    sampler: str = "euler"
    scheduler: str = "normal"
    steps: int = 20
    cfg: float = 7.0
    seed: int = RANDOM_SEED
    width: int = 512
    height: int = 512
    batch_size: int = 1
    denoise: float = 1.0
    #: For img2img: the image's name as the worker uploaded it to ComfyUI (set at run time) or,
    #: on a stored job, the path of the kept copy under the data folder.
    init_image: str | None = None
    # The artist's toolbox (comfy.graph.features reads these JSON values; the defaults change nothing).
    #: ``[{"name", "strength", "strength_clip"}]``: LoRAs chained after the checkpoint.
    loras: list[dict[str, Any]] | None = None
    #: A VAE file (GET /models "vaes"); None for the checkpoint's own.
    vae: str | None = None
    #: ``{"scale", "denoise", "steps", "upscaler"}``: a second pass on the upscaled result.
    hires: dict[str, Any] | None = None
    #: For inpainting: the mask image (white = repaint), named like ``init_image``.
    mask: str | None = None
    mask_blur: int = 4
    mask_grow: int = 0
    #: "Only masked": repaint the masked area (plus ``inpaint_padding``) at the full width × height.
    inpaint_full_res: bool = False
    inpaint_padding: int = 32
    #: ``{"left", "top", "right", "bottom"}`` pixels (multiples of 8) added around the init image.
    outpaint: dict[str, Any] | None = None
    #: Style names applied to the prompts (see comfy.graph.styles).
    styles: list[str] | None = None
    #: "sd15", "sdxl" or "flux"; None recognises it from the checkpoint.
    family: str | None = None
    #: Flux guidance (FluxGuidance); None for the family's default.
    guidance: float | None = None

    def with_seed(self, seed: int) -> GenerationParams:
        return dataclasses.replace(self, seed=seed)

    def resolve_seed(self, *idempotency: Any) -> GenerationParams:
        """Turn seed -1 into a concrete seed, so the seed used can be recorded.

        Random, unless ``idempotency`` (e.g. the owner and idempotency key) is given: then it is drawn
        from that and these parameters, so retrying the same request draws the same seed.
        """
        if self.seed != RANDOM_SEED:
            return self
        if any(part is not None for part in idempotency):
            return self.with_seed(seed_from(*idempotency, self.to_dict()))
        return self.with_seed(secrets.randbelow(2**53))  # stays exact in JSON and JavaScript

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values; toolbox fields left at their default are left out (as before them)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in _TOOLBOX_DEFAULTS or v != _TOOLBOX_DEFAULTS[k]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationParams:
        """Build from a mapping; unknown keys are an error that names them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WorkflowError(f"Unknown parameter(s): {', '.join(unknown)}.", field=unknown[0])
        if "prompt" not in data:
            raise WorkflowError("A prompt is required.", field="prompt")
        return cls(**data)

    def check(self, limits: Limits) -> GenerationParams:
        """Raise :class:`WorkflowError` naming the first field that is out of bounds; return self."""
        _check_type(self)
        if not self.prompt.strip():
            raise WorkflowError("The prompt is empty: describe the image you want.", field="prompt")
        for name in ("prompt", "negative_prompt"):
            if len(getattr(self, name)) > limits.max_prompt_length:
                raise WorkflowError(
                    f"The {name.replace('_', ' ')} is {len(getattr(self, name))} characters long; "
                    f"the limit is {limits.max_prompt_length}.",
                    field=name,
                )
        _in_range("steps", self.steps, 1, limits.max_steps)
        _in_range("batch_size", self.batch_size, 1, limits.max_batch_size)
        _in_range("width", self.width, 64, limits.max_width)
        _in_range("height", self.height, 64, limits.max_height)
        for name in ("width", "height"):
            if getattr(self, name) % 8:
                value = getattr(self, name)
                raise WorkflowError(
                    f"{name} must be a multiple of 8 (the latent is 1/8 of the image); "
                    f"try {value - value % 8} or {value - value % 8 + 8}.",
                    field=name,
                )
        _in_range("cfg", self.cfg, 0.0, 100.0)
        _in_range("denoise", self.denoise, 0.0, 1.0)
        if self.seed != RANDOM_SEED:
            _in_range("seed", self.seed, 0, MAX_SEED)
        check_features(self)
        if not self.init_image:  # with an image, once its size is known (see comfy.submission)
            check_output_size(self, limits.max_width, limits.max_height)
        return self


_TOOLBOX_DEFAULTS = {f.name: f.default for f in fields(GenerationParams)
                     if f.name in ("loras", "vae", "hires", "mask", "mask_blur", "mask_grow", "inpaint_full_res",
                                   "inpaint_padding", "outpaint", "styles", "family", "guidance")}

_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,), "negative_prompt": (str,), "checkpoint": (str, type(None)), "sampler": (str,),
    "scheduler": (str,), "steps": (int,), "cfg": (int, float), "seed": (int,), "width": (int,), "height": (int,),
    "batch_size": (int,), "denoise": (int, float), "init_image": (str, type(None)),
}


def _check_type(params: GenerationParams) -> None:
    for name, types in _TYPES.items():
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join("nothing" if t is type(None) else t.__name__ for t in types)
            raise WorkflowError(f"{name} must be {wanted}, not {type(value).__name__}.", field=name)


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise WorkflowError(f"{name} is {value}; it must be between {low} and {high}.", field=name)
