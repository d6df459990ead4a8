"""The knobs a test turns on a FakeComfy to set up a scenario, and what the fake observed for it to assert.

Imports nothing from the rest of the package.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class _Knobs:
    """FakeComfy's scenario settings: a mixin, so that tests turn them on the fake itself.

    Knobs, settable at any time from the test thread:

    * ``step_time`` seconds per KSampler/KSamplerAdvanced step (``steps`` of them, whatever ``denoise``);
      ``node_time`` seconds for every other executed node; ``previews`` sends one binary frame per step.
    * ``view_delay`` seconds before ``/view`` answers (404s included).
    * ``reject_next = "<name>"``: the next POST /prompt gets ``http/post_prompt_400_<name>.json`` (or
      ``post_prompt_<name>.json``, e.g. ``malformed_json``), status and body; ``number`` still counts.
    * ``fail_next``: the next prompt that runs raises ``execution_error`` at its first VAEDecode to run,
      else at its last non-output node. (A VAEDecode fed by EmptySD3LatentImage always fails, as captured.)
    * ``drop_sockets_after = n``: after n more frames written while work is queued or running (every
      socket write counts), every WebSocket is cut without a close frame; the run goes on. Resets to None.
    * ``hold``: the executor does not start the next prompt until it is False again.
    * ``lose_first_replies``: the first POST /prompt of each prompt id is queued (it runs), then its
      connection is reset before the answer: a reply lost on the way, as a proxy or a network cut does.
      ``lost_replies`` lists the prompt ids whose reply was lost.
    * ``prompt_answer_delay`` seconds an accepted POST /prompt waits, already queued, before it answers.
    * ``gateway_next = (status, queue_after)``: a proxy in front answers the next POST /prompt at once with
      ``status`` and an HTML page (502, 504, or even 200), while ComfyUI, still validating, queues the prompt
      ``queue_after`` seconds later (it runs). ``late_prompts`` lists the prompt ids queued that way.
    * ``ignore_deletes``: ``POST /queue {"delete": [...]}`` is answered 200 but removes nothing (a delete that
      raced the executor, as seen from the client).
    * ``refuse_websocket``: every WebSocket upgrade is refused with HTTP 403 (a proxy that passes only HTTP).

    Observations: ``prompts`` (accepted POST /prompt bodies, as sent), ``interrupts`` (POST /interrupt
    bodies, None when empty), ``deleted`` (ids actually removed by ``POST /queue {"delete": [...]}``),
    ``client_ids`` (registered sockets) and ``file_names(kind)`` (those two are FakeComfy's).

    One-shot knobs are used up where they act: ``reject_next`` by POST /prompt, ``fail_next`` by the
    executor, ``drop_sockets_after`` by ``_frame_written`` (the hub calls it for every frame). The
    ``hold`` setter wakes the executor through its host's ``_call_soon`` and ``_poke``.
    """

    def __init__(self, *, step_time: float, node_time: float, previews: bool) -> None:
        self.step_time = step_time
        self.node_time = node_time
        self.previews = previews
        self.view_delay = 0.0
        self.reject_next: str | None = None
        self.fail_next = False
        self.drop_sockets_after: int | None = None
        self.prompts: list[dict[str, Any]] = []
        self.interrupts: list[dict[str, Any] | None] = []
        self.deleted: list[str] = []
        self.lose_first_replies = False
        self.lost_replies: list[str] = []
        self.refuse_websocket = False
        self.prompt_answer_delay = 0.0
        self.gateway_next: tuple[int, float] | None = None
        self.ignore_deletes = False
        self.late_prompts: list[str] = []
        self._hold = False

    @property
    def hold(self) -> bool:
        """When True the executor does not start the next prompt (fill the queue deterministically)."""
        return self._hold

    @hold.setter
    def hold(self, value: bool) -> None:
        self._hold = value
        self._call_soon(self._poke)

    def _lose_this_reply(self, prompt_id: str) -> bool:
        """Whether the answer to this (accepted) POST /prompt is to be lost; records it."""
        if not self.lose_first_replies or prompt_id in self.lost_replies:
            return False
        self.lost_replies.append(prompt_id)
        return True

    def _frame_written(self, written: bool) -> bool:
        """Counts frames for ``drop_sockets_after``; True means: cut every socket now."""
        left = self.drop_sockets_after
        if left is None:
            return False
        if written:
            left -= 1
            self.drop_sockets_after = left
        if left <= 0:
            self.drop_sockets_after = None
            logger.info("fake ComfyUI: dropping every WebSocket (drop_sockets_after)")
            return True
        return False
