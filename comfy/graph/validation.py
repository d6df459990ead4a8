"""Checking a workflow against a server's ``/object_info`` as ComfyUI would, with a sentence per problem."""

from __future__ import annotations

import difflib
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.binding import SAMPLER_INPUT_PARAM, find_bindings
from comfy.graph.nodes import (
    Graph,
    Target,
    is_link,
    is_sampler,
    json_kind,
    node_class,
    node_field,
    node_inputs,
    node_label,
    node_order,
    node_ref,
    upstream_of,
)
from comfy.graph.object_info import InputSpec, ObjectInfo
from comfy.graph.workflow import parse_node

__all__ = ["validate", "find_problems", "default_checkpoint", "summarize"]


def validate(graph: Mapping[str, Any], object_info: ObjectInfo, *, pending_uploads: bool = False) -> None:
    """Check a graph before submission, the way ComfyUI's ``/prompt`` would, and raise the first problem.

    Raises :class:`WorkflowError` whose message names the node (id, title, class) and the input, and
    whose ``field`` is the studio parameter bound to that input (``checkpoint``, ``sampler``,
    ``steps``...) or ``node 3 (KSampler).cfg``. See :func:`find_problems` for ``pending_uploads``.
    """
    problems = find_problems(graph, object_info, pending_uploads=pending_uploads)
    if problems:
        raise problems[0]


def find_problems(
    graph: Mapping[str, Any], object_info: ObjectInfo, *, pending_uploads: bool = False
) -> list[WorkflowError]:

    """Every problem :func:`validate` would raise, in a stable order (empty when the graph is valid).

    Like ComfyUI: every node must have a known class; there must be an output node; the inputs are
    then checked on the nodes the outputs depend on. Unlike ComfyUI, a workflow with one broken output
    branch is refused instead of run partially.

    Image file names (LoadImage's ``image``) are never checked against ``object_info``'s list: a
    cached list is stale after the first upload, and ComfyUI's LoadImage checks its file itself at
    submission. Unless ``pending_uploads`` (the images are uploaded later, just before the run), an
    empty image name is refused.
    """
    if not isinstance(graph, Mapping):
        return [WorkflowError("A workflow must be a JSON object that maps node ids to nodes (ComfyUI's API "
                              f"format), not {json_kind(graph)}.")]
    if not graph:
        return [WorkflowError("The workflow has no nodes, so it would produce nothing.")]
    try:
        graph = {str(node_id): parse_node(str(node_id), node) for node_id, node in graph.items()}
    except WorkflowError as exc:
        return [exc]
    order = sorted(graph, key=node_order)
    unknown = [_unknown_class(n, graph[n]) for n in order if not object_info.has(node_class(graph[n]))]
    if unknown:
        return unknown
    outputs = [n for n in order if object_info.is_output_node(node_class(graph[n]))]
    if not outputs:
        return [WorkflowError(
            "The workflow has no output node such as SaveImage, so it would produce nothing; "
            "add a Save Image node.")]
    needed = set(outputs).union(*(upstream_of(graph, n) for n in outputs))
    bound = {(b.node_id, b.input_name): b.param for places in find_bindings(graph).values() for b in places}
    problems: list[WorkflowError] = []
    for node_id in (n for n in order if n in needed):
        problems.extend(_node_problems(graph, node_id, object_info, bound, pending_uploads=pending_uploads))
    return problems


def default_checkpoint(object_info: ObjectInfo) -> str:
    """The server's first checkpoint; raises :class:`WorkflowError` if it has none."""
    checkpoints = object_info.checkpoints
    if not checkpoints:
        raise WorkflowError(
            "The ComfyUI server has no checkpoints in models/checkpoints; add a checkpoint file there "
            "and refresh.",
            field="checkpoint",
        )
    return checkpoints[0]


def summarize(graph: Mapping[str, Any], object_info: ObjectInfo | None = None) -> dict[str, Any]:
    """Counts for display: nodes, node classes, output nodes, samplers and the bound parameters."""
    graph = dict(graph)
    order = sorted(graph, key=node_order)

    def is_output(cls: str) -> bool:
        if object_info is not None and object_info.has(cls):
            return object_info.is_output_node(cls)
        return cls.startswith(("Save", "Preview"))

    return {
        "nodes": len(graph),
        "class_types": dict(Counter(node_class(graph[n]) for n in order)),
        "output_nodes": [n for n in order if is_output(node_class(graph[n]))],
        "samplers": [n for n in order if is_sampler(graph[n])],
        "params": list(find_bindings(graph)),
    }


def _unknown_class(node_id: str, node: Any) -> WorkflowError:
    cls = node_class(node)
    return WorkflowError(
        f"{node_label(node_id, node)}: node type {cls!r} is not installed on the ComfyUI server; "
        "install the custom node or pick another workflow.",
        field=node_field(node_id, node),
    )


def _node_problems(
    graph: Graph, node_id: str, info: ObjectInfo, bound: Mapping[Target, str], *, pending_uploads: bool
) -> Iterator[WorkflowError]:
    node = graph[node_id]
    inputs = node_inputs(node)
    for spec in info.input_specs(node_class(node)):
        field = bound.get((node_id, spec.name))
        if field is None and is_sampler(node):
            field = SAMPLER_INPUT_PARAM.get(spec.name)
        field = field or node_field(node_id, node, spec.name)
        where = f"{node_label(node_id, node)}, input '{spec.name}'"
        if spec.name not in inputs:
            if spec.required:
                yield WorkflowError(f"{where}: this required input is missing; {_how_to_fill(spec)}.", field=field)
            continue
        value = inputs[spec.name]
        if isinstance(value, list):
            problem = _link_problem(graph, value, spec, info)
        elif spec.image_upload and not pending_uploads and not (isinstance(value, str) and value.strip()):
            problem = "no image is set; upload an image for it"
        else:
            problem = _value_problem(value, spec)
        if problem:
            yield WorkflowError(f"{where}: {problem}.", field=field)


def _how_to_fill(spec: InputSpec) -> str:
    if spec.is_link:
        return f"connect it to a node that outputs {spec.type}"
    if spec.default is not None:
        return f"set it (the default is {spec.default!r})"
    return "set it"


def _link_problem(graph: Graph, value: list[Any], spec: InputSpec, info: ObjectInfo) -> str | None:
    if not is_link(value) or value[1] < 0:
        return (f"{json.dumps(value)[:80]} is a list but not a link [\"<node id>\", <output index>]; "
                'fix the link, or wrap a list value as {"__value__": [...]}')
    source_id, index = value
    source = graph.get(source_id)
    if not isinstance(source, dict):
        return f"it is linked to node {source_id}, which is not in the workflow; reconnect the input"
    outputs = info.output_types(node_class(source))
    if index >= len(outputs):
        have = ", ".join(f"{i}: {t}" for i, t in enumerate(outputs)) or "none"
        return (f"it is linked to output {index} of {node_ref(source_id, source)}, which has only "
                f"{len(outputs)} output(s) ({have}); reconnect the input")
    received = outputs[index]
    if not _types_match(received, spec):
        return (f"it expects {spec.type} but is connected to output {index} of {node_ref(source_id, source)}, "
                f"which gives {received}; connect a {spec.type} output instead")
    return None


def _types_match(received: Any, spec: InputSpec) -> bool:
    """ComfyUI's ``validate_node_input``: equal, or the comma-separated type sets overlap.

    More lenient than the server where it cannot know better: combos, ``*`` wildcards and the V3
    dynamic types (``COMFY_*_V3``) always match, since nodes validate those themselves.
    """
    expected = spec.type
    if spec.choices is not None or expected == "COMBO" or not isinstance(received, str):
        return True
    if received == expected or "*" in (received, expected) or _is_dynamic(received) or _is_dynamic(expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _is_dynamic(io_type: str) -> bool:
    return io_type.startswith("COMFY_") and io_type.endswith("_V3")


def _value_problem(value: Any, spec: InputSpec) -> str | None:
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]  # ComfyUI unwraps list values passed this way
    if spec.is_link and spec.type != "*" and not _is_dynamic(spec.type):
        return f"it takes a connection from a node that outputs {spec.type}, not a value; connect it"
    if spec.type in ("INT", "FLOAT"):
        number = _as_number(value, whole=spec.type == "INT")
        if number is None:
            kind = "a whole number" if spec.type == "INT" else "a number"
            return f"{json.dumps(value)[:60]} is not {kind}"
        if spec.min is not None and number < spec.min:
            return f"{_num(number)} is below the minimum of {_num(spec.min)}"
        if spec.max is not None and number > spec.max:
            return f"{_num(number)} is above the maximum of {_num(spec.max)}"
        return None
    if spec.type == "BOOLEAN" and not isinstance(value, (bool, int, float)):
        return f"{json.dumps(value)[:60]} is not true or false"  # bool("false") would be True on the server
    if spec.type == "STRING" and (value is None or isinstance(value, dict)):
        return f"{json.dumps(value)[:60]} is not text"
    if spec.choices is not None and not (spec.image_upload or spec.multiselect):
        return _combo_problem(value, spec)
    return None


def _as_number(value: Any, *, whole: bool) -> float | None:
    """ComfyUI converts with ``int()``/``float()``; booleans, fractions for INT and NaN are refused here."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if whole:
        if isinstance(value, float):
            return int(value) if value.is_integer() else None
        try:
            return int(value)  # exact, even for KSampler's 2**64 - 1 maximum seed
        except ValueError:
            return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _num(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _combo_problem(value: Any, spec: InputSpec) -> str | None:
    choices = spec.choices or ()

    def canon(item: Any) -> Any:
        return item.replace("\\", "/") if isinstance(item, str) else item  # as the server normalises paths

    try:
        if canon(value) in {canon(c) for c in choices}:
            return None
    except TypeError:  # an unhashable value is not a choice
        pass
    name = {"ckpt_name": "checkpoint", "sampler_name": "sampler", "scheduler": "scheduler"}.get(spec.name)
    if name == "checkpoint":
        if not choices:
            return (f"checkpoint {value!r} is not on the server, and the server has no checkpoints in "
                    "models/checkpoints")
        return f"checkpoint {value!r} is not on the server; available: {_few(choices)}"
    if not choices:
        return f"{value!r} is not available: the server offers no choices for {spec.name} (is its model folder empty?)"
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if name:
        return f"{name} {value!r} is not available on the server{hint}; choose one of: {_few(choices)}"
    return f"{value!r} is not one of the choices{hint}; choose one of: {_few(choices)}"


def _few(choices: Iterable[Any], limit: int = 8) -> str:
    items = [str(c) for c in choices]
    shown = ", ".join(items[:limit])
    return f"{shown} ... ({len(items)} in all)" if len(items) > limit else shown
