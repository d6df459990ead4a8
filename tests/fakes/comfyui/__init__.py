"""A faithful fake ComfyUI 0.8.0 server: real HTTP + WebSocket on 127.0.0.1, driven by captured fixtures.

Why a fake and not a mock: the client must survive what only real sockets show (dropped sockets, a
restart on the same port, slow downloads, a second socket taking over a clientId). So this runs a real
uvicorn server in a daemon thread and reproduces, message for message, what
``tests/fixtures/comfyui/`` recorded from a real ComfyUI (see that folder's README):

* every static body (``/system_stats``, ``/features``, ``/object_info`` byte-exact, ...) is served
  from the fixture files, never retyped;
* ``POST /prompt`` validates like ``execution.validate_prompt`` (a port of it, against object_info),
  so 400 bodies have exactly the fixtures' shape;
* the executor reproduces ComfyUI's execution order (``ExecutionList.ux_friendly_pick_node``), its
  output cache (input signatures; only the previous prompt's nodes survive), ``progress_state``
  bookkeeping, message routing (lifecycle events only to the prompt's ``client_id`` socket) and the
  end-of-prompt order ``execution_success -> history written -> status -> executing null``;
* outputs are real PNGs with ComfyUI's ``tEXt`` chunks, previews are the captured JPEGs.

Usage::

    with FakeComfy(step_time=0.01) as fake:
        httpx.post(f"{fake.url}/prompt", json={"prompt": load_workflow("txt2img"), "client_id": "me"})
        fake.wait_idle()

One module per concern, each importing only the modules listed before it (so there are no cycles);
from the rest of the project only ``tests.fakes.loopback``, never the studio's own code:

* ``fixtures``: the captured files it serves, ``FIXTURES_DIR`` and ``load_workflow``;
* ``files``: input/, output/ and temp/ in memory, and the PNGs SaveImage writes;
* ``validation``: the port of ComfyUI's prompt validation against object_info (the 400 bodies);
* ``faults``: what a network or a proxy does (a reply lost after the prompt was queued);
* ``hub``: the WebSocket side, sockets by clientId and the publish loop that writes their frames;
* ``knobs``: the scenario knobs tests turn and what the fake observed (a mixin of ``FakeComfy``);
* ``executor``: execution order, output cache, the queue and what a run sends (a mixin of ``FakeComfy``);
* ``nodes``: what the nodes do: cache keys, image sizes, the files they write (a mixin of ``FakeComfy``);
* ``routes``: ``FakeComfy`` with its HTTP and WebSocket routes and its lifecycle.
"""

from __future__ import annotations

from tests.fakes.comfyui.fixtures import FIXTURES_DIR, load_workflow
from tests.fakes.comfyui.routes import FakeComfy

__all__ = ["FIXTURES_DIR", "FakeComfy", "load_workflow"]
