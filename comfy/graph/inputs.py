"""Every editable input of a workflow, with the widget kind and range it needs, and setting them by node."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.binding import PARAM_LABELS, PARAM_NAMES, SAMPLER_PARAMS, find_bindings
from comfy.graph.nodes import (
    Graph,
    is_image_loader,
    is_link,
    is_sampler,
    node_class,
    node_field,
    node_inputs,
    node_label,
    node_order,
    node_title,
)
from comfy.graph.object_info import InputSpec, ObjectInfo

__all__ = ["EditableInput", "discover_inputs", "apply_inputs"]


@dataclass(frozen=True)
class EditableInput:
    """One literal input of one node, typed for a form widget.

    ``kind`` is ``text``, ``int``, ``float``, ``combo``, ``bool`` or ``image`` (a file name on the
    server, set by uploading). ``param`` is the studio parameter bound to it, if any.
    """

    node_id: str
    node_title: str
    class_type: str
    input_name: str
    label: str
    kind: str
    value: Any
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    multiline: bool = False
    param: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """The ``(node_id, input_name)`` key :func:`apply_inputs` takes."""
        return (self.node_id, self.input_name)


def discover_inputs(graph: Mapping[str, Any], object_info: ObjectInfo | None = None) -> list[EditableInput]:
    """Every literal (non-link) input of every node: prompts first, then sampler settings, then the rest.

    With ``object_info`` each input is typed from the server's declaration (combo choices, INT/FLOAT
    ranges, multiline text, image uploads); without it the kind is guessed from the value.
    """
    graph = dict(graph)
    bound = {(b.node_id, b.input_name): b.param for places in find_bindings(graph).values() for b in places}
    samplers = {n for n in graph if is_sampler(graph[n])}
    ranked: list[tuple[tuple[Any, ...], EditableInput]] = []
    for node_id in sorted(graph, key=node_order):
        node = graph[node_id]
        specs = _specs(object_info, node_class(node))
        names = [n for n in specs if n in node_inputs(node)] + [n for n in node_inputs(node) if n not in specs]
        for position, name in enumerate(names):
            value = node_inputs(node)[name]
            if isinstance(value, (list, dict)) or value is None:
                continue  # links, and {"__value__": ...} wrappers, are not form fields
            param = bound.get((node_id, name))
            item = _editable(node_id, node, name, value, specs.get(name), param, object_info)
            if param in ("prompt", "negative_prompt"):
                rank: tuple[Any, ...] = (0, PARAM_NAMES.index(param), node_order(node_id), position)
            elif param in SAMPLER_PARAMS or node_id in samplers:
                order = PARAM_NAMES.index(param) if param in SAMPLER_PARAMS else len(PARAM_NAMES)
                rank = (1, order, node_order(node_id), position)
            else:
                rank = (2, 0, node_order(node_id), position)
            ranked.append((rank, item))
    return [item for _, item in sorted(ranked, key=lambda pair: pair[0])]


def apply_inputs(graph: Mapping[str, Any], values: Mapping[tuple[str, str], Any]) -> Graph:
    """A new graph with ``(node_id, input_name) -> value`` set.

    Raises :class:`WorkflowError` for a node or input the graph does not have, for an input that is a
    link (it takes its value from another node), or for a list value (ComfyUI reads lists as links).
    """
    out = copy.deepcopy(dict(graph))
    for (node_id, name), value in values.items():
        node = out.get(node_id)
        if not isinstance(node, dict):
            raise WorkflowError(f"The workflow has no node {node_id!r}.", field=f"node {node_id}")
        inputs = node_inputs(node)
        if name not in inputs:
            raise WorkflowError(
                f"{node_label(node_id, node)} has no input {name!r}; its inputs are: {', '.join(inputs) or 'none'}.",
                field=node_field(node_id, node, name),
            )
        if is_link(inputs[name]):
            raise WorkflowError(
                f"{node_label(node_id, node)}, input '{name}': it is connected to node {inputs[name][0]} and takes "
                "its value from there; set that node's value instead.",
                field=node_field(node_id, node, name),
            )
        if isinstance(value, list):
            raise WorkflowError(
                f"{node_label(node_id, node)}, input '{name}': a list would be read as a link; "
                'wrap a list value as {"__value__": [...]}.',
                field=node_field(node_id, node, name),
            )
        inputs[name] = copy.deepcopy(value)
        if name == "image" and is_image_loader(node):
            node.pop("is_changed", None)
    return out


def _specs(object_info: ObjectInfo | None, class_type: str) -> dict[str, InputSpec]:
    if object_info is None or not object_info.has(class_type):
        return {}
    return {spec.name: spec for spec in object_info.input_specs(class_type)}


def _editable(node_id: str, node: dict[str, Any], name: str, value: Any, spec: InputSpec | None,
              param: str | None, object_info: ObjectInfo | None) -> EditableInput:
    cls = node_class(node)
    title = node_title(node) or (object_info.display_name(cls) if object_info is not None else cls)
    label = PARAM_LABELS[param] if param else name.replace("_", " ").capitalize()
    if spec is not None and not spec.is_link:
        kind = _spec_kind(spec)
        return EditableInput(node_id, title, cls, name, label, kind, value, default=spec.default, min=spec.min,
                             max=spec.max, step=spec.step, choices=spec.choices, multiline=spec.multiline,
                             param=param)
    kind = _guess_kind(node, name, value)
    multiline = kind == "text" and (name in ("text", "text_g", "text_l", "prompt") or "\n" in str(value))
    return EditableInput(node_id, title, cls, name, label, kind, value, multiline=multiline, param=param)


def _spec_kind(spec: InputSpec) -> str:
    if spec.image_upload:
        return "image"
    return {"INT": "int", "FLOAT": "float", "BOOLEAN": "bool", "COMBO": "combo"}.get(spec.type, "text")


def _guess_kind(node: dict[str, Any], name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if name == "image" and is_image_loader(node):
        return "image"
    if name in ("ckpt_name", "sampler_name", "scheduler", "lora_name", "vae_name"):
        return "combo"
    return "text"
