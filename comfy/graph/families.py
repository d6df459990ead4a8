"""Model families (SD 1.5, SDXL, Flux): recognising a checkpoint, and each family's defaults and graph shape.

A checkpoint is recognised from its safetensors metadata first (ComfyUI serves it at
``GET /view_metadata/checkpoints?filename=...``: ``modelspec.architecture``, kohya's
``ss_base_model_version``, or any key or value that names the architecture), else from its file name.
The artist can always name the family instead (``family`` on the request).

>>> detect_family("juggernautXL_v9.safetensors")
'sdxl'
>>> detect_family("model.safetensors", {"modelspec.architecture": "Flux.1-dev"})
'flux'
>>> detect_family("pixelart.safetensors") is None
True
>>> FAMILY_SPECS["flux"].cfg, FAMILY_SPECS["flux"].negative_prompt
(1.0, False)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.features import FAMILIES

__all__ = ["Family", "FAMILY_SPECS", "DEFAULT_FAMILY", "detect_family", "family_of", "apply_family_defaults"]

#: What a checkpoint nobody recognises is treated as: the studio's behaviour before families.
DEFAULT_FAMILY = "sd15"


@dataclass(frozen=True)
class Family:
    """A model family's defaults and how its graph differs."""

    name: str
    label: str
    width: int
    height: int
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    #: False: the sampler's negative is zeroed (Flux is guidance-distilled and runs at CFG 1).
    negative_prompt: bool = True
    #: FluxGuidance's value; None when the family has no guidance input.
    guidance: float | None = None
    #: The node that makes the empty latent for text-to-image.
    empty_latent: str = "EmptyLatentImage"

    def defaults(self) -> dict[str, Any]:
        """The generation fields this family sets when the artist leaves them out."""
        values: dict[str, Any] = {"width": self.width, "height": self.height, "steps": self.steps, "cfg": self.cfg,
                                  "sampler": self.sampler, "scheduler": self.scheduler}
        if self.guidance is not None:
            values["guidance"] = self.guidance
        return values


FAMILY_SPECS: dict[str, Family] = {
    "sd15": Family("sd15", "Stable Diffusion 1.5", 512, 512, 20, 7.0, "euler", "normal"),
    "sdxl": Family("sdxl", "Stable Diffusion XL", 1024, 1024, 25, 6.0, "dpmpp_2m", "karras"),
    "flux": Family("flux", "Flux.1", 1024, 1024, 20, 1.0, "euler", "simple", negative_prompt=False,
                   guidance=3.5, empty_latent="EmptySD3LatentImage"),
}
assert tuple(FAMILY_SPECS) == FAMILIES

# Checked in this order: a Flux or SDXL name often also says "1.5"-like version numbers.
_NAME_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("flux", re.compile(r"flux|schnell", re.IGNORECASE)),
    ("sdxl", re.compile(r"(?i:sdxl|sd_xl|(?<![a-z])xl|pony|illustrious|noob|animagine|playground)"
                        r"|XL")),  # "dreamshaperXLTurbo": an upper-case XL inside a word counts too
    ("sd15", re.compile(r"sd[ _-]?1[._-]?5|sd15|v1[._-]5|sd[ _-]?1(?![0-9])|stable[ _-]?diffusion[ _-]?v?1",
                        re.IGNORECASE)),
)
# Values of modelspec.architecture / ss_base_model_version, and words in other metadata.
_METADATA_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("flux", re.compile(r"flux", re.IGNORECASE)),
    ("sdxl", re.compile(r"stable-diffusion-xl|sdxl|sd_xl|\bxl\b", re.IGNORECASE)),
    ("sd15", re.compile(r"stable-diffusion-v1|sd_v1|sd[ -]?1\.5|sd15|\bv1-5\b", re.IGNORECASE)),
)
_ARCH_KEYS = ("modelspec.architecture", "ss_base_model_version", "architecture", "base_model", "ss_sd_model_name")


def detect_family(filename: str | None, metadata: Mapping[str, Any] | None = None) -> str | None:
    """``"sd15"``, ``"sdxl"`` or ``"flux"`` for a checkpoint, or None when neither metadata nor name tells."""
    if isinstance(metadata, Mapping) and metadata:
        for key in _ARCH_KEYS:
            value = metadata.get(key)
            if isinstance(value, str) and (found := _first_hint(_METADATA_HINTS, value)):
                return found
        # other keys (kohya's ss_sdxl_*, a description saying "SD1.5 architecture"...)
        words = " ".join(f"{k} {v}" for k, v in metadata.items() if isinstance(v, (str, int, float)))
        if found := _first_hint(_METADATA_HINTS, words):
            return found
    if filename:  # its folder counts too ("SDXL/model.safetensors")
        return _first_hint(_NAME_HINTS, re.sub(r"\.(safetensors|ckpt|pt|pth|bin|gguf)$", "", filename, flags=re.I))
    return None


def _first_hint(hints: tuple[tuple[str, re.Pattern[str]], ...], text: str) -> str | None:
    return next((family for family, pattern in hints if pattern.search(text)), None)


def family_of(chosen: str | None, checkpoint: str | None = None,
              metadata: Mapping[str, Any] | None = None) -> Family:
    """The family to build for: the artist's choice, else the checkpoint's, else SD 1.5."""
    if chosen is not None:
        if chosen not in FAMILY_SPECS:
            raise WorkflowError(f"family {chosen!r} is not known; choose one of: {', '.join(FAMILY_SPECS)}.",
                                field="family")
        return FAMILY_SPECS[chosen]
    return FAMILY_SPECS[detect_family(checkpoint, metadata) or DEFAULT_FAMILY]


def apply_family_defaults(values: Mapping[str, Any], family: Family) -> dict[str, Any]:
    """A request's fields with the family's defaults for those it leaves out (what it sets always wins).

    >>> apply_family_defaults({"prompt": "a fox", "steps": 30}, FAMILY_SPECS["sdxl"])["width"]
    1024
    >>> apply_family_defaults({"prompt": "a fox", "steps": 30}, FAMILY_SPECS["sdxl"])["steps"]
    30
    """
    return {**family.defaults(), **{k: v for k, v in values.items() if v is not None or k not in family.defaults()}}
