"""The Generate tab's toolbox: LoRA rows, VAE, model family and Flux guidance, hires fix, styles (on the form),
and inpainting with a brush or an uploaded mask and outpainting (on the Image-to-image tab).

Components only, and the events that change the toolbox itself (adding and removing LoRA rows, the editor
taking the init image, the guidance box following the family); what the fields mean is :mod:`ui.toolbox`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.toolbox import FAMILIES, INPAINT_FIELDS, LORA_ROWS, NO_VAE, RESTORED_FIELDS, TOOLBOX_FIELDS, shows_guidance

__all__ = ["ToolboxPanel", "InpaintPanel", "build_toolbox", "build_inpaint", "wire_toolbox", "lora_rows_shown",
           "restored_outputs"]

_PRIVATE: dict[str, Any] = {"api_visibility": "private"}


class ToolboxPanel:
    """The form's toolbox components; ``inputs`` in :data:`ui.toolbox.TOOLBOX_FIELDS` order."""

    def __init__(self, names: list[gr.Dropdown], strengths: list[gr.Slider], rows: list[gr.Row],
                 removes: list[gr.Button], add: gr.Button, shown: gr.State, fields: dict[str, Any]) -> None:
        self.names, self.strengths, self.rows, self.removes = names, strengths, rows, removes
        self.add, self.shown, self.fields = add, shown, fields
        self.inputs = [*names, *strengths, *(fields[name] for name in TOOLBOX_FIELDS[2 * LORA_ROWS:])]
        assert len(self.inputs) == len(TOOLBOX_FIELDS)


class InpaintPanel:
    """The Image-to-image tab's mask and outpaint components; ``inputs`` in INPAINT_FIELDS order."""

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self.editor = fields["mask_editor"]
        self.inputs = [fields[name] for name in INPAINT_FIELDS]


def build_toolbox() -> ToolboxPanel:
    """LoRAs, VAE and family, hires fix and styles (inside the Generate tab, after the model settings)."""
    fields: dict[str, Any] = {}
    with gr.Accordion("LoRAs, VAE and styles", open=True, elem_id="toolbox"):
        names, strengths, rows, removes = [], [], [], []
        for i in range(LORA_ROWS):
            with gr.Row(visible=False, equal_height=False, elem_classes=["lora-row"], elem_id=f"lora-row-{i}") as row:
                names.append(gr.Dropdown([], value=None, label="LoRA", allow_custom_value=True, scale=4,
                                         elem_id=f"lora-{i}"))
                strengths.append(gr.Slider(-2.0, 2.0, value=1.0, step=0.05, label="Strength", scale=3,
                                           elem_id=f"lora-strength-{i}"))
                removes.append(gr.Button("✕ Remove", size="sm", scale=1, min_width=90, elem_id=f"lora-remove-{i}"))
            rows.append(row)
        add = gr.Button("Add LoRA", size="sm", elem_id="lora-add")
        gr.Markdown("`<lora:name:0.8>` in the prompt works too.", elem_classes=["toolbox-note"])
        with gr.Row():
            fields["vae"] = gr.Dropdown([NO_VAE], value=NO_VAE, label="VAE", allow_custom_value=True, elem_id="vae")
            fields["family"] = gr.Dropdown(list(FAMILIES), value="auto", label="Model family", elem_id="family",
                                           info="auto: recognised from the checkpoint")
            fields["guidance"] = gr.Number(3.5, label="Flux guidance", step=0.5, visible=False, min_width=120,
                                           elem_id="guidance")
        fields["styles"] = gr.Dropdown([], value=[], multiselect=True, label="Styles", elem_id="styles",
                                       info="applied to the prompt and negative prompt, in order")
    with gr.Accordion("Hires fix", open=False, elem_id="hires"):
        fields["hires_on"] = gr.Checkbox(False, label="Enable hires fix", elem_id="hires-on",
                                         info="a second pass on the upscaled image: the output is scale × the size")
        with gr.Row():
            fields["hires_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id="hires-scale")
            fields["hires_denoise"] = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Hires denoise",
                                                elem_id="hires-denoise")
        with gr.Row():
            fields["hires_steps"] = gr.Number(0, label="Hires steps", info="0 = as many as the first pass",
                                              precision=0, minimum=0, elem_id="hires-steps")
            fields["hires_upscaler"] = gr.Dropdown(["latent"], value="latent", label="Upscaler",
                                                   allow_custom_value=True, elem_id="hires-upscaler")
    shown = gr.State([False] * LORA_ROWS)
    return ToolboxPanel(names, strengths, rows, removes, add, shown, fields)


def build_inpaint() -> InpaintPanel:
    """Inpainting (a brush over the init image, or a mask file) and outpainting (inside the Image-to-image tab)."""
    fields: dict[str, Any] = {}
    with gr.Accordion("Inpaint: paint what to repaint", open=False, elem_id="inpaint"):
        fields["mask_editor"] = gr.ImageEditor(
            label="Mask (brush over the image: painted = repaint)", type="pil", format="png", sources=(),
            transforms=(), layers=False, brush=gr.Brush(colors=[("#ffffff", 0.7)], default_color=("#ffffff", 0.7),
                                                        color_mode="fixed", default_size=24),
            eraser=gr.Eraser(default_size=24), height=420, elem_id="mask-editor")
        fields["mask_file"] = gr.Image(label="…or upload a mask (white = repaint, the image's size)", type="filepath",
                                       image_mode=None, sources=["upload", "clipboard"], height=200,
                                       elem_id="mask-file")
        with gr.Row():
            fields["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="mask-blur")
            fields["mask_grow"] = gr.Slider(-64, 64, value=0, step=1, label="Mask grow", elem_id="mask-grow")
        with gr.Row():
            fields["inpaint_full_res"] = gr.Checkbox(False, label="Only masked", elem_id="inpaint-full-res",
                                                     info="repaint the masked area at the full size")
            fields["inpaint_padding"] = gr.Slider(0, 256, value=32, step=8, label="Only masked padding",
                                                  elem_id="inpaint-padding")
    with gr.Accordion("Outpaint: extend the canvas", open=False, elem_id="outpaint"):
        with gr.Row():
            for side in ("left", "top", "right", "bottom"):
                fields[f"outpaint_{side}"] = gr.Number(0, label=f"Extend {side}", step=8, precision=0, minimum=0,
                                                       info="pixels, a multiple of 8", min_width=100, elem_id=f"outpaint-{side}")
    return InpaintPanel(fields)


def lora_rows_shown(shown: list[bool], *, add: int | None = None, remove: int | None = None) -> list[bool]:
    """Which LoRA rows show after "Add LoRA" (the first hidden one) or a row's "Remove".

    >>> lora_rows_shown([True, False, False], add=0)
    [True, True, False]
    >>> lora_rows_shown([True, True, False], remove=0)
    [False, True, False]
    """
    shown = list(shown)
    if add is not None and False in shown:
        shown[shown.index(False)] = True
    if remove is not None:
        shown[remove] = False
    return shown


def wire_toolbox(panel: ToolboxPanel, inpaint: InpaintPanel, init_image: Any, checkpoint: Any) -> None:
    """The toolbox's own events: LoRA rows, the guidance box, the editor taking the init image."""

    def add(shown: list[bool]) -> list[Any]:
        after = lora_rows_shown(shown, add=0)
        if after == shown:
            gr.Warning(f"{LORA_ROWS} LoRAs is the most the rows hold; add more as <lora:name:0.8> in the prompt.")
        return [after, *(gr.Row(visible=v) for v in after)]

    panel.add.click(add, panel.shown, [panel.shown, *panel.rows], trigger_mode="multiple", **_PRIVATE)
    for i, button in enumerate(panel.removes):
        def remove(shown: list[bool], i: int = i) -> list[Any]:
            after = lora_rows_shown(shown, remove=i)
            return [after, gr.Row(visible=False), None, 1.0]

        button.click(remove, panel.shown, [panel.shown, panel.rows[i], panel.names[i], panel.strengths[i]],
                     **_PRIVATE)
    guidance = panel.fields["guidance"]
    gr.on([panel.fields["family"].change, checkpoint.change],
          lambda family, ckpt: gr.Number(visible=shows_guidance(family, ckpt)),
          [panel.fields["family"], checkpoint], guidance, **_PRIVATE)

    def to_editor(path: str | None) -> Any:
        return {"background": path, "layers": [], "composite": path} if path else None

    init_image.change(to_editor, init_image, inpaint.editor, **_PRIVATE)


def restored_outputs(panel: ToolboxPanel, inpaint: InpaintPanel) -> list[Any]:
    """The outputs of "Use these settings" for the toolbox, in the order of ``RESTORED_FIELDS`` + the LoRA rows."""
    by_name = {**dict(zip(TOOLBOX_FIELDS, panel.inputs)), **inpaint.fields}
    return [*(by_name[name] for name in RESTORED_FIELDS), panel.shown, *panel.rows]
