"""Which server files a user's workflow may name when several people share one ComfyUI.

ComfyUI resolves the value of a LoadImage-style input through its folders: ``name [output]``, ``[temp]``
and ``sub/name`` reach its output and temp folders, where every user's results are, and LoadImageOutput
reads the output folder outright. The studio's own gates (each job and image to its owner) would be
bypassed there, so with logins or keys on a workflow may name only the images it uploads with the job, or
plain file names in ComfyUI's input folder.

>>> from comfy.graph.object_info import ObjectInfo
>>> info = ObjectInfo({"LoadImage": {"input": {"required": {"image": [["a.png"], {"image_upload": True}]}},
...                                  "output": ["IMAGE"]}})
>>> check_file_inputs({"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}, info, uploads=())
>>> check_file_inputs({"1": {"class_type": "LoadImage", "inputs": {"image": "Studio_00001_.png [output]"}}},
...                   None, uploads=())
Traceback (most recent call last):
...
comfy.errors.WorkflowError: Node 1 (LoadImage) names 'Studio_00001_.png [output]' for 'image', a file outside ComfyUI's input folder; with logins on, a workflow may load only the images sent with it or plain file names.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.object_info import ObjectInfo

__all__ = ["check_file_inputs"]

#: ComfyUI's folder annotation at the end of a file name: ``name [output]``, ``[temp]``, ``[input]``.
_ANNOTATION = re.compile(r"\[\w+\]\s*$")
#: ComfyUI's own file loaders, for when the server's object_info is not known yet: class -> (input, folder).
CORE_FILE_INPUTS = {"LoadImage": ("image", "input"), "LoadImageMask": ("image", "input"),
                    "LoadImageOutput": ("image", "output"), "LoadAudio": ("audio", "input"),
                    "LoadVideo": ("file", "input")}


def check_file_inputs(graph: Mapping[str, Any], info: ObjectInfo | None, *, uploads: Collection[str]) -> None:
    """Refuse an input that names a server file outside the input folder, in any node but ``uploads`` (the
    nodes whose images the job sends itself). Raises :class:`WorkflowError` naming the node."""
    for node_id, node in graph.items():
        if node_id in uploads or not isinstance(node, Mapping):
            continue
        class_type, inputs = node.get("class_type"), node.get("inputs")
        if not isinstance(class_type, str) or not isinstance(inputs, Mapping):
            continue
        for name, folder in _file_inputs(class_type, info):
            value = inputs.get(name)
            if not isinstance(value, str):
                continue
            where = f"Node {node_id} ({class_type})"
            if folder != "input":
                raise WorkflowError(f"{where} reads '{name}' from ComfyUI's {folder} folder, which holds every "
                                    "user's results; with logins on, load an image sent with the workflow instead.",
                                    field=f"node {node_id}")
            if _ANNOTATION.search(value) or "/" in value or "\\" in value or ".." in value:
                raise WorkflowError(f"{where} names {value!r} for '{name}', a file outside ComfyUI's input folder; "
                                    "with logins on, a workflow may load only the images sent with it or plain "
                                    "file names.", field=f"node {node_id}")


def _file_inputs(class_type: str, info: ObjectInfo | None) -> list[tuple[str, str]]:
    if info is not None and info.has(class_type):
        return [(spec.name, spec.file_folder) for spec in info.input_specs(class_type) if spec.file_folder]
    core = CORE_FILE_INPUTS.get(class_type)
    return [core] if core else []
