"""Graphs: ComfyUI API-format workflows and what travels with them.

``workflow`` parses and checks a workflow (from JSON, a template or a PNG); ``binding`` writes the
studio's parameters into it; ``inputs`` discovers every editable input; ``validation`` checks it against
``object_info`` (what a server can run); ``params`` are the generation parameters; ``pngmeta`` reads and
writes PNG text chunks (the one place that inflates them, with a size limit); ``pnginfo`` reads the
settings of a PNG made by us, ComfyUI or AUTOMATIC1111. Pure functions over dicts and bytes: this
package imports only ``comfy.errors``, no network, no disk beyond the shipped templates.

The workflow functions are re-exported here, so callers write ``workflows.bind(...)`` after
``from comfy import graph as workflows``.
"""

from comfy.graph.binding import PARAM_NAMES, PARAM_TITLES, Binding, bind, bind_values, bound_values, find_bindings
from comfy.graph.inputs import EditableInput, apply_inputs, discover_inputs
from comfy.graph.validation import default_checkpoint, find_problems, summarize, validate
from comfy.graph.workflow import TEMPLATES_DIR, list_templates, load_template, parse_workflow, workflow_from_png

__all__ = [
    "TEMPLATES_DIR", "PARAM_NAMES", "PARAM_TITLES", "Binding", "EditableInput",
    "list_templates", "load_template", "parse_workflow", "workflow_from_png",
    "find_bindings", "bind", "bind_values", "bound_values", "discover_inputs", "apply_inputs",
    "validate", "find_problems", "default_checkpoint", "summarize",
]
