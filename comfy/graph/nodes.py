"""Small helpers over an API-format graph: links, node classes and titles, labels for messages, node order."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["SAMPLER_CLASSES", "Graph", "Target", "json_kind", "is_link", "node_inputs", "node_class", "node_title", "node_label", "node_ref", "node_field", "node_order", "norm_title", "is_image_loader", "is_sampler", "upstream_of"]


SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"})
Graph = dict[str, Any]
Target = tuple[str, str]


def json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), "a number")


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def node_inputs(node: Any) -> dict[str, Any]:
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def node_class(node: Any) -> str:
    value = node.get("class_type") if isinstance(node, dict) else None
    return value if isinstance(value, str) else "?"


def node_title(node: Any) -> str | None:
    meta = node.get("_meta") if isinstance(node, dict) else None
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) and title.strip() else None


def node_label(node_id: str, node: Any) -> str:
    """``Node 3 (KSampler)`` or ``Node 6 "Positive prompt" (CLIPTextEncode)``: how messages name a node."""
    title, cls = node_title(node), node_class(node)
    return f'Node {node_id} "{title}" ({cls})' if title and title != cls else f"Node {node_id} ({cls})"


def node_ref(node_id: str, node: Any) -> str:
    """The node's label in the middle of a sentence."""
    return "n" + node_label(node_id, node)[1:]


def node_field(node_id: str, node: Any, input_name: str | None = None) -> str:
    base = f"node {node_id} ({node_class(node)})"
    return f"{base}.{input_name}" if input_name else base


def node_order(node_id: str) -> tuple[tuple[int, int, str], ...]:
    """Numeric-aware order of node ids ("3" < "10"; subgraph ids like "10:2" too)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(node_id).split(":"))


def norm_title(title: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", title.lower()).split())


def is_image_loader(node: Any) -> bool:
    cls = node_class(node)
    return cls == "LoadImage" or (cls.startswith("LoadImage") and isinstance(node_inputs(node).get("image"), str))


def is_sampler(node: Any) -> bool:
    inputs = node_inputs(node)
    return (node_class(node) in SAMPLER_CLASSES or {"positive", "negative", "latent_image"} <= inputs.keys()
            or {"guider", "latent_image"} <= inputs.keys())


def upstream_of(graph: Graph, node_id: str) -> set[str]:
    """Every node some input of ``node_id`` depends on, directly or not."""
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for value in node_inputs(graph.get(stack.pop())).values():
            if is_link(value) and value[0] in graph and value[0] not in seen:
                seen.add(value[0])
                stack.append(value[0])
    return seen
