"""The fake ComfyUI server the tests run against (``FakeComfy``); see ``routes`` for what it reproduces.

One module per concern, each importing only the modules listed before it (so there are no cycles);
from the rest of the project only ``tests.fakes.loopback``, never the studio's own code:

* ``fixtures``: the captured files it serves, ``FIXTURES_DIR`` and ``load_workflow``;
* ``files``: input/, output/ and temp/ in memory, and the PNGs SaveImage writes;
* ``validation``: the port of ComfyUI's prompt validation against object_info (the 400 bodies);
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
