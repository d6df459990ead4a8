"""ComfyUI's wire protocol: WebSocket frames as typed events, and ComfyUI's answers as sentences.

Everything here is pure (no I/O), so it is tested directly against the captured transcripts in
``tests/fixtures/comfyui``. Facts this module relies on, all seen on a real ComfyUI 0.8.0:

* a text frame is always ``{"type": str, "data": object}``;
* a binary frame starts with a big-endian uint32 event type: ``1`` is a preview
  (``[u32 format][image]``, format 1 = JPEG, 2 = PNG), ``4`` a preview with metadata
  (``[u32 n][n bytes of JSON][image]``, sent only to clients that said ``feature_flags`` first),
  ``3`` progress text (``[u32 n][node id][utf-8 text]``);
* the run ends with ``executing`` whose ``node`` is null, sent after the history entry is written.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass, field
from typing import Any, Union

from comfy.errors import NodeProblem, ProtocolError

__all__ = [
    "Event",
    "Status",
    "FeatureFlags",
    "ExecutionStart",
    "ExecutionCached",
    "Executing",
    "Progress",
    "ProgressState",
    "Executed",
    "ExecutionSuccess",
    "ExecutionErrorEvent",
    "ExecutionInterruptedEvent",
    "Preview",
    "ProgressText",
    "UnknownEvent",
    "OutputRef",
    "decode_text",
    "decode_binary",
    "decode_message",
    "output_refs",
    "describe_rejection",
    "describe_node",
    "FEATURE_FLAGS_HELLO",
]

logger = logging.getLogger(__name__)

#: The first frame a client sends to get previews with metadata (type 4) instead of type 1.
FEATURE_FLAGS_HELLO = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}

_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


@dataclass(frozen=True)
class OutputRef:
    """One file a node produced, as ``/view`` addresses it."""

    filename: str
    subfolder: str = ""
    type: str = "output"
    node_id: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], node_id: str | None = None) -> OutputRef:
        return cls(str(data["filename"]), str(data.get("subfolder") or ""), str(data.get("type") or "output"), node_id)


@dataclass(frozen=True)
class Status:
    """The server's queue changed; ``queue_remaining`` counts pending plus running prompts."""

    queue_remaining: int
    sid: str | None = None


@dataclass(frozen=True)
class FeatureFlags:
    """The server's answer to our feature-flags hello."""

    flags: dict[str, Any]


@dataclass(frozen=True)
class ExecutionStart:
    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionCached:
    prompt_id: str
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Executing:
    """A node is about to run; ``node`` None is the end of the prompt (history is ready)."""

    prompt_id: str | None
    node: str | None
    display_node: str | None = None

    @property
    def finished(self) -> bool:
        return self.node is None


@dataclass(frozen=True)
class Progress:
    """A step of a node that reports progress (the sampler)."""

    prompt_id: str | None
    node: str | None
    value: int
    max: int


@dataclass(frozen=True)
class ProgressState:
    """The state of every non-pending node (``value``, ``max``, ``state``)."""

    prompt_id: str | None
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Executed:
    """An output node finished; its files (``type`` ``temp`` for PreviewImage)."""

    prompt_id: str | None
    node: str
    outputs: tuple[OutputRef, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecutionSuccess:
    prompt_id: str
    timestamp: int | None = None


@dataclass(frozen=True)
class ExecutionErrorEvent:
    prompt_id: str
    node_id: str | None
    node_type: str | None
    exception_type: str | None
    exception_message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutionInterruptedEvent:
    prompt_id: str
    node_id: str | None = None
    node_type: str | None = None


@dataclass(frozen=True)
class Preview:
    """A latent preview image; prompt and node are known only with feature flags (type 4)."""

    image: bytes = field(repr=False)
    mime: str = "image/jpeg"
    prompt_id: str | None = None
    node_id: str | None = None


@dataclass(frozen=True)
class ProgressText:
    node_id: str
    text: str


@dataclass(frozen=True)
class UnknownEvent:
    """A message type this client does not know (newer servers, custom nodes); never fatal."""

    type: str
    data: Any


Event = Union[
    Status, FeatureFlags, ExecutionStart, ExecutionCached, Executing, Progress, ProgressState, Executed,
    ExecutionSuccess, ExecutionErrorEvent, ExecutionInterruptedEvent, Preview, ProgressText, UnknownEvent,
]


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def output_refs(node: str, output: Any) -> tuple[OutputRef, ...]:
    """The files in one node's output (``{"images": [{filename, subfolder, type}, ...]}``)."""
    refs: list[OutputRef] = []
    if isinstance(output, dict):
        for key in ("images", "gifs", "video", "audio"):
            for item in output.get(key) or ():
                if isinstance(item, dict) and "filename" in item:
                    refs.append(OutputRef.from_dict(item, node))
    return tuple(refs)


def decode_text(text: str | bytes) -> Event:
    """Decode one text frame. Raises :class:`ProtocolError` if it is not ``{"type", "data"}``."""
    try:
        msg = json.loads(text)
        kind, data = msg["type"], msg.get("data") or {}
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"ComfyUI sent a WebSocket message that is not JSON with a type: {str(text)[:80]!r}") from exc
    return decode_message(kind, data)


def decode_message(kind: str, data: Any) -> Event:
    """Decode one message by type (a WebSocket frame's, or one of the history's ``status.messages``)."""
    try:
        return _decode(kind, data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProtocolError(f"ComfyUI sent a {kind!r} message of an unexpected shape") from exc


def _decode(kind: str, data: dict[str, Any]) -> Event:
    pid = _str_or_none(data.get("prompt_id")) if isinstance(data, dict) else None
    if kind == "status":
        return Status(int(data["status"]["exec_info"]["queue_remaining"]), data.get("sid"))
    if kind == "executing":
        return Executing(pid, _str_or_none(data.get("node")), _str_or_none(data.get("display_node")))
    if kind == "progress":
        return Progress(pid, _str_or_none(data.get("node")), int(data["value"]), int(data["max"]))
    if kind == "progress_state":
        return ProgressState(pid, dict(data.get("nodes") or {}))
    if kind == "executed":
        node = str(data["node"])
        return Executed(pid, node, output_refs(node, data.get("output")), dict(data.get("output") or {}))
    if kind == "execution_start":
        return ExecutionStart(str(data["prompt_id"]), data.get("timestamp"))
    if kind == "execution_cached":
        return ExecutionCached(str(data["prompt_id"]), tuple(str(n) for n in data.get("nodes") or ()))
    if kind == "execution_success":
        return ExecutionSuccess(str(data["prompt_id"]), data.get("timestamp"))
    if kind == "execution_error":
        return ExecutionErrorEvent(
            str(data["prompt_id"]), _str_or_none(data.get("node_id")), _str_or_none(data.get("node_type")),
            _str_or_none(data.get("exception_type")), str(data.get("exception_message") or "").strip(),
            tuple(data.get("traceback") or ()),
        )
    if kind == "execution_interrupted":
        return ExecutionInterruptedEvent(str(data["prompt_id"]), _str_or_none(data.get("node_id")),
                                         _str_or_none(data.get("node_type")))
    if kind == "feature_flags":
        return FeatureFlags(dict(data))
    logger.debug("Skipping unknown ComfyUI message type %r", kind)
    return UnknownEvent(kind, data)


def decode_binary(frame: bytes) -> Event:
    """Decode one binary frame (previews, progress text). Raises :class:`ProtocolError` if truncated."""
    if len(frame) < 8:
        raise ProtocolError(f"ComfyUI sent a binary frame of {len(frame)} bytes; it needs an 8-byte header")
    event_type, word = struct.unpack(">II", frame[:8])
    if event_type == 1:
        return Preview(frame[8:], _PREVIEW_FORMATS.get(word, "application/octet-stream"))
    if event_type == 4:
        end = 8 + word
        if end > len(frame):
            raise ProtocolError("ComfyUI sent a preview whose metadata runs past the end of the frame")
        try:
            meta = json.loads(frame[8:end])
        except ValueError as exc:
            raise ProtocolError("ComfyUI sent a preview with unreadable metadata") from exc
        return Preview(frame[end:], str(meta.get("image_type") or "image/jpeg"),
                       _str_or_none(meta.get("prompt_id")), _str_or_none(meta.get("node_id")))
    if event_type == 3:
        end = 8 + word
        if end > len(frame):
            raise ProtocolError("ComfyUI sent progress text whose node id runs past the end of the frame")
        return ProgressText(frame[8:end].decode("utf-8", "replace"), frame[end:].decode("utf-8", "replace"))
    return UnknownEvent(f"binary:{event_type}", frame[4:])


# -- ComfyUI's validation errors, as sentences -------------------------------------------------------

_KIND_SENTENCES = {
    "required_input_missing": "the required input {input} is missing",
    "value_not_in_list": "{details}",
    "value_bigger_than_max": "{input}: {message}",
    "value_smaller_than_min": "{input}: {message}",
    "invalid_input_type": "{input} has the wrong type ({details})",
    "return_type_mismatch": "{input} is connected to an output of the wrong type ({details})",
    "exception_during_inner_validation": "{input} is connected to a node that does not exist or is invalid ({details})",
    "exception_during_validation": "validating {input} failed ({details})",
    "custom_validation_failed": "{input}: {details}",
}

_TOP_LEVEL_HINTS = {
    "prompt_no_outputs": "The workflow has no output node (such as Save Image), so it would produce nothing: "
                         "add one.",
    "no_prompt": "The request carried no workflow.",
}


def describe_node(graph: dict[str, Any] | None, node_id: str | None, class_type: str | None = None) -> str:
    """``node 4 "Load Checkpoint" (CheckpointLoaderSimple)`` — how a person finds it in their graph."""
    node = (graph or {}).get(node_id or "", {}) if isinstance(graph, dict) else {}
    class_type = class_type or (node.get("class_type") if isinstance(node, dict) else None)
    title = (node.get("_meta") or {}).get("title") if isinstance(node, dict) else None
    text = f"node {node_id}"
    if title and title != class_type:
        text += f' "{title}"'
    if class_type:
        text += f" ({class_type})"
    return text


def _problem_sentence(err: dict[str, Any]) -> tuple[str | None, str]:
    kind = str(err.get("type") or "")
    extra = err.get("extra_info") or {}
    input_name = extra.get("input_name") or (err.get("details") if kind == "required_input_missing" else None)
    template = _KIND_SENTENCES.get(kind, "{message} {details}")
    sentence = template.format(
        input=input_name or "an input", details=str(err.get("details") or "").strip(),
        message=str(err.get("message") or "").strip(),
    ).strip()
    if kind == "value_not_in_list" and extra.get("received_value") is not None and input_name:
        choices = (extra.get("input_config") or [[]])[0]
        if isinstance(choices, list) and choices:
            shown = ", ".join(map(str, choices[:8])) + (", …" if len(choices) > 8 else "")
            sentence = f"{input_name} {extra['received_value']!r} is not available on the server; choose one of: {shown}"
    return input_name, sentence


def describe_rejection(body: Any, graph: dict[str, Any] | None = None) -> tuple[str, tuple[NodeProblem, ...]]:
    """Turn a ``POST /prompt`` 400 body into a message and one :class:`NodeProblem` per complaint."""
    if not isinstance(body, dict):
        return f"ComfyUI rejected the workflow: {str(body)[:300]}", ()
    top = body.get("error") or {}
    if isinstance(top, str):
        top = {"message": top}
    problems: list[NodeProblem] = []
    for node_id, entry in (body.get("node_errors") or {}).items():
        class_type = entry.get("class_type")
        where = describe_node(graph, str(node_id), class_type)
        for err in entry.get("errors") or ():
            input_name, sentence = _problem_sentence(err)
            problems.append(NodeProblem(str(node_id), class_type, input_name, str(err.get("type") or ""),
                                        f"{where}: {sentence}"))
    if problems:
        lines = "; ".join(p.message for p in problems)
        return f"ComfyUI rejected the workflow: {lines}.", tuple(problems)
    kind = str(top.get("type") or "")
    message = _TOP_LEVEL_HINTS.get(kind) or str(top.get("message") or "The workflow is invalid.").strip()
    details = str(top.get("details") or "").strip()
    if details and kind not in _TOP_LEVEL_HINTS:
        message = f"{message} ({details})"
    if kind == "invalid_prompt" and "does not exist" in message:
        message += " Install the custom node on the ComfyUI server, or remove it from the workflow."
    return f"ComfyUI rejected the workflow: {message}", (NodeProblem(None, None, None, kind, message),)
