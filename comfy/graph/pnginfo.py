"""Reading generation settings back from a PNG: ours, ComfyUI's, or AUTOMATIC1111's.

Three sources, tried in order of how much they say:

1. the studio's own ``comfyui_studio`` chunk (the exact parameters, seed included);
2. AUTOMATIC1111's ``parameters`` text (also written by Fooocus, Forge, SD.Next and us);
3. ComfyUI's ``prompt`` chunk, an API graph, from which the binder reads the values back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph import pngmeta
from comfy.graph.binding import bound_values
from comfy.graph.features import hires_of
from comfy.graph.lora_syntax import extract_loras
from comfy.graph.params import GenerationParams
from comfy.graph.pngmeta import METADATA_KEY
from comfy.graph.workflow import parse_workflow

__all__ = ["PngInfo", "read_png_info", "parse_a1111"]

_A1111_KEYS = {
    "steps": ("steps", int), "sampler": ("sampler", str), "schedule type": ("scheduler", str),
    "cfg scale": ("cfg", float), "seed": ("seed", int), "model": ("checkpoint", str),
    "denoising strength": ("denoise", float),
}
# A1111 writes "DPM++ 2M Karras"; ComfyUI names the same thing dpmpp_2m + karras.
_A1111_SAMPLERS = {
    "euler": "euler", "euler a": "euler_ancestral", "heun": "heun", "dpm2": "dpm_2", "dpm2 a": "dpm_2_ancestral",
    "lms": "lms", "dpm++ 2m": "dpmpp_2m", "dpm++ sde": "dpmpp_sde", "dpm++ 2m sde": "dpmpp_2m_sde",
    "dpm++ 2s a": "dpmpp_2s_ancestral", "dpm++ 3m sde": "dpmpp_3m_sde", "ddim": "ddim", "uni_pc": "uni_pc",
    "unipc": "uni_pc", "lcm": "lcm", "dpm fast": "dpm_fast", "dpm adaptive": "dpm_adaptive",
}
_A1111_SCHEDULERS = {"karras": "karras", "exponential": "exponential", "sgm uniform": "sgm_uniform",
                     "simple": "simple", "normal": "normal", "ddim": "ddim_uniform", "beta": "beta",
                     "automatic": "normal", "uniform": "normal"}


@dataclass(frozen=True)
class PngInfo:
    """What a PNG says about how it was made."""

    source: str  #: "comfyui_studio", "a1111", "comfyui" or "none"
    params: dict[str, Any] = field(default_factory=dict)  #: studio parameters (GenerationParams names)
    texts: dict[str, str] = field(default_factory=dict)  #: every text chunk, as found
    workflow: dict[str, Any] | None = None  #: ComfyUI's API graph, when there is one

    def generation_params(self) -> GenerationParams | None:
        """The parameters as a value the studio can run again, or None if there is no prompt."""
        known = {k: v for k, v in self.params.items() if k in GenerationParams.__dataclass_fields__}
        if not isinstance(known.get("prompt"), str):
            return None
        known.pop("init_image", None)  # the original upload is not in the PNG
        known.pop("mask", None)  # nor is the mask
        return GenerationParams.from_dict(known)


def parse_a1111(text: str) -> dict[str, Any]:
    """Parse an AUTOMATIC1111 ``parameters`` text into studio parameter names.

    >>> parse_a1111("a cat\\nNegative prompt: dog\\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, Size: 512x768")
    {'prompt': 'a cat', 'negative_prompt': 'dog', 'steps': 20, 'sampler': 'dpmpp_2m', 'cfg': 7.0, 'seed': 5, 'width': 512, 'height': 768, 'scheduler': 'karras'}
    """
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and re.search(r"(^|, )Steps: \d", lines[-1]) else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    params: dict[str, Any] = {"prompt": "\n".join(prompt).strip()}
    if negative:
        params["negative_prompt"] = "\n".join(negative).strip()
    # Values may be quoted and contain commas: "Lora hashes: "a: 1, b: 2"".
    toolbox: dict[str, str] = {}
    for key, value in re.findall(r'\s*([\w \-/+]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', settings_line):
        key, value = key.strip().lower(), _unquote(value.strip())
        if key in _TOOLBOX_KEYS:
            toolbox[key] = value
            continue
        if key == "size" and "x" in value:
            width, _, height = value.partition("x")
            if width.isdigit() and height.isdigit():
                params["width"], params["height"] = int(width), int(height)
        elif key in _A1111_KEYS:
            name, kind = _A1111_KEYS[key]
            try:
                params[name] = kind(value)
            except ValueError:
                continue
    if "sampler" in params:
        params.update(_comfy_sampler(params["sampler"], params.get("scheduler")))
    if toolbox or "<" in params["prompt"]:
        _toolbox_fields(params, toolbox)
    return params


# The toolbox's settings in A1111's text (and Forge's "Distilled CFG Scale" for Flux guidance).
_TOOLBOX_KEYS = frozenset({"hires upscale", "hires steps", "hires upscaler", "style", "styles", "styles array", "vae",
                           "mask blur", "inpaint area", "masked area padding", "distilled cfg scale"})


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            loaded = json.loads(value)
            return loaded if isinstance(loaded, str) else value.strip('"')
        except ValueError:
            return value.strip('"')
    return value


def _toolbox_fields(params: dict[str, Any], found: dict[str, str]) -> None:
    """LoRA tags out of the prompt into ``loras``; hires, styles, VAE, mask and guidance settings."""
    try:
        prompt, loras = extract_loras(params["prompt"])
    except WorkflowError:
        prompt, loras = params["prompt"], []
    if loras:
        params["prompt"], params["loras"] = prompt, [lora.to_dict() for lora in loras]
    if "hires upscale" in found:
        hires: dict[str, Any] = {"scale": _parsed(found["hires upscale"], float, 2.0)}
        if "denoise" in params:  # with a hires pass, A1111's "Denoising strength" is the pass's
            hires["denoise"] = params.pop("denoise")
        if _parsed(found.get("hires steps"), int, 0):
            hires["steps"] = int(found["hires steps"])
        upscaler = found.get("hires upscaler", "Latent")
        hires["upscaler"] = "latent" if upscaler.lower().startswith(("latent", "none")) else upscaler
        try:
            params["hires"] = hires_of(hires).to_dict()  # type: ignore[union-attr]
        except WorkflowError:
            params["hires"] = hires  # kept as found; checking the parameters will say what is wrong
    styles = found.get("styles array")
    names: Any = None
    if styles:
        try:
            names = json.loads(styles)
        except ValueError:
            names = None
    if not isinstance(names, list):
        text = found.get("style") or found.get("styles") or ""
        names = [n.strip() for n in text.split(",") if n.strip()]
    if names:
        params["styles"] = [str(n) for n in names]
    if found.get("vae") and found["vae"].lower() not in ("none", "automatic"):
        params["vae"] = found["vae"]
    for key, name, kind in (("mask blur", "mask_blur", int), ("masked area padding", "inpaint_padding", int),
                            ("distilled cfg scale", "guidance", float)):
        if key in found and (value := _parsed(found[key], kind, None)) is not None:
            params[name] = value
    if "inpaint area" in found:
        params["inpaint_full_res"] = found["inpaint area"].strip().lower() == "only masked"


def _parsed(value: str | None, kind: type, default: Any) -> Any:
    try:
        return kind(value) if value is not None else default
    except ValueError:
        return default


def _comfy_sampler(name: str, scheduler: str | None) -> dict[str, str]:
    lowered = name.lower().strip()
    found_scheduler = scheduler
    for suffix, comfy_name in _A1111_SCHEDULERS.items():
        if lowered.endswith(" " + suffix):
            lowered, found_scheduler = lowered[: -len(suffix) - 1], comfy_name
            break
    result = {"sampler": _A1111_SAMPLERS.get(lowered, name)}
    if found_scheduler:
        result["scheduler"] = _A1111_SCHEDULERS.get(found_scheduler.lower(), found_scheduler)
    return result


def read_png_info(data: bytes) -> PngInfo:
    """Everything a PNG says about its settings. Raises :class:`WorkflowError` if it is not a PNG."""
    if not pngmeta.is_png(data):
        raise WorkflowError("This is not a PNG file; PNG info reads the settings stored in PNG images.",
                            field="image")
    texts = pngmeta.read_text_chunks(data)
    graph = None
    if "prompt" in texts:
        try:
            graph = parse_workflow(texts["prompt"])
        except WorkflowError:
            graph = None
    if METADATA_KEY in texts:
        try:
            ours = json.loads(texts[METADATA_KEY])
            return PngInfo("comfyui_studio", dict(ours.get("params") or {}), texts, graph)
        except ValueError:
            pass
    if "parameters" in texts:
        return PngInfo("a1111", parse_a1111(texts["parameters"]), texts, graph)
    if graph is not None:
        values = bound_values(graph)
        return PngInfo("comfyui", {k: v for k, v in values.items() if k != "init_image"}, texts, graph)
    return PngInfo("none", {}, texts, None)
