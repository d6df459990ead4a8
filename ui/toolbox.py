"""The toolbox's form values and the engine's parameters, both ways (no components here: see ui.toolbox_panel).

* :func:`editor_mask`: Gradio's ImageEditor value (background + brush layers) as the repaint mask, a PNG the
  size of the image, white where any layer was painted.
* :func:`lora_list`: the LoRA rows (picker + strength) as the engine's ``loras``.
* :func:`toolbox_params`: the toolbox fields of the form as GenerationParams fields.
* :func:`plot_grid`: the plot's axes (parameter + values text) as the engine's ``grid``.
* :func:`toolbox_values`: parameters (a job's, or what PNG info read) back into the form's toolbox fields.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from comfy import WorkflowError
from comfy.graph.families import detect_family
from comfy.graph.plot import PLOT_PARAMS

__all__ = ["LORA_ROWS", "TOOLBOX_FIELDS", "INPAINT_FIELDS", "PLOT_FIELDS", "RESTORED_FIELDS", "FAMILIES", "editor_mask", "lora_list",
           "toolbox_params", "plot_grid", "toolbox_values", "shows_guidance"]

#: LoRA rows on the page (a fixed pool: "Add LoRA" shows the next hidden one).
LORA_ROWS = 6
#: The Generate tab's toolbox fields, in the order their components are passed to handlers.
TOOLBOX_FIELDS = ([f"lora_{i}" for i in range(LORA_ROWS)] + [f"lora_strength_{i}" for i in range(LORA_ROWS)]
                  + ["vae", "family", "guidance", "hires_on", "hires_scale", "hires_denoise", "hires_steps",
                     "hires_upscaler", "styles"])
#: The Image-to-image tab's inpainting and outpainting fields.
INPAINT_FIELDS = ["mask_editor", "mask_file", "mask_blur", "mask_grow", "inpaint_full_res", "inpaint_padding",
                  "outpaint_left", "outpaint_top", "outpaint_right", "outpaint_bottom"]
#: The toolbox fields "Use these settings" and PNG info fill in (the mask itself is not in a PNG).
RESTORED_FIELDS = TOOLBOX_FIELDS + [name for name in INPAINT_FIELDS if name not in ("mask_editor", "mask_file")]
#: The plot's fields: three axes (parameter, values) and the confirmation of a large grid.
PLOT_FIELDS = ["x_param", "x_values", "y_param", "y_values", "z_param", "z_values", "plot_confirmed"]
#: The family choices on the page and the engine's names (auto: recognised from the checkpoint).
FAMILIES = {"auto": None, "SD1.5": "sd15", "SDXL": "sdxl", "Flux": "flux"}
NO_VAE = "checkpoint's own"
_SIDES = ("left", "top", "right", "bottom")


def editor_mask(value: Mapping[str, Any] | None) -> bytes | None:
    """The brush strokes of an ImageEditor value as a mask PNG the size of its background (white = repaint);
    None when nothing was painted.

    >>> from PIL import Image
    >>> layer = Image.new("RGBA", (16, 8)); layer.paste((255, 0, 0, 255), (2, 2, 6, 6))
    >>> mask = Image.open(io.BytesIO(editor_mask({"background": Image.new("RGB", (16, 8)), "layers": [layer]})))
    >>> mask.size, mask.mode, mask.getpixel((3, 3)), mask.getpixel((10, 3))
    ((16, 8), 'L', 255, 0)
    """
    if not value:
        return None
    background = _opened(value.get("background"))
    layers = [layer for layer in (_opened(item) for item in value.get("layers") or []) if layer is not None]
    if not layers:
        return None
    size = background.size if background is not None else layers[0].size
    mask = Image.new("L", size, 0)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:  # a layer is the canvas's size, which is the background's
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        mask.paste(255, (0, 0), alpha.point(lambda a: 255 if a > 0 else 0))
    if mask.getbbox() is None:
        return None
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def _opened(item: Any) -> Image.Image | None:
    if item is None:
        return None
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray)):
        return Image.open(io.BytesIO(item))
    if isinstance(item, str):
        return Image.open(item)
    try:  # numpy
        return Image.fromarray(item)
    except (TypeError, AttributeError):
        return None


def lora_list(names: Sequence[str | None], strengths: Sequence[float | None]) -> list[dict[str, Any]] | None:
    """The rows that name a LoRA, in order, as ``[{"name", "strength"}]``; None for none.

    >>> lora_list(["detail.safetensors", None, "ink"], [0.7, 1.0, None])
    [{'name': 'detail.safetensors', 'strength': 0.7}, {'name': 'ink', 'strength': 1.0}]
    """
    rows = [{"name": name.strip(), "strength": 1.0 if strength in (None, "") else float(strength)}
            for name, strength in zip(names, strengths) if name and name.strip()]
    return rows or None


def shows_guidance(family: str | None, checkpoint: str | None) -> bool:
    """Whether the Flux guidance box applies: Flux chosen, or recognised from the checkpoint's name."""
    chosen = FAMILIES.get(family or "auto", family)
    return chosen == "flux" or (chosen is None and detect_family(checkpoint) == "flux")


def toolbox_params(values: Mapping[str, Any], *, img2img: bool, checkpoint: str | None = None) -> dict[str, Any]:
    """The toolbox's form fields as GenerationParams fields (what is left at its default is left out)."""
    out: dict[str, Any] = {}
    loras = lora_list([values.get(f"lora_{i}") for i in range(LORA_ROWS)],
                      [values.get(f"lora_strength_{i}") for i in range(LORA_ROWS)])
    if loras:
        out["loras"] = loras
    if values.get("vae") and values["vae"] != NO_VAE:
        out["vae"] = values["vae"]
    family = values.get("family") or "auto"
    if family not in FAMILIES:
        raise WorkflowError(f"Model family {family!r} is not one of: {', '.join(FAMILIES)}.", field="family")
    if FAMILIES[family]:
        out["family"] = FAMILIES[family]
    if shows_guidance(family, checkpoint) and values.get("guidance") not in (None, ""):
        out["guidance"] = float(values["guidance"])
    if values.get("hires_on"):
        steps = values.get("hires_steps")
        out["hires"] = {"scale": float(values.get("hires_scale") or 2.0),
                        "denoise": float(values.get("hires_denoise") if values.get("hires_denoise") is not None
                                         else 0.5),
                        "steps": _whole("Hires steps", steps) or None if steps not in (None, "") else None,
                        "upscaler": values.get("hires_upscaler") or "latent"}
    if values.get("styles"):
        out["styles"] = list(values["styles"])
    if img2img:
        for name in ("mask_blur", "mask_grow", "inpaint_padding"):
            if values.get(name) not in (None, ""):
                out[name] = _whole(name.replace("_", " ").capitalize(), values[name])
        out["inpaint_full_res"] = bool(values.get("inpaint_full_res"))
        sides = {side: values.get(f"outpaint_{side}") for side in _SIDES}
        if any(sides.values()):
            out["outpaint"] = {}
            for side, pixels in sides.items():
                number = _whole(f"Extend {side}", pixels or 0)
                if number % 8:
                    raise WorkflowError(f"Extend {side} is {number} pixels; outpainting extends by multiples of 8 "
                                        f"(try {round(number / 8) * 8}).", field="outpaint")
                out["outpaint"][side] = number
    return out


def _whole(label: str, value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise WorkflowError(f"{label} must be a whole number, not {value}.", field=label.lower().replace(" ", "_"))
    return int(number)


def plot_grid(values: Mapping[str, Any]) -> dict[str, Any]:
    """The axes as the engine's ``grid`` (``{"x": {"param", "values"}, ...}``), the values text as typed
    (A1111's syntax, parsed by the engine). An axis with values but no parameter, or a parameter with no
    values, is refused with a sentence.

    >>> plot_grid({"x_param": "steps", "x_values": "10-30 (+10)", "y_param": "", "y_values": ""})
    {'x': {'param': 'steps', 'values': '10-30 (+10)'}}
    """
    grid: dict[str, Any] = {}
    for axis in ("x", "y", "z"):
        param = (values.get(f"{axis}_param") or "").strip()
        text = (values.get(f"{axis}_values") or "").strip()
        if not param and not text:
            continue
        if not param:
            raise WorkflowError(f"The {axis.upper()} axis has values but no parameter: choose its {axis.upper()} "
                                "type.", field=f"grid.{axis}.param")
        if param not in PLOT_PARAMS:
            raise WorkflowError(f"{param!r} is not a plot parameter ({axis.upper()} type); choose one of: "
                                f"{', '.join(PLOT_PARAMS)}.", field=f"grid.{axis}.param")
        if not text:
            raise WorkflowError(f"The {axis.upper()} axis ({param}) has no values: type them, like 1-5 or "
                                "10, 20, 30.", field=f"grid.{axis}.values")
        grid[axis] = {"param": param, "values": text}
    if not grid:
        raise WorkflowError("Choose at least the X axis of the plot: a parameter and its values.", field="grid")
    return grid


def toolbox_values(params: Mapping[str, Any], *, loras_offered: Sequence[str] = (),
                   styles_offered: Sequence[str] = ()) -> tuple[dict[str, Any], list[str]]:
    """Parameters back into the toolbox's fields: ``({field: value}, notes)``; every field gets a value (so a
    job without LoRAs clears the rows). ``notes`` name what the server does not offer (kept or dropped)."""
    notes: list[str] = []
    values: dict[str, Any] = {f"lora_{i}": None for i in range(LORA_ROWS)}
    values.update({f"lora_strength_{i}": 1.0 for i in range(LORA_ROWS)})
    loras = [item for item in params.get("loras") or [] if isinstance(item, Mapping) and item.get("name")]
    if len(loras) > LORA_ROWS:
        notes.append(f"only the first {LORA_ROWS} of its {len(loras)} LoRAs fit in the rows")
    for i, item in enumerate(loras[:LORA_ROWS]):
        values[f"lora_{i}"] = _offered(str(item["name"]), loras_offered)
        values[f"lora_strength_{i}"] = float(item.get("strength", 1.0) if item.get("strength") is not None else 1.0)
        if loras_offered and values[f"lora_{i}"] not in loras_offered:
            notes.append(f"the server has no LoRA {item['name']!r}")
    values["vae"] = params.get("vae") or NO_VAE
    family = params.get("family")
    values["family"] = next((label for label, name in FAMILIES.items() if name == family), "auto")
    values["guidance"] = params.get("guidance") if params.get("guidance") is not None else 3.5
    hires = params.get("hires") if isinstance(params.get("hires"), Mapping) else None
    values["hires_on"] = bool(hires) and float(hires.get("scale", 2.0)) > 1.0  # type: ignore[union-attr]
    hires = hires or {}
    values["hires_scale"] = float(hires.get("scale", 2.0))
    values["hires_denoise"] = float(hires.get("denoise", 0.5))
    values["hires_steps"] = int(hires.get("steps") or 0)
    values["hires_upscaler"] = hires.get("upscaler") or "latent"
    styles = [str(s) for s in params.get("styles") or []]
    missing = [s for s in styles if styles_offered and s not in styles_offered]
    if missing:
        notes.append(f"there is no style {', '.join(map(repr, missing))}")
    values["styles"] = [s for s in styles if s not in missing]
    for name, default in (("mask_blur", 4), ("mask_grow", 0), ("inpaint_padding", 32)):
        values[name] = int(params.get(name) if params.get(name) is not None else default)
    values["inpaint_full_res"] = bool(params.get("inpaint_full_res"))
    outpaint = params.get("outpaint") if isinstance(params.get("outpaint"), Mapping) else {}
    for side in _SIDES:
        values[f"outpaint_{side}"] = int(outpaint.get(side) or 0)  # type: ignore[union-attr]
    return values, notes


def _offered(name: str, offered: Sequence[str]) -> str:
    """A LoRA as the server lists it: ``detail`` for ``detail.safetensors`` (or in a subfolder)."""
    if name in offered:
        return name
    stem = lambda path: path.rsplit("/", 1)[-1].rsplit(".", 1)[0]  # noqa: E731
    return next((file for file in offered if stem(file) == stem(name)), name)
