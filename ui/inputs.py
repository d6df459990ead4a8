"""Upload components the page's tabs share."""

from __future__ import annotations

from typing import Any

import gradio as gr

__all__ = ["uploaded_image"]


def uploaded_image(**kwargs: Any) -> gr.Image:
    """An image upload (``type="filepath"``) that reaches its handler as the file's path, never decoded on the way.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so a decompression bomb failed
    there without a word; the engine checks and decodes uploads itself, in a thread, and says what is wrong.
    (A subclass would make Gradio write a ``.pyi`` beside this file, so the one instance is adapted.)
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    decode = image.preprocess

    def path_only(payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return decode(payload)

    image.preprocess = path_only  # type: ignore[method-assign]
    return image
