"""What the nodes do, as far as the fake needs: lazy inputs and cache keys, image sizes, the files they write.

``_Nodes`` is a mixin of FakeComfy; the executor calls it through ``self``. May import files, validation
and executor.
"""

from __future__ import annotations

import json
import posixpath
import random
from collections.abc import Callable
from typing import Any

from tests.fakes.comfyui.executor import _Run
from tests.fakes.comfyui.files import _DEFAULT_SHAPE, _expand_prefix, _Files, _PngFactory
from tests.fakes.comfyui.validation import _IMAGE_LOADERS, _is_link

_TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"  # sic: nodes.PreviewImage's alphabet


class _Nodes:
    """ComfyUI's node classes, reduced to what shapes the protocol: IS_CHANGED, UNIQUE_ID, lazy inputs, images."""

    # What it uses of its host (FakeComfy.__init__).
    _classes: dict[str, Any]
    _files: _Files
    _png: _PngFactory

    def _input_option(self, class_type: str, name: str, option: str) -> Any:
        spec = self._classes.get(class_type, {}).get("input", {})
        for category in ("required", "optional"):
            entry = spec.get(category, {}).get(name)
            if entry is not None and len(entry) > 1 and isinstance(entry[1], dict):
                return entry[1].get(option)
        return None

    def _is_changed(self, prompt: dict[str, Any]) -> Callable[[str], Any]:
        """IS_CHANGED: LoadImage hashes its file, every other node here has none (False)."""

        def is_changed(node_id: str) -> Any:
            node = prompt[node_id]
            if node["class_type"] in _IMAGE_LOADERS:
                stored = self._files.resolve_image(str(node.get("inputs", {}).get("image")))
                return stored.sha256 if stored is not None else float("nan")
            return False

        return is_changed

    def _keyed_by_id(self, prompt: dict[str, Any]) -> Callable[[str], bool]:
        """include_unique_id_in_input: classes with a hidden UNIQUE_ID are cached per node id."""

        def with_id(node_id: str) -> bool:
            hidden = self._classes.get(prompt[node_id]["class_type"], {}).get("input", {}).get("hidden", {})
            return "UNIQUE_ID" in hidden.values()

        return with_id

    def _image_exists(self, value: str) -> bool:
        return self._files.resolve_image(value) is not None

    def _image_shape(self, prompt: dict[str, Any], node_id: str, depth: int = 0) -> tuple[int, int, int]:
        """(width, height, batch) of the images a node produces, traced back through the graph."""
        node = prompt.get(node_id)
        if node is None or depth > 64:
            return _DEFAULT_SHAPE
        inputs = node.get("inputs", {})
        if node["class_type"] in _IMAGE_LOADERS:
            stored = self._files.resolve_image(str(inputs.get("image")))
            return (*stored.size, 1) if stored is not None else _DEFAULT_SHAPE
        upstream = next(
            (inputs[k] for k in ("images", "image", "samples", "pixels", "latent_image", "latent", "latents")
             if _is_link(inputs.get(k))),
            next((v for v in inputs.values() if _is_link(v)), None),
        )
        width, height, batch = self._image_shape(prompt, upstream[0], depth + 1) if upstream else _DEFAULT_SHAPE
        if isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int) and inputs["width"] > 0:
            width, height = inputs["width"], inputs["height"]
        elif isinstance(inputs.get("scale_by"), (int, float)):
            width, height = max(1, round(width * inputs["scale_by"])), max(1, round(height * inputs["scale_by"]))
        elif node["class_type"] == "ImagePadForOutpaint":  # nodes_images: the canvas grows on each side
            width += int(inputs.get("left", 0)) + int(inputs.get("right", 0))
            height += int(inputs.get("top", 0)) + int(inputs.get("bottom", 0))
        if isinstance(inputs.get("batch_size"), int) and inputs["batch_size"] > 0:
            batch = inputs["batch_size"]
        return width, height, batch

    def _write_outputs(self, run: _Run, node_id: str) -> dict[str, Any] | None:
        """SaveImage (output/, counters per prefix) and PreviewImage (temp/, random prefix)."""
        node = run.prompt[node_id]
        if node["class_type"] == "SaveImage":
            kind, prefix = "output", str(node["inputs"].get("filename_prefix", "ComfyUI"))
        elif node["class_type"] == "PreviewImage":
            kind, prefix = "temp", "ComfyUI_temp_" + "".join(random.choice(_TEMP_LETTERS) for _ in range(5))
        else:
            return None
        source = node["inputs"].get("images")
        width, height, batch = self._image_shape(run.prompt, source[0]) if _is_link(source) else _DEFAULT_SHAPE
        normalized = posixpath.normpath(_expand_prefix(prefix, width, height))
        subfolder, base = posixpath.dirname(normalized), posixpath.basename(normalized)
        counter = self._files.next_counter(kind, subfolder, base)
        texts = self._png_texts(run)
        images = []
        for index in range(batch):
            name = f"{base}_{counter:05}_.png"
            self._files.put(kind, subfolder, name, self._png.make(width, height, texts, index))
            images.append({"filename": name, "subfolder": subfolder, "type": kind})
            counter += 1
        return {"images": images}

    def _png_texts(self, run: _Run) -> list[tuple[str, str]]:
        """The hidden PROMPT (LoadImage nodes carry their injected ``is_changed``) and EXTRA_PNGINFO."""
        prompt = dict(run.prompt)
        for node_id, node in run.prompt.items():
            if node.get("class_type") in _IMAGE_LOADERS:
                stored = self._files.resolve_image(str(node["inputs"].get("image")))
                if stored is not None:
                    prompt[node_id] = {**node, "is_changed": [stored.sha256]}
        texts = [("prompt", json.dumps(prompt))]
        extra_pnginfo = run.extra.get("extra_pnginfo")
        if isinstance(extra_pnginfo, dict):
            texts.extend((key, json.dumps(value)) for key, value in extra_pnginfo.items())
        return texts
