"""Graphs: ComfyUI API-format workflows and what travels with them.

``workflow`` parses and checks a workflow (from JSON, a template or a PNG); ``binding`` writes the
studio's parameters into it; ``inputs`` discovers every editable input; ``validation`` checks it against
``object_info`` (what a server can run); ``params`` are the generation parameters; ``pngmeta`` reads and
writes PNG text chunks (the one place that inflates them, with a size limit); ``pnginfo`` reads the
settings of a PNG made by us, ComfyUI or AUTOMATIC1111.

The artist's toolbox builds its own graphs from core nodes: ``builder`` (txt2img, img2img, inpainting,
outpainting, LoRAs, VAE, hires fix, per model family), ``families`` (SD 1.5 / SDXL / Flux: recognised from
a checkpoint's metadata or name, with their defaults), ``features`` (the LoRA, hires and outpaint fields),
``lora_syntax`` (A1111's ``<lora:name:0.8>``), ``masks`` (mask checks, the "only masked" area),
``styles`` (A1111's styles.csv), ``wildcards`` (``__name__`` and ``{a|b}``, drawn from the seed),
``recipe`` (all of it applied, in order, plus what the PNG records), ``plot`` (X/Y/Z grids, in
A1111's axis syntax, and the labelled grid image) and ``toolbox`` (the style and wildcard folders of a
studio, and a generate job's graph from its stored params, as both submission and the worker build it).

Pure functions over dicts and bytes: this package imports only ``comfy.errors``, no network; the disk
is read only for the shipped templates, styles and wildcards, and the folders a caller names.

The workflow functions (and the toolbox's ``build_graph``, ``prepare`` and ``plan_grid``) are re-exported
here, so callers write ``workflows.bind(...)`` after ``from comfy import graph as workflows``.
"""

from comfy.graph.binding import PARAM_NAMES, PARAM_TITLES, Binding, bind, bind_values, bound_values, find_bindings
from comfy.graph.builder import build_graph
from comfy.graph.inputs import EditableInput, apply_inputs, discover_inputs
from comfy.graph.plot import plan_grid
from comfy.graph.recipe import Prepared, prepare
from comfy.graph.validation import default_checkpoint, find_problems, summarize, validate
from comfy.graph.workflow import TEMPLATES_DIR, list_templates, load_template, parse_workflow, workflow_from_png

__all__ = [
    "TEMPLATES_DIR", "PARAM_NAMES", "PARAM_TITLES", "Binding", "EditableInput",
    "list_templates", "load_template", "parse_workflow", "workflow_from_png",
    "find_bindings", "bind", "bind_values", "bound_values", "discover_inputs", "apply_inputs",
    "validate", "find_problems", "default_checkpoint", "summarize", "build_graph", "prepare", "Prepared", "plan_grid",
]
