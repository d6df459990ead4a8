"""ComfyUI Studio's Gradio page: a thin layer over the engine in :mod:`comfy`."""

from .layout import CSS, HEAD, build_ui, outputs_paths

__all__ = ["build_ui", "CSS", "HEAD", "outputs_paths"]
