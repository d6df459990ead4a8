"""API-format workflows: load, parse, bind the studio's parameters, discover inputs, validate.

A workflow here is ComfyUI's *API format*, the dict POSTed as ``{"prompt": ...}``: node id ->
``{"class_type": ..., "inputs": {...}, "_meta": {"title": ...}}``, where an input is either a literal
or a link ``["<node id>", <output index>]``. The editor's own save format (with ``nodes`` and
``links`` lists) is refused with a hint to use *Export (API)*.

Nothing here mutates a graph it is given: :func:`bind` and :func:`apply_inputs` return new dicts, and
:func:`load_template` reads the file each time.

Binding the studio's parameters
-------------------------------
:func:`find_bindings` works on any user's workflow, with no hard-coded node ids.

1. **Titles win.** A node whose ``_meta.title`` (compared lower-case, with ``_``/``-`` as spaces and
   runs of spaces collapsed) is one of :data:`PARAM_TITLES` receives that parameter, on its natural
   input (``text`` for a text encoder, or both ``text_g`` and ``text_l`` for CLIPTextEncodeSDXL;
   ``ckpt_name``; ``image``; ``seed``/``noise_seed``; ``sampler_name``; ``value`` for primitive nodes
   such as PrimitiveInt or PrimitiveStringMultiline; else the node's only literal input). Accepted titles:

   ==================  =====================================================
   parameter           titles
   ==================  =====================================================
   ``prompt``          prompt, positive, positive prompt
   ``negative_prompt`` negative, negative prompt
   ``seed``            seed, noise seed
   ``steps``           steps
   ``cfg``             cfg, cfg scale
   ``sampler``         sampler, sampler name
   ``scheduler``       scheduler
   ``width``           width
   ``height``          height
   ``batch_size``      batch size, batch
   ``denoise``         denoise, denoising strength
   ``checkpoint``      checkpoint, ckpt, checkpoint name
   ``init_image``      init image, input image, initial image, source image
   ==================  =====================================================

   When any node is titled for a parameter, the graph rules below are not used for that parameter.
2. **Otherwise by class and links**, from the sampler nodes (KSampler, KSamplerAdvanced,
   SamplerCustom, SamplerCustomAdvanced, or any node with ``positive``, ``negative`` and
   ``latent_image`` inputs):

   * ``seed`` (``seed``/``noise_seed``), ``steps``, ``cfg``, ``sampler`` (``sampler_name``),
     ``scheduler``, ``denoise`` on the sampler itself, or one link away for the custom samplers
     (``noise`` -> RandomNoise, ``sigmas`` -> BasicScheduler, ``guider`` -> CFGGuider,
     ``sampler`` -> KSamplerSelect). They go to **every** sampler, but ``denoise`` only to the first
     sampler of each chain (one with no other sampler upstream), so a hires-fix pass keeps its own.
   * ``prompt`` / ``negative_prompt``: follow the sampler's ``positive`` / ``negative`` link back
     through conditioning nodes (the input of the same name, then ``conditioning``, then the first
     input whose name contains ``conditioning``) to a node with a ``text`` input. A negative that
     runs through ConditioningZeroOut, or ends on the prompt's own node, is left unbound.
   * ``width`` / ``height`` / ``batch_size`` and ``init_image``: from the first sampler(s), follow
     ``latent_image`` back through ``samples``/``latent``/``pixels``/``image`` inputs; the first node
     with ``width`` and ``height`` gets the size (EmptyLatentImage, EmptySD3LatentImage, or an
     ImageScale in front of an init image), and a LoadImage on the way gets ``init_image``. If none
     is on that path but the graph has exactly one LoadImage (say, a ControlNet image), it gets
     ``init_image``.
   * ``checkpoint``: follow the sampler's ``model`` link back through LoRA loaders and model
     patches (their ``model`` input) to a node with a ``ckpt_name`` input.

   A widget input that is itself linked (``seed`` fed by a PrimitiveInt, ``text`` by a
   PrimitiveStringMultiline) is followed to the literal it comes from. A place claimed by a title
   is never also given to another parameter by the graph rules, and when two graph rules claim the
   same place the parameter listed first in :data:`PARAM_NAMES` keeps it.

:func:`bind` writes every parameter that has a place. ``checkpoint=None`` and ``init_image=None``
leave the graph's own values. A parameter the caller *set* (it differs from its
:class:`~comfy.graph.params.GenerationParams` default; the prompt always counts) that has no place raises
:class:`~comfy.errors.WorkflowError`, unless ``strict=False``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.object_info import InputSpec, ObjectInfo
from comfy.graph.params import RANDOM_SEED, GenerationParams

__all__ = [
    "TEMPLATES_DIR",
    "PARAM_NAMES",
    "PARAM_TITLES",
    "Binding",
    "EditableInput",
    "list_templates",
    "load_template",
    "parse_workflow",
    "workflow_from_png",
    "find_bindings",
    "bind",
    "bind_values",
    "bound_values",
    "discover_inputs",
    "apply_inputs",
    "validate",
    "find_problems",
    "default_checkpoint",
    "summarize",
]

#: The folder of the shipped API-format templates (``txt2img.json``, ``img2img.json``).
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "workflows"

#: The studio parameters that can be bound, in priority order (an earlier one wins a contested place).
PARAM_NAMES: tuple[str, ...] = (
    "prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "scheduler", "denoise",
    "width", "height", "batch_size", "checkpoint", "init_image",
)

#: Normalised node titles that name a parameter (see the module docstring).
PARAM_TITLES: dict[str, str] = {
    "prompt": "prompt", "positive": "prompt", "positive prompt": "prompt",
    "negative": "negative_prompt", "negative prompt": "negative_prompt",
    "seed": "seed", "noise seed": "seed",
    "steps": "steps",
    "cfg": "cfg", "cfg scale": "cfg",
    "sampler": "sampler", "sampler name": "sampler",
    "scheduler": "scheduler",
    "width": "width", "height": "height",
    "batch size": "batch_size", "batch": "batch_size",
    "denoise": "denoise", "denoising strength": "denoise",
    "checkpoint": "checkpoint", "ckpt": "checkpoint", "checkpoint name": "checkpoint",
    "init image": "init_image", "input image": "init_image", "initial image": "init_image",
    "source image": "init_image",
}

_LABELS: dict[str, str] = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "seed": "Seed", "steps": "Steps", "cfg": "CFG",
    "sampler": "Sampler", "scheduler": "Scheduler", "denoise": "Denoise", "width": "Width", "height": "Height",
    "batch_size": "Batch size", "checkpoint": "Checkpoint", "init_image": "Input image",
}

#: The natural input(s) of a titled node, per parameter, in preference order.
_TITLE_INPUTS: dict[str, tuple[str, ...]] = {
    "prompt": ("value", "string", "prompt"), "negative_prompt": ("value", "string", "prompt"),
    "seed": ("seed", "noise_seed", "value"), "steps": ("steps", "value"), "cfg": ("cfg", "value"),
    "sampler": ("sampler_name", "value"), "scheduler": ("scheduler", "value"), "denoise": ("denoise", "value"),
    "width": ("width", "value"), "height": ("height", "value"), "batch_size": ("batch_size", "value"),
    "checkpoint": ("ckpt_name", "value"), "init_image": ("image", "value"),
}

#: Sampler parameter -> (input names on the sampler, links to follow one step for custom samplers).
_SAMPLER_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "seed": (("seed", "noise_seed"), ("noise",)),
    "steps": (("steps",), ("sigmas",)),
    "cfg": (("cfg",), ("guider",)),
    "sampler": (("sampler_name",), ("sampler",)),
    "scheduler": (("scheduler",), ("sigmas",)),
    "denoise": (("denoise",), ("sigmas",)),
}
_SAMPLER_INPUT_PARAM = {"seed": "seed", "noise_seed": "seed", "steps": "steps", "cfg": "cfg",
                        "sampler_name": "sampler", "scheduler": "scheduler", "denoise": "denoise"}
_SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
_LATENT_PATH = ("samples", "latent", "latent_image", "pixels", "image", "images")
_TEXT_INPUTS = (("text",), ("text_g", "text_l"))
_MAX_DEPTH = 32
_MAX_PNG_TEXT = 64 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UI_FORMAT_HINT = (
    "This is a ComfyUI editor workflow (it has 'nodes' and 'links'), not the API format the server runs. "
    "In ComfyUI, open it and use Workflow > Export (API) (on older versions, enable the dev mode options "
    "in the settings first), then load the exported file."
)

Graph = dict[str, Any]
_Target = tuple[str, str]


# --------------------------------------------------------------------------------------------------
# Loading and parsing


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
            f"not {_json_kind(raw)}."
        )
    raw = _unwrap_envelope(raw)
    if _looks_like_ui_format(raw):
        raise WorkflowError(_UI_FORMAT_HINT)
    if not raw:
        raise WorkflowError("The workflow has no nodes; export a workflow with Export (API) in ComfyUI.")
    graph = {str(node_id): _parse_node(str(node_id), node) for node_id, node in raw.items()}
    for problem in _missing_link_problems(graph):
        raise problem
    return graph


def workflow_from_png(png: bytes) -> Graph:
    """The API workflow stored in a ComfyUI output PNG (its ``prompt`` text chunk), parsed.

    Reads ``tEXt``, ``zTXt`` and ``iTXt`` chunks with the standard library. Raises
    :class:`WorkflowError` if the bytes are not a PNG or carry no ``prompt`` chunk.
    """
    texts = _png_text_chunks(bytes(png))
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


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")


def _unwrap_envelope(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept a ``/prompt`` request body: ``{"prompt": {...}, "client_id": ...}``."""
    inner = raw.get("prompt")
    if isinstance(inner, Mapping) and "class_type" not in inner:
        return inner
    return raw


def _looks_like_ui_format(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("nodes"), list) or ("links" in raw and "last_node_id" in raw)


def _parse_node(node_id: str, node: Any) -> dict[str, Any]:
    if not isinstance(node, Mapping):
        raise WorkflowError(
            f"Node {node_id} is {_json_kind(node)}, not a node object "
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
        raise WorkflowError(f"{_label(node_id, node)}: 'inputs' must be an object of input name -> value.",
                            field=_field(node_id, node))
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
            f"{_label(node_id, node)}, input '{name}': {json.dumps(value)[:80]} is a list but not a link "
            '["<node id>", <output index>]; fix the link, or wrap a list value as {"__value__": [...]}.',
            field=_field(node_id, node, name),
        )
    return [str(value[0]), value[1]]


def _missing_link_problems(graph: Graph) -> Iterator[WorkflowError]:
    for node_id in sorted(graph, key=_sort_key):
        node = graph[node_id]
        for name, value in _inputs(node).items():
            if _is_link(value) and not isinstance(graph.get(value[0]), dict):
                yield WorkflowError(
                    f"{_label(node_id, node)}, input '{name}': it is linked to node {value[0]}, which is not in "
                    "the workflow; reconnect the input in ComfyUI and export again.",
                    field=_field(node_id, node, name),
                )


def _png_text_chunks(png: bytes) -> dict[str, str]:
    if not png.startswith(_PNG_SIGNATURE):
        raise WorkflowError("This file is not a PNG image; only PNGs saved by ComfyUI carry a workflow.")
    texts: dict[str, str] = {}
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        if len(data) < length:
            break  # truncated: keep what was read so far
        pos += 12 + length  # length, type, data, CRC
        if kind == b"IEND":
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _png_text(kind, data)
            if keyword and text is not None:
                texts.setdefault(keyword, text)
    return texts


def _png_text(kind: bytes, data: bytes) -> tuple[str, str | None]:
    keyword, _, rest = data.partition(b"\0")
    try:
        if kind == b"tEXt":
            return keyword.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return keyword.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
        compressed, rest = rest[:1] == b"\1", rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return keyword.decode("latin-1"), (_inflate(text) if compressed else text).decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return keyword.decode("latin-1"), None


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_PNG_TEXT)  # bounded: a PNG chunk must not become a zip bomb
    if inflater.unconsumed_tail:
        raise zlib.error("text chunk too large")
    return out


# --------------------------------------------------------------------------------------------------
# Small graph helpers


def _is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _inputs(node: Any) -> dict[str, Any]:
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def _class(node: Any) -> str:
    value = node.get("class_type") if isinstance(node, dict) else None
    return value if isinstance(value, str) else "?"


def _title(node: Any) -> str | None:
    meta = node.get("_meta") if isinstance(node, dict) else None
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) and title.strip() else None


def _label(node_id: str, node: Any) -> str:
    """``Node 3 (KSampler)`` or ``Node 6 "Positive prompt" (CLIPTextEncode)``: how messages name a node."""
    title, cls = _title(node), _class(node)
    return f'Node {node_id} "{title}" ({cls})' if title and title != cls else f"Node {node_id} ({cls})"


def _ref(node_id: str, node: Any) -> str:
    """The node's label in the middle of a sentence."""
    return "n" + _label(node_id, node)[1:]


def _field(node_id: str, node: Any, input_name: str | None = None) -> str:
    base = f"node {node_id} ({_class(node)})"
    return f"{base}.{input_name}" if input_name else base


def _sort_key(node_id: str) -> tuple[tuple[int, int, str], ...]:
    """Numeric-aware order of node ids ("3" < "10"; subgraph ids like "10:2" too)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(node_id).split(":"))


def _norm_title(title: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", title.lower()).split())


def _is_image_loader(node: Any) -> bool:
    cls = _class(node)
    return cls == "LoadImage" or (cls.startswith("LoadImage") and isinstance(_inputs(node).get("image"), str))


def _is_sampler(node: Any) -> bool:
    inputs = _inputs(node)
    return (_class(node) in _SAMPLER_CLASSES or {"positive", "negative", "latent_image"} <= inputs.keys()
            or {"guider", "latent_image"} <= inputs.keys())


def _upstream(graph: Graph, node_id: str) -> set[str]:
    """Every node some input of ``node_id`` depends on, directly or not."""
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for value in _inputs(graph.get(stack.pop())).values():
            if _is_link(value) and value[0] in graph and value[0] not in seen:
                seen.add(value[0])
                stack.append(value[0])
    return seen


# --------------------------------------------------------------------------------------------------
# Bindings


@dataclass(frozen=True)
class Binding:
    """Where one studio parameter goes: ``Binding("steps", "3", "steps")``."""

    param: str
    node_id: str
    input_name: str


def find_bindings(graph: Mapping[str, Any]) -> dict[str, list[Binding]]:
    """Parameter name -> the inputs it is written to; parameters with no place are left out.

    >>> g = load_template("txt2img")
    >>> [(b.node_id, b.input_name) for b in find_bindings(g)["prompt"]]
    [('6', 'text')]
    """
    graph = dict(graph)
    titled = _title_targets(graph)
    claimed = {target for targets in titled.values() for target in targets}
    by_graph = _graph_targets(graph)
    result: dict[str, list[Binding]] = {}
    for param in PARAM_NAMES:
        if param in titled:
            targets = titled[param]
        else:
            targets = [t for t in by_graph.get(param, []) if t not in claimed]
            claimed.update(targets)
        if targets:
            result[param] = [Binding(param, node_id, name) for node_id, name in _unique(targets)]
    return result


def bind(graph: Mapping[str, Any], params: GenerationParams, *, strict: bool = True) -> Graph:
    """A new graph with the studio parameters written into their places (see the module docstring).

    ``checkpoint=None`` and ``init_image=None`` keep the graph's values. Raises :class:`WorkflowError`
    (field = the parameter) if ``params.seed`` is still -1 (call ``params.resolve_seed()`` first),
    or, when ``strict``, if a parameter the caller set has no place in this workflow.
    """
    places = find_bindings(graph)
    values = {
        param: value for param in PARAM_NAMES
        if (value := getattr(params, param)) is not None and (param in places or (strict and _was_set(param, value)))
    }
    return bind_values(graph, values)


def bind_values(graph: Mapping[str, Any], values: Mapping[str, Any]) -> Graph:
    """A new graph with only the given parameters written (a workflow keeps its own values for the rest).

    Raises :class:`WorkflowError` (field = the parameter) for an unknown parameter, a seed of -1, or a
    parameter this workflow has no place for.

    >>> g = bind_values(load_template("txt2img"), {"steps": 30})
    >>> g["3"]["inputs"]["steps"]
    30
    """
    unknown = sorted(set(values) - set(PARAM_NAMES))
    if unknown:
        raise WorkflowError(f"Unknown parameter(s): {', '.join(unknown)}.", field=unknown[0])
    if values.get("seed") == RANDOM_SEED:
        raise WorkflowError("The seed is still -1 (random); resolve it before binding so the seed used is known.",
                            field="seed")
    bindings = find_bindings(graph)
    out = copy.deepcopy(dict(graph))
    for param in PARAM_NAMES:
        if param not in values:
            continue
        value = values[param]
        places = bindings.get(param, [])
        if not places:
            raise WorkflowError(_no_place_message(param, value), field=param)
        for place in places:
            node = out[place.node_id]
            node["inputs"][place.input_name] = value
            if param == "init_image":
                node.pop("is_changed", None)
    return out


def bound_values(graph: Mapping[str, Any]) -> dict[str, Any]:
    """The graph's current value for each bound parameter (from its first place), e.g. template defaults."""
    values: dict[str, Any] = {}
    for param, places in find_bindings(graph).items():
        values[param] = copy.deepcopy(graph[places[0].node_id]["inputs"][places[0].input_name])
    return values


def _unique(targets: Iterable[_Target]) -> list[_Target]:
    return list(dict.fromkeys(targets))


def _was_set(param: str, value: Any) -> bool:
    default = {f.name: f.default for f in dataclasses.fields(GenerationParams)}[param]
    if default is dataclasses.MISSING:
        return value != ""
    return value != default


def _no_place_message(param: str, value: Any) -> str:
    title = _LABELS[param]
    if param == "init_image":
        return ("This workflow takes no input image (it has no Load Image node); pick an img2img workflow, "
                "or add a Load Image node titled 'Init image'.")
    if param in ("prompt", "negative_prompt"):
        return (f"This workflow has no place for the {title.lower()}: no text encoder feeds a sampler's "
                f"{'positive' if param == 'prompt' else 'negative'} input and no node is titled '{title}'. "
                f"Title the node that should receive it '{title}' in ComfyUI and export again.")
    return (f"This workflow has no place for {param} ({value!r}); leave it at its default, or title the node "
            f"that should receive it '{title}' in ComfyUI and export again.")


def _resolve_literal(graph: Graph, node_id: str, name: str, depth: int = 0) -> _Target | None:
    """The place holding the literal behind an input, following a link to a primitive-like node."""
    inputs = _inputs(graph.get(node_id))
    if name not in inputs or depth > _MAX_DEPTH:
        return None
    value = inputs[name]
    if not _is_link(value):
        return None if isinstance(value, (list, dict)) or value is None else (node_id, name)
    source = _inputs(graph.get(value[0]))
    for candidate in (name, "value"):
        if candidate in source:
            return _resolve_literal(graph, value[0], candidate, depth + 1)
    if len(source) == 1 and not _is_link(next(iter(source.values()))):
        return _resolve_literal(graph, value[0], next(iter(source)), depth + 1)
    return None


def _natural_inputs(param: str, inputs: Mapping[str, Any]) -> list[str]:
    if param in ("prompt", "negative_prompt"):
        for group in _TEXT_INPUTS:
            if any(name in inputs for name in group):
                return [name for name in group if name in inputs]
    for name in _TITLE_INPUTS[param]:
        if name in inputs:
            return [name]
    literal = [name for name, value in inputs.items() if not _is_link(value)]
    return literal if len(literal) == 1 else []


def _title_targets(graph: Graph) -> dict[str, list[_Target]]:
    found: dict[str, list[_Target]] = {}
    for node_id in sorted(graph, key=_sort_key):
        title = _title(graph[node_id])
        param = PARAM_TITLES.get(_norm_title(title)) if title else None
        if param is None:
            continue
        for name in _natural_inputs(param, _inputs(graph[node_id])):
            target = _resolve_literal(graph, node_id, name)
            if target is not None:
                found.setdefault(param, []).append(target)
    return found


def _graph_targets(graph: Graph) -> dict[str, list[_Target]]:
    samplers = [n for n in sorted(graph, key=_sort_key) if _is_sampler(graph[n])]
    firsts = [s for s in samplers if not (_upstream(graph, s) & set(samplers))]
    found: dict[str, list[_Target]] = {}

    def add(param: str, targets: Iterable[_Target | None]) -> None:
        found.setdefault(param, []).extend(t for t in targets if t is not None)

    for sampler in samplers:
        for param, (names, via) in _SAMPLER_PARAMS.items():
            if param != "denoise" or sampler in firsts:
                add(param, [_sampler_input(graph, sampler, names, via)])
        positive = _follow_conditioning(graph, _conditioning_link(graph, sampler, "positive"), "positive")
        negative = _follow_conditioning(graph, _conditioning_link(graph, sampler, "negative"), "negative")
        add("prompt", positive)
        add("negative_prompt", [t for t in negative if t not in positive])
        add("checkpoint", [_follow_model(graph, sampler)])
    for sampler in firsts:
        for param, target in _follow_latent(graph, sampler).items():
            add(param, [target])
    if not found.get("init_image"):
        loaders = [n for n in sorted(graph, key=_sort_key) if _class(graph[n]) == "LoadImage"]
        if len(loaders) == 1:
            add("init_image", [_resolve_literal(graph, loaders[0], "image")])
    return found


def _sampler_input(graph: Graph, sampler: str, names: tuple[str, ...], via: tuple[str, ...]) -> _Target | None:
    inputs = _inputs(graph[sampler])
    for name in names:
        if name in inputs:
            return _resolve_literal(graph, sampler, name)
    for link_name in via:
        link = inputs.get(link_name)
        if _is_link(link):
            source = _inputs(graph.get(link[0]))
            for name in names:
                if name in source:
                    return _resolve_literal(graph, link[0], name)
    return None


def _conditioning_link(graph: Graph, sampler: str, role: str) -> Any:
    inputs = _inputs(graph[sampler])
    if role in inputs:
        return inputs[role]
    guider = inputs.get("guider")
    if _is_link(guider):
        guider_inputs = _inputs(graph.get(guider[0]))
        if role in guider_inputs:
            return guider_inputs[role]
        if role == "positive":
            return guider_inputs.get("conditioning")  # BasicGuider (Flux) has one conditioning input
    return None


def _follow_conditioning(graph: Graph, link: Any, role: str) -> list[_Target]:
    seen: set[str] = set()
    while _is_link(link) and isinstance(graph.get(link[0]), dict) and link[0] not in seen:
        node_id = link[0]
        seen.add(node_id)
        node = graph[node_id]
        if _class(node) == "ConditioningZeroOut":
            return []  # an "empty" negative made from the positive: there is no text to set
        inputs = _inputs(node)
        for group in _TEXT_INPUTS:
            if any(name in inputs for name in group):
                targets = (_resolve_literal(graph, node_id, name) for name in group if name in inputs)
                return [t for t in targets if t is not None]
        link = next((inputs[n] for n in (role, "conditioning") if _is_link(inputs.get(n))), None)
        if link is None:
            link = next((v for n, v in inputs.items() if "conditioning" in n and _is_link(v)), None)
    return []


def _follow_model(graph: Graph, sampler: str) -> _Target | None:
    inputs = _inputs(graph[sampler])
    link = inputs.get("model")
    if link is None and _is_link(inputs.get("guider")):
        link = _inputs(graph.get(inputs["guider"][0])).get("model")
    seen: set[str] = set()
    while _is_link(link) and isinstance(graph.get(link[0]), dict) and link[0] not in seen:
        seen.add(link[0])
        source = _inputs(graph[link[0]])
        if "ckpt_name" in source:
            return _resolve_literal(graph, link[0], "ckpt_name")
        link = next((source[n] for n in ("model", "model1") if _is_link(source.get(n))), None)
    return None


def _follow_latent(graph: Graph, sampler: str) -> dict[str, _Target]:
    found: dict[str, _Target] = {}
    link = _inputs(graph[sampler]).get("latent_image")
    seen: set[str] = set()
    while _is_link(link) and isinstance(graph.get(link[0]), dict) and link[0] not in seen:
        node_id = link[0]
        seen.add(node_id)
        node = graph[node_id]
        inputs = _inputs(node)
        if _is_image_loader(node):
            target = _resolve_literal(graph, node_id, "image")
            if target is not None:
                found["init_image"] = target
            break
        if "width" in inputs and "height" in inputs and "width" not in found:
            for param in ("width", "height", "batch_size"):
                target = _resolve_literal(graph, node_id, param)
                if target is not None:
                    found[param] = target
        link = next((inputs[n] for n in _LATENT_PATH if _is_link(inputs.get(n))), None)
    return found


# --------------------------------------------------------------------------------------------------
# Discovering and setting any input


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
    samplers = {n for n in graph if _is_sampler(graph[n])}
    ranked: list[tuple[tuple[Any, ...], EditableInput]] = []
    for node_id in sorted(graph, key=_sort_key):
        node = graph[node_id]
        specs = _specs(object_info, _class(node))
        names = [n for n in specs if n in _inputs(node)] + [n for n in _inputs(node) if n not in specs]
        for position, name in enumerate(names):
            value = _inputs(node)[name]
            if isinstance(value, (list, dict)) or value is None:
                continue  # links, and {"__value__": ...} wrappers, are not form fields
            param = bound.get((node_id, name))
            item = _editable(node_id, node, name, value, specs.get(name), param, object_info)
            if param in ("prompt", "negative_prompt"):
                rank: tuple[Any, ...] = (0, PARAM_NAMES.index(param), _sort_key(node_id), position)
            elif param in _SAMPLER_PARAMS or node_id in samplers:
                order = PARAM_NAMES.index(param) if param in _SAMPLER_PARAMS else len(PARAM_NAMES)
                rank = (1, order, _sort_key(node_id), position)
            else:
                rank = (2, 0, _sort_key(node_id), position)
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
        inputs = _inputs(node)
        if name not in inputs:
            raise WorkflowError(
                f"{_label(node_id, node)} has no input {name!r}; its inputs are: {', '.join(inputs) or 'none'}.",
                field=_field(node_id, node, name),
            )
        if _is_link(inputs[name]):
            raise WorkflowError(
                f"{_label(node_id, node)}, input '{name}': it is connected to node {inputs[name][0]} and takes "
                "its value from there; set that node's value instead.",
                field=_field(node_id, node, name),
            )
        if isinstance(value, list):
            raise WorkflowError(
                f"{_label(node_id, node)}, input '{name}': a list would be read as a link; "
                'wrap a list value as {"__value__": [...]}.',
                field=_field(node_id, node, name),
            )
        inputs[name] = copy.deepcopy(value)
        if name == "image" and _is_image_loader(node):
            node.pop("is_changed", None)
    return out


def _specs(object_info: ObjectInfo | None, class_type: str) -> dict[str, InputSpec]:
    if object_info is None or not object_info.has(class_type):
        return {}
    return {spec.name: spec for spec in object_info.input_specs(class_type)}


def _editable(node_id: str, node: dict[str, Any], name: str, value: Any, spec: InputSpec | None,
              param: str | None, object_info: ObjectInfo | None) -> EditableInput:
    cls = _class(node)
    title = _title(node) or (object_info.display_name(cls) if object_info is not None else cls)
    label = _LABELS[param] if param else name.replace("_", " ").capitalize()
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
    if name == "image" and _is_image_loader(node):
        return "image"
    if name in ("ckpt_name", "sampler_name", "scheduler", "lora_name", "vae_name"):
        return "combo"
    return "text"


# --------------------------------------------------------------------------------------------------
# Validation against the server's /object_info


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
                              f"format), not {_json_kind(graph)}.")]
    if not graph:
        return [WorkflowError("The workflow has no nodes, so it would produce nothing.")]
    try:
        graph = {str(node_id): _parse_node(str(node_id), node) for node_id, node in graph.items()}
    except WorkflowError as exc:
        return [exc]
    order = sorted(graph, key=_sort_key)
    unknown = [_unknown_class(n, graph[n]) for n in order if not object_info.has(_class(graph[n]))]
    if unknown:
        return unknown
    outputs = [n for n in order if object_info.is_output_node(_class(graph[n]))]
    if not outputs:
        return [WorkflowError(
            "The workflow has no output node such as SaveImage, so it would produce nothing; "
            "add a Save Image node.")]
    needed = set(outputs).union(*(_upstream(graph, n) for n in outputs))
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
    order = sorted(graph, key=_sort_key)

    def is_output(cls: str) -> bool:
        if object_info is not None and object_info.has(cls):
            return object_info.is_output_node(cls)
        return cls.startswith(("Save", "Preview"))

    return {
        "nodes": len(graph),
        "class_types": dict(Counter(_class(graph[n]) for n in order)),
        "output_nodes": [n for n in order if is_output(_class(graph[n]))],
        "samplers": [n for n in order if _is_sampler(graph[n])],
        "params": list(find_bindings(graph)),
    }


def _unknown_class(node_id: str, node: Any) -> WorkflowError:
    cls = _class(node)
    return WorkflowError(
        f"{_label(node_id, node)}: node type {cls!r} is not installed on the ComfyUI server; "
        "install the custom node or pick another workflow.",
        field=_field(node_id, node),
    )


def _node_problems(
    graph: Graph, node_id: str, info: ObjectInfo, bound: Mapping[_Target, str], *, pending_uploads: bool
) -> Iterator[WorkflowError]:
    node = graph[node_id]
    inputs = _inputs(node)
    for spec in info.input_specs(_class(node)):
        field = bound.get((node_id, spec.name))
        if field is None and _is_sampler(node):
            field = _SAMPLER_INPUT_PARAM.get(spec.name)
        field = field or _field(node_id, node, spec.name)
        where = f"{_label(node_id, node)}, input '{spec.name}'"
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
    if not _is_link(value) or value[1] < 0:
        return (f"{json.dumps(value)[:80]} is a list but not a link [\"<node id>\", <output index>]; "
                'fix the link, or wrap a list value as {"__value__": [...]}')
    source_id, index = value
    source = graph.get(source_id)
    if not isinstance(source, dict):
        return f"it is linked to node {source_id}, which is not in the workflow; reconnect the input"
    outputs = info.output_types(_class(source))
    if index >= len(outputs):
        have = ", ".join(f"{i}: {t}" for i, t in enumerate(outputs)) or "none"
        return (f"it is linked to output {index} of {_ref(source_id, source)}, which has only "
                f"{len(outputs)} output(s) ({have}); reconnect the input")
    received = outputs[index]
    if not _types_match(received, spec):
        return (f"it expects {spec.type} but is connected to output {index} of {_ref(source_id, source)}, "
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
