"""Graphs: ComfyUI API-format workflows and what travels with them.

Parsing and checking a workflow, binding the studio's parameters into it, discovering its inputs,
``object_info`` (what a server can run), the generation parameters, and PNG metadata (read and
written in ``pngmeta``, the one place that inflates a PNG text chunk, with a size limit).
Pure functions over dicts and bytes: this package imports only ``comfy.errors``, no network and no disk
beyond the shipped templates.
"""

from comfy.graph.workflow import *  # noqa: F403  (the workflow functions, as `graph.bind(...)`)
from comfy.graph.workflow import __all__ as _workflow_all

__all__ = list(_workflow_all)
