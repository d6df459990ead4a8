"""ComfyUI Studio's Gradio page: a thin door over the engine in :mod:`comfy`, beside the REST API (``api/``).

``layout`` builds the components and wires their events; ``handlers`` calls the engine; ``render`` turns
jobs into HTML. May import ``comfy`` and gradio; the engine never imports this package.
"""

from ui.layout import CSS, HEAD, build_ui, outputs_paths

__all__ = ["build_ui", "CSS", "HEAD", "outputs_paths"]
