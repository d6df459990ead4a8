"""API-format workflows: load the shipped templates, parse and check a workflow, read one from a PNG.

A workflow here is ComfyUI's *API format*, the dict POSTed as ``{"prompt": ...}``: node id ->
``{"class_type": ..., "inputs": {...}, "_meta": {"title": ...}}``, where an input is either a literal
or a link ``["<node id>", <output index>]``. The editor's own save format (with ``nodes`` and
``links`` lists) is refused with a hint to use *Export (API)*.

Nothing here mutates a graph it is given: :func:`bind` and :func:`apply_inputs` return new dicts, and
:func:`load_template` reads the file each time.

See :mod:`comfy.graph.binding` for binding the studio's parameters, :mod:`comfy.graph.inputs` for
every editable input, :mod:`comfy.graph.validation` for checking a graph against a server's ``/object_info``.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph import pngmeta
from comfy.graph.nodes import Graph, is_link, json_kind, node_field, node_inputs, node_label, node_order

#: The folder of the shipped API-format templates (``txt2img.json``, ``img2img.json``).
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "workflows"

_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UI_FORMAT_HINT = (
    "This is a ComfyUI editor workflow (it has 'nodes' and 'links'), not the API format the server runs. "
    "In ComfyUI, open it and use Workflow > Export (API) (on older versions, enable the dev mode options "
    "in the settings first), then load the exported file."
)

__all__ = ["TEMPLATES_DIR", "list_templates", "load_template", "parse_workflow", "workflow_from_png"]


def list_templates(directory: Path | None = None) -> list[str]:
    """The names of the shipped templates (``["img2img", "txt2img"]``)."""
    folder = directory or TEMPLATES_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def load_template(name: str, *, directory: Path | None = None) -> Graph:
    """Read and parse ``workflows/<name>.json``; a new dict on every call.

    Raises :class:`WorkflowError` (field ``workflow``) if there is no such template or it is invalid.
    """
    folder = directory or TEMPLATES_DIR
    if not isinstance(name, str) or not _TEMPLATE_NAME.match(name):
        raise WorkflowError(f"{name!r} is not a template name; use one of: {', '.join(list_templates(folder))}.",
                            field="workflow")
    path = folder / f"{name}.json"
    try:
        text = path.read_bytes()
    except FileNotFoundError as exc:
        raise WorkflowError(
            f"There is no workflow template {name!r}; available: {', '.join(list_templates(folder)) or 'none'}.",
            field="workflow",
        ) from exc
    except OSError as exc:
        raise WorkflowError(f"The workflow template {path} cannot be read: {exc}.", field="workflow") from exc
    try:
        return parse_workflow(text)
    except WorkflowError as exc:
        raise WorkflowError(f"The workflow template {path.name} is invalid: {exc}", field="workflow") from exc


def parse_workflow(data: str | bytes | Mapping[str, Any]) -> Graph:
    """Check an API-format workflow and return a clean copy of it.

    Accepts JSON text or bytes, a dict, or a ``/prompt`` body (``{"prompt": {...}, ...}``). The copy has
    string node ids, link node ids as strings, a missing ``inputs`` as ``{}``, and no ``is_changed``
    key (ComfyUI adds that one to PNG metadata; sent back, it could make the server reuse a cached
    LoadImage after the image changed). Raises :class:`WorkflowError` naming the node and what to fix.

    >>> parse_workflow('{"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}')
    {'1': {'class_type': 'EmptyImage', 'inputs': {'width': 64}}}
    >>> parse_workflow('{"1": {"class_type": "X",}}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    comfy.errors.WorkflowError: The workflow is not valid JSON: Expecting property name ... at line 1, column 26.
    """
    raw = _decode_json(data) if isinstance(data, (str, bytes, bytearray)) else data
    if not isinstance(raw, Mapping):
        raise WorkflowError(
            "A workflow must be a JSON object that maps node ids to nodes (ComfyUI's API format), "
            f"not {json_kind(raw)}."
        )
    raw = _unwrap_envelope(raw)
    if _looks_like_ui_format(raw):
        raise WorkflowError(_UI_FORMAT_HINT)
    if not raw:
        raise WorkflowError("The workflow has no nodes; export a workflow with Export (API) in ComfyUI.")
    graph = {str(node_id): parse_node(str(node_id), node) for node_id, node in raw.items()}
    for problem in _missing_link_problems(graph):
        raise problem
    return graph


def workflow_from_png(png: bytes) -> Graph:
    """The API workflow stored in a ComfyUI output PNG (its ``prompt`` text chunk), parsed.

    Reads ``tEXt``, ``zTXt`` and ``iTXt`` chunks with the standard library. Raises
    :class:`WorkflowError` if the bytes are not a PNG or carry no ``prompt`` chunk.
    """
    if not pngmeta.is_png(png):
        raise WorkflowError("This file is not a PNG image; only PNGs saved by ComfyUI carry a workflow.")
    too_large: list[str] = []
    texts = pngmeta.read_text_chunks(bytes(png), too_large=too_large)
    if "prompt" in too_large:
        raise WorkflowError(f"The workflow in this PNG is larger than {pngmeta.MAX_TEXT_BYTES // 2**20} MB of text once "
                            "unpacked; the studio does not read workflows that large.")
    if "prompt" not in texts:
        if "workflow" in texts:
            raise WorkflowError("This PNG holds only the editor workflow, not the API prompt. " + _UI_FORMAT_HINT)
        raise WorkflowError(
            "This PNG has no ComfyUI workflow in it: it was not saved by ComfyUI's Save Image node, "
            "or its metadata was stripped."
        )
    try:
        return parse_workflow(texts["prompt"])
    except WorkflowError as exc:
        raise WorkflowError(f"The workflow in this PNG is invalid: {exc}") from exc


def _decode_json(data: str | bytes | bytearray) -> Any:
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise WorkflowError(
                f"The workflow is not UTF-8 text (bad byte at offset {exc.start}); export it again from ComfyUI."
            ) from exc
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise WorkflowError(
            f"The workflow is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from exc


def _unwrap_envelope(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept a ``/prompt`` request body: ``{"prompt": {...}, "client_id": ...}``."""
    inner = raw.get("prompt")
    if isinstance(inner, Mapping) and "class_type" not in inner:
        return inner
    return raw


def _looks_like_ui_format(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("nodes"), list) or ("links" in raw and "last_node_id" in raw)


def parse_node(node_id: str, node: Any) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        raise WorkflowError(
            f"Node {node_id} is {json_kind(node)}, not a node object "
            '({"class_type": ..., "inputs": {...}}); export the workflow again with Export (API).',
            field=f"node {node_id}",
        )
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or not class_type.strip():
        raise WorkflowError(
            f"Node {node_id} has no class_type (the node type, such as 'KSampler'); every node needs one. "
            "Export the workflow again with Export (API).",
            field=f"node {node_id}",
        )
    inputs = node.get("inputs", {})
    if not isinstance(inputs, Mapping):
        raise WorkflowError(f"{node_label(node_id, node)}: 'inputs' must be an object of input name -> value.",
                            field=node_field(node_id, node))
    clean = {k: copy.deepcopy(v) for k, v in node.items() if k not in ("inputs", "is_changed")}
    clean["inputs"] = {str(name): _parse_input(node_id, node, str(name), value) for name, value in inputs.items()}
    return clean


def _parse_input(node_id: str, node: Mapping[str, Any], name: str, value: Any) -> Any:
    if not isinstance(value, list):
        return copy.deepcopy(value)
    ok = (len(value) == 2 and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
          and isinstance(value[1], int) and not isinstance(value[1], bool) and value[1] >= 0)
    if not ok:
        raise WorkflowError(
            f"{node_label(node_id, node)}, input '{name}': {json.dumps(value)[:80]} is a list but not a link "
            '["<node id>", <output index>]; fix the link, or wrap a list value as {"__value__": [...]}.',
            field=node_field(node_id, node, name),
        )
    return [str(value[0]), value[1]]


def _missing_link_problems(graph: Graph) -> Iterator[WorkflowError]:
    for node_id in sorted(graph, key=node_order):
        node = graph[node_id]
        for name, value in node_inputs(node).items():
            if is_link(value) and not isinstance(graph.get(value[0]), dict):
                yield WorkflowError(
                    f"{node_label(node_id, node)}, input '{name}': it is linked to node {value[0]}, which is not in "
                    "the workflow; reconnect the input in ComfyUI and export again.",
                    field=node_field(node_id, node, name),
                )
