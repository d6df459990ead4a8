"""How far along a prompt is, from ComfyUI's events, as one number a progress bar can show.

Nodes weigh 1 each, except nodes with a ``steps`` input (samplers), which weigh their step count:
on a GPU the sampler is most of the run. ``progress_state`` (ComfyUI ≥ 0.3.4x) carries every
node's state; older servers send only ``executing`` and ``progress``, which this also follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy.backends import protocol
from comfy.backends.protocol import Event

__all__ = ["ProgressTracker", "Snapshot"]


@dataclass(frozen=True)
class Snapshot:
    progress: float
    node: str | None  #: a label such as ``KSampler`` or the node's title
    step: int | None
    steps: int | None


class ProgressTracker:
    def __init__(self, graph: dict[str, Any]) -> None:
        self._graph = graph
        self._weights = {node_id: _weight(node) for node_id, node in graph.items() if isinstance(node, dict)}
        self._total = sum(self._weights.values()) or 1.0
        self._done: set[str] = set()
        self._current: str | None = None
        self._fraction = 0.0
        self.step: int | None = None
        self.steps: int | None = None

    def label(self, node_id: str | None) -> str | None:
        if node_id is None:
            return None
        node = self._graph.get(node_id) or {}
        title = (node.get("_meta") or {}).get("title")
        return str(title or node.get("class_type") or f"node {node_id}")

    def feed(self, event: Event) -> bool:
        """Take an event; True when it moved the progress or the current node."""
        if isinstance(event, protocol.ExecutionCached):
            self._done.update(event.nodes)
            return bool(event.nodes)
        if isinstance(event, protocol.Executing):
            if self._current is not None and self._current != event.node:
                self._done.add(self._current)
            self._current, self._fraction = event.node, 0.0
            self.step = self.steps = None
            return True
        if isinstance(event, protocol.Progress):
            self._current = event.node or self._current
            self._fraction = event.value / event.max if event.max else 0.0
            self.step, self.steps = event.value, event.max
            return True
        if isinstance(event, protocol.ProgressState):
            for node_id, state in event.nodes.items():
                if state.get("state") == "finished":
                    self._done.add(str(node_id))
            return False  # the executing/progress that follows carries the same news
        return False

    def snapshot(self) -> Snapshot:
        done = sum(self._weights.get(n, 1.0) for n in self._done)
        if self._current and self._current not in self._done:
            done += self._weights.get(self._current, 1.0) * self._fraction
        # Never report 1.0 before the outputs are saved: the job is not done until then.
        return Snapshot(min(done / self._total, 0.99), self.label(self._current), self.step, self.steps)


def _weight(node: dict[str, Any]) -> float:
    steps = (node.get("inputs") or {}).get("steps")
    return float(steps) if isinstance(steps, (int, float)) and not isinstance(steps, bool) and steps > 0 else 1.0
