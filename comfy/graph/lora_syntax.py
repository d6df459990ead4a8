"""AUTOMATIC1111's ``<lora:name:weight>`` in a prompt: read out into LoRAs, and written back.

A1111 accepts ``<lora:name>`` (weight 1), ``<lora:name:0.8>`` (both model and text encoder),
``<lora:name:te:unet>`` (text encoder first, then the model) and the named ``te=`` / ``unet=``; ``<lyco:...>``
is the same. The name is the file name, usually without its extension; the builder matches it to a file.

>>> extract_loras("a fox, <lora:detail:0.8> in snow")
('a fox, in snow', [Lora(name='detail', strength=0.8, strength_clip=None)])
>>> extract_loras("<lora:style:0.5:1.2>portrait")
('portrait', [Lora(name='style', strength=1.2, strength_clip=0.5)])
>>> lora_tag(Lora("styles/ink.safetensors", 0.7))
'<lora:styles/ink:0.7>'
"""

from __future__ import annotations

import re

from comfy.errors import WorkflowError
from comfy.graph.features import Lora

__all__ = ["extract_loras", "lora_tag", "with_lora_tags", "MODEL_EXTENSIONS"]

_TAG = re.compile(r"<(?:lora|lyco):([^>]*)>", re.IGNORECASE)
#: Extensions A1111 leaves out of a LoRA's name in the prompt.
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def extract_loras(prompt: str) -> tuple[str, list[Lora]]:
    """The prompt without its LoRA tags, and the LoRAs they ask for (in prompt order).

    Raises :class:`WorkflowError` (field ``prompt``) for a tag whose weight is not a number.
    """
    loras: list[Lora] = []

    def take(match: re.Match[str]) -> str:
        loras.append(_parse_tag(match.group(1), match.group(0)))
        return ""

    text = _TAG.sub(take, prompt)
    if not loras:
        return prompt, []
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+,", ",", text)
    text = re.sub(r",(\s*,)+", ",", text)
    return text.strip().strip(",").strip(), loras


def _parse_tag(body: str, tag: str) -> Lora:
    parts = [p.strip() for p in body.split(":")]
    name, args = parts[0], parts[1:]
    if not name:
        raise WorkflowError(f"{tag} has no LoRA name; write it as <lora:name:0.8>.", field="prompt")
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    try:
        te = float(positional[0]) if positional else 1.0
        te = float(named.get("te", te))
        unet = float(positional[1]) if len(positional) > 1 else te
        unet = float(named.get("unet", unet))
    except ValueError:
        raise WorkflowError(f"{tag}: the weight must be a number, as in <lora:{name}:0.8>.", field="prompt") from None
    return Lora(name, unet, None if te == unet else te)


def lora_tag(lora: Lora) -> str:
    """The A1111 tag for one LoRA (its file name without the extension)."""
    name = lora.name
    for extension in MODEL_EXTENSIONS:
        if name.lower().endswith(extension):
            name = name[: -len(extension)]
            break
    if lora.strength_clip is None or lora.strength_clip == lora.strength:
        return f"<lora:{name}:{_num(lora.strength)}>"
    return f"<lora:{name}:{_num(lora.strength_clip)}:{_num(lora.strength)}>"


def with_lora_tags(prompt: str, loras: list[Lora]) -> str:
    """The prompt with a tag per LoRA appended, as A1111 writes it in its ``parameters`` text."""
    tags = " ".join(lora_tag(lora) for lora in loras)
    return f"{prompt} {tags}".strip() if tags else prompt


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
