"""Binding the studio's parameters (prompt, seed, size...) into any API-format workflow.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.nodes import (
    Graph,
    Target,
    is_image_loader,
    is_link,
    is_sampler,
    node_class,
    node_inputs,
    node_order,
    node_title,
    norm_title,
    upstream_of,
)
from comfy.graph.params import RANDOM_SEED, GenerationParams

__all__ = ["PARAM_NAMES", "PARAM_TITLES", "Binding", "find_bindings", "bind", "bind_values", "bound_values"]

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

PARAM_LABELS: dict[str, str] = {
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
SAMPLER_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "seed": (("seed", "noise_seed"), ("noise",)),
    "steps": (("steps",), ("sigmas",)),
    "cfg": (("cfg",), ("guider",)),
    "sampler": (("sampler_name",), ("sampler",)),
    "scheduler": (("scheduler",), ("sigmas",)),
    "denoise": (("denoise",), ("sigmas",)),
}
SAMPLER_INPUT_PARAM = {"seed": "seed", "noise_seed": "seed", "steps": "steps", "cfg": "cfg",
                        "sampler_name": "sampler", "scheduler": "scheduler", "denoise": "denoise"}
_LATENT_PATH = ("samples", "latent", "latent_image", "pixels", "image", "images")
_TEXT_INPUTS = (("text",), ("text_g", "text_l"))
_MAX_DEPTH = 32


@dataclass(frozen=True)
class Binding:
    """Where one studio parameter goes: ``Binding("steps", "3", "steps")``."""

    param: str
    node_id: str
    input_name: str


def find_bindings(graph: Mapping[str, Any]) -> dict[str, list[Binding]]:
    """Parameter name -> the inputs it is written to; parameters with no place are left out.

    >>> from comfy.graph.workflow import load_template
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
    # With an init image, width and height record the image's size; a graph that takes its size from
    # the image (the img2img template) has no place for them, and needs none.
    from_image = {"width", "height"} if params.init_image is not None else set()
    values = {
        param: value for param in PARAM_NAMES
        if (value := getattr(params, param)) is not None
        and (param in places or (strict and param not in from_image and _was_set(param, value)))
    }
    return bind_values(graph, values)


def bind_values(graph: Mapping[str, Any], values: Mapping[str, Any]) -> Graph:
    """A new graph with only the given parameters written (a workflow keeps its own values for the rest).

    Raises :class:`WorkflowError` (field = the parameter) for an unknown parameter, a seed of -1, or a
    parameter this workflow has no place for.

    >>> from comfy.graph.workflow import load_template
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


def _unique(targets: Iterable[Target]) -> list[Target]:
    return list(dict.fromkeys(targets))


def _was_set(param: str, value: Any) -> bool:
    default = {f.name: f.default for f in dataclasses.fields(GenerationParams)}[param]
    if default is dataclasses.MISSING:
        return value != ""
    return value != default


def _no_place_message(param: str, value: Any) -> str:
    title = PARAM_LABELS[param]
    if param == "init_image":
        return ("This workflow takes no input image (it has no Load Image node); pick an img2img workflow, "
                "or add a Load Image node titled 'Init image'.")
    if param in ("prompt", "negative_prompt"):
        return (f"This workflow has no place for the {title.lower()}: no text encoder feeds a sampler's "
                f"{'positive' if param == 'prompt' else 'negative'} input and no node is titled '{title}'. "
                f"Title the node that should receive it '{title}' in ComfyUI and export again.")
    return (f"This workflow has no place for {param} ({value!r}); leave it at its default, or title the node "
            f"that should receive it '{title}' in ComfyUI and export again.")


def _resolve_literal(graph: Graph, node_id: str, name: str, depth: int = 0) -> Target | None:
    """The place holding the literal behind an input, following a link to a primitive-like node."""
    inputs = node_inputs(graph.get(node_id))
    if name not in inputs or depth > _MAX_DEPTH:
        return None
    value = inputs[name]
    if not is_link(value):
        return None if isinstance(value, (list, dict)) or value is None else (node_id, name)
    source = node_inputs(graph.get(value[0]))
    for candidate in (name, "value"):
        if candidate in source:
            return _resolve_literal(graph, value[0], candidate, depth + 1)
    if len(source) == 1 and not is_link(next(iter(source.values()))):
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
    literal = [name for name, value in inputs.items() if not is_link(value)]
    return literal if len(literal) == 1 else []


def _title_targets(graph: Graph) -> dict[str, list[Target]]:
    found: dict[str, list[Target]] = {}
    for node_id in sorted(graph, key=node_order):
        title = node_title(graph[node_id])
        param = PARAM_TITLES.get(norm_title(title)) if title else None
        if param is None:
            continue
        for name in _natural_inputs(param, node_inputs(graph[node_id])):
            target = _resolve_literal(graph, node_id, name)
            if target is not None:
                found.setdefault(param, []).append(target)
    return found


def _graph_targets(graph: Graph) -> dict[str, list[Target]]:
    samplers = [n for n in sorted(graph, key=node_order) if is_sampler(graph[n])]
    firsts = [s for s in samplers if not (upstream_of(graph, s) & set(samplers))]
    found: dict[str, list[Target]] = {}

    def add(param: str, targets: Iterable[Target | None]) -> None:
        found.setdefault(param, []).extend(t for t in targets if t is not None)

    for sampler in samplers:
        for param, (names, via) in SAMPLER_PARAMS.items():
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
        loaders = [n for n in sorted(graph, key=node_order) if node_class(graph[n]) == "LoadImage"]
        if len(loaders) == 1:
            add("init_image", [_resolve_literal(graph, loaders[0], "image")])
    return found


def _sampler_input(graph: Graph, sampler: str, names: tuple[str, ...], via: tuple[str, ...]) -> Target | None:
    inputs = node_inputs(graph[sampler])
    for name in names:
        if name in inputs:
            return _resolve_literal(graph, sampler, name)
    for link_name in via:
        link = inputs.get(link_name)
        if is_link(link):
            source = node_inputs(graph.get(link[0]))
            for name in names:
                if name in source:
                    return _resolve_literal(graph, link[0], name)
    return None


def _conditioning_link(graph: Graph, sampler: str, role: str) -> Any:
    inputs = node_inputs(graph[sampler])
    if role in inputs:
        return inputs[role]
    guider = inputs.get("guider")
    if is_link(guider):
        guider_inputs = node_inputs(graph.get(guider[0]))
        if role in guider_inputs:
            return guider_inputs[role]
        if role == "positive":
            return guider_inputs.get("conditioning")  # BasicGuider (Flux) has one conditioning input
    return None


def _follow_conditioning(graph: Graph, link: Any, role: str) -> list[Target]:
    seen: set[str] = set()
    while is_link(link) and isinstance(graph.get(link[0]), dict) and link[0] not in seen:
        node_id = link[0]
        seen.add(node_id)
        node = graph[node_id]
        if node_class(node) == "ConditioningZeroOut":
            return []  # an "empty" negative made from the positive: there is no text to set
        inputs = node_inputs(node)
        for group in _TEXT_INPUTS:
            if any(name in inputs for name in group):
                targets = (_resolve_literal(graph, node_id, name) for name in group if name in inputs)
                return [t for t in targets if t is not None]
        link = next((inputs[n] for n in (role, "conditioning") if is_link(inputs.get(n))), None)
        if link is None:
            link = next((v for n, v in inputs.items() if "conditioning" in n and is_link(v)), None)
    return []


def _follow_model(graph: Graph, sampler: str) -> Target | None:
    inputs = node_inputs(graph[sampler])
    link = inputs.get("model")
    if link is None and is_link(inputs.get("guider")):
        link = node_inputs(graph.get(inputs["guider"][0])).get("model")
    seen: set[str] = set()
    while is_link(link) and isinstance(graph.get(link[0]), dict) and link[0] not in seen:
        seen.add(link[0])
        source = node_inputs(graph[link[0]])
        if "ckpt_name" in source:
            return _resolve_literal(graph, link[0], "ckpt_name")
        link = next((source[n] for n in ("model", "model1") if is_link(source.get(n))), None)
    return None


def _follow_latent(graph: Graph, sampler: str) -> dict[str, Target]:
    found: dict[str, Target] = {}
    link = node_inputs(graph[sampler]).get("latent_image")
    seen: set[str] = set()
    while is_link(link) and isinstance(graph.get(link[0]), dict) and link[0] not in seen:
        node_id = link[0]
        seen.add(node_id)
        node = graph[node_id]
        inputs = node_inputs(node)
        if is_image_loader(node):
            target = _resolve_literal(graph, node_id, "image")
            if target is not None:
                found["init_image"] = target
            break
        if "width" in inputs and "height" in inputs and "width" not in found:
            for param in ("width", "height", "batch_size"):
                target = _resolve_literal(graph, node_id, param)
                if target is not None:
                    found[param] = target
        link = next((inputs[n] for n in _LATENT_PATH if is_link(inputs.get(n))), None)
    return found
