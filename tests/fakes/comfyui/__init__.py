"""The fake ComfyUI server the tests run against (``FakeComfy``); see ``routes`` for what it reproduces.

One module per concern, each importing only the modules listed before it (so there are no cycles);
from the rest of the project only ``tests.fakes.loopback``, never the studio's own code:

* ``routes``: ``FakeComfy`` with its HTTP and WebSocket routes and its lifecycle (and, for now, the rest).
"""

from __future__ import annotations

from tests.fakes.comfyui.routes import FIXTURES_DIR, FakeComfy, load_workflow

__all__ = ["FIXTURES_DIR", "FakeComfy", "load_workflow"]
