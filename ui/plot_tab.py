"""The X/Y/Z plot on the Generate tab: up to three axes (a parameter and its values in AUTOMATIC1111's syntax),
the confirmation a large grid needs, and the grid itself, filling in as its cells finish.

Each cell is one job with the form's settings and the axes' values (the engine's ``submit_grid``); the
grid shows the cells finished so far, then the finished labelled grid PNG.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from comfy.graph.plot import MAX_CELLS, PLOT_PARAMS
from ui.toolbox import PLOT_FIELDS

__all__ = ["PlotPanel", "build_plot"]

#: What an axis may plot (the engine's list), with "none" for an axis left out.
AXIS_CHOICES = [("none", ""), *((name, name) for name in PLOT_PARAMS)]
_HELP = ("Values: a list (`euler, dpmpp_2m`), a range (`1-5`), a range with a step (`10-30 (+10)`) or a count "
         "(`4-8 [3]`). **prompt_sr** searches the prompts for the first value and puts each value in its place. "
         "Every cell uses the form's settings and seed.")


class PlotPanel:
    """The plot's components: ``inputs`` in PLOT_FIELDS order, its button, grid image and status line."""

    def __init__(self, fields: dict[str, Any], run: gr.Button, grid: gr.Image, status: gr.Markdown,
                 grid_id: gr.State) -> None:
        self.fields, self.run, self.grid, self.status, self.grid_id = fields, run, grid, status, grid_id
        self.inputs = [fields[name] for name in PLOT_FIELDS]


def build_plot() -> PlotPanel:
    """The plot accordion (inside the Generate tab)."""
    fields: dict[str, Any] = {}
    with gr.Accordion("X/Y/Z plot", open=False, elem_id="plot"):
        gr.Markdown(_HELP, elem_classes=["toolbox-note"])
        for axis, default in (("x", "steps"), ("y", ""), ("z", "")):
            with gr.Row(equal_height=True):
                fields[f"{axis}_param"] = gr.Dropdown(AXIS_CHOICES, value=default, label=f"{axis.upper()} type",
                                                      scale=2, min_width=140, elem_id=f"plot-{axis}-param")
                fields[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", scale=5,
                                                      placeholder="10-30 (+10)" if axis == "x" else "",
                                                      elem_id=f"plot-{axis}-values")
        fields["plot_confirmed"] = gr.Checkbox(
            False, label=f"Run more than {MAX_CELLS} images", elem_id="plot-confirmed",
            info=f"A grid of more than {MAX_CELLS} cells queues that many jobs: tick this to run it anyway.")
        run = gr.Button("Run plot", variant="primary", elem_id="run-plot")
        status = gr.Markdown(elem_id="plot-status")
        grid = gr.Image(label="Plot grid", interactive=False, height=480, elem_id="plot-grid", format="png",
                        buttons=["download", "fullscreen"])
    return PlotPanel(fields, run, grid, status, gr.State(None))
