"""PNG text chunks, read and written without re-encoding the image.

ComfyUI's SaveImage writes ``tEXt`` chunks ``prompt`` (and ``workflow``) before the first ``IDAT``.
The studio adds its own chunk beside them, plus AUTOMATIC1111's ``parameters`` line so other tools
(PNG Info tabs, image sites) read the settings too. The pixels are never touched: the saved file is
the PNG ComfyUI produced, byte for byte, with chunks inserted.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from comfy.errors import WorkflowError
from comfy.graph.features import LATENT_UPSCALER, hires_of, loras_of
from comfy.graph.lora_syntax import with_lora_tags

__all__ = ["METADATA_KEY", "PNG_SIGNATURE", "is_png", "read_text_chunks", "add_text_chunks", "png_size", "a1111_parameters"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: The keyword of the studio's own text chunk: the job's settings as JSON.
METADATA_KEY = "comfyui_studio"

#: Limits on inflating compressed text chunks: per chunk, and for all the chunks of one file.
MAX_TEXT_BYTES = 16 * 1024 * 1024
MAX_TOTAL_TEXT_BYTES = 64 * 1024 * 1024


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_SIGNATURE


def _chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        yield pos, kind, body, pos + 12 + length
        if kind == b"IEND":
            return
        pos += 12 + length


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the IHDR chunk, or None if ``data`` is not a PNG."""
    if not is_png(data) or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


def read_text_chunks(data: bytes, *, too_large: list[str] | None = None) -> dict[str, str]:
    """Every ``tEXt``, ``zTXt`` and ``iTXt`` chunk as keyword → text (a later chunk of a keyword wins, as in PIL).

    Compressed chunks are inflated to at most :data:`MAX_TEXT_BYTES` each and :data:`MAX_TOTAL_TEXT_BYTES`
    in all, so a small PNG cannot become gigabytes of text (a zip bomb). A chunk past the limit is
    skipped (its keyword is added to ``too_large`` when a list is given), and so is a damaged one
    (a bad or truncated zlib stream); the others are kept. A truncated file gives the chunks read so far.

    >>> png = add_text_chunks(_tiny_png(), {"hello": "wörld"})
    >>> read_text_chunks(png)
    {'hello': 'wörld'}
    >>> bomb = _tiny_png_with(_chunk(b"zTXt", b"big\\0\\0" + zlib.compress(b"x" * (MAX_TEXT_BYTES + 1))))
    >>> skipped = []
    >>> read_text_chunks(bomb, too_large=skipped), skipped
    ({}, ['big'])
    """
    texts: dict[str, str] = {}
    if not is_png(data):
        return texts
    budget = [MAX_TOTAL_TEXT_BYTES]
    for start, kind, body, _end in _chunks(data):
        if len(body) < struct.unpack_from(">I", data, start)[0]:
            break  # truncated inside this chunk's data: keep what was read so far
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            keyword, text = _text_of(kind, body, budget, too_large)
            if keyword and text is not None:
                texts[keyword] = text
    return texts


def _text_of(kind: bytes, body: bytes, budget: list[int], too_large: list[str] | None) -> tuple[str, str | None]:
    keyword, _, rest = body.partition(b"\0")
    try:
        if kind == b"tEXt":
            return keyword.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return keyword.decode("latin-1"), _inflate(rest[1:], budget).decode("latin-1")
        compressed, rest = rest[:1] == b"\1", rest[2:]
        _language, _, rest = rest.partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        return keyword.decode("latin-1"), (_inflate(text, budget) if compressed else text).decode("utf-8")
    except _TooLarge:
        if too_large is not None:
            too_large.append(keyword.decode("latin-1"))
        return keyword.decode("latin-1"), None
    except (zlib.error, UnicodeDecodeError, IndexError):
        return keyword.decode("latin-1"), None  # one damaged chunk must not hide the others


class _TooLarge(Exception):
    """A compressed chunk inflates past the limits."""


def _inflate(data: bytes, budget: list[int]) -> bytes:
    limit = min(MAX_TEXT_BYTES, budget[0])
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit + 1)  # bounded: never more than the limit in memory
    if len(out) > limit or inflater.unconsumed_tail:
        raise _TooLarge
    if not inflater.eof:
        raise zlib.error("truncated zlib stream")
    budget[0] -= len(out)
    return out


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _text_chunk(key: str, value: str) -> bytes:
    keyword = key.encode("latin-1")[:79]
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # tEXt is Latin-1 only; iTXt carries UTF-8
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


def add_text_chunks(data: bytes, texts: dict[str, str]) -> bytes:
    """Insert text chunks before the first IDAT; a chunk of the same keyword is replaced."""
    if not is_png(data):
        raise ValueError("not a PNG file")
    keys = {k.encode("latin-1")[:79] for k in texts}
    out = [PNG_SIGNATURE]
    inserted = False
    for start, kind, body, end in _chunks(data):
        if kind in (b"tEXt", b"iTXt", b"zTXt") and body.partition(b"\0")[0] in keys:
            continue
        if kind == b"IDAT" and not inserted:
            out.extend(_text_chunk(k, v) for k, v in texts.items())
            inserted = True
        out.append(data[start:end])
    if not inserted:
        raise ValueError("PNG has no image data")
    return b"".join(out)


def a1111_parameters(params: dict[str, Any]) -> str:
    """The ``parameters`` text AUTOMATIC1111 writes, so its PNG Info (and image sites) can read ours.

    The toolbox's fields are written as A1111 does: LoRAs as ``<lora:name:weight>`` in the prompt,
    ``Hires upscale`` / ``Hires steps`` / ``Hires upscaler`` with the hires pass's ``Denoising strength``,
    ``Mask blur``, ``VAE``, and the styles as ``Style`` (Forge's ``Distilled CFG Scale`` for Flux guidance).

    >>> print(a1111_parameters({"prompt": "a fox", "seed": 1, "loras": [{"name": "ink.safetensors", "strength": 0.5}],
    ...                         "hires": {"scale": 2, "denoise": 0.4}, "styles": ["Cinematic", "Enhance"]}))
    a fox <lora:ink:0.5>
    Seed: 1, Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: Latent, Style: "Cinematic, Enhance"
    """
    prompt = str(params.get("prompt") or "")
    try:
        prompt = with_lora_tags(prompt, loras_of(params.get("loras")))
        hires = hires_of(params.get("hires"))
    except WorkflowError:  # a malformed record still gets its plain settings written
        hires = None
    lines = [prompt]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    denoise = params.get("denoise") if params.get("init_image") else hires.denoise if hires else None
    styles = params.get("styles")
    fields = [
        ("Steps", params.get("steps")), ("Sampler", params.get("sampler")),
        ("Schedule type", params.get("scheduler")), ("CFG scale", params.get("cfg")),
        ("Distilled CFG Scale", params.get("guidance")),
        ("Seed", params.get("seed")), ("Size", f"{params.get('width')}x{params.get('height')}"
                                        if params.get("width") else None),
        ("Model", params.get("checkpoint")), ("VAE", _quote(params.get("vae"))),
        ("Denoising strength", denoise),
        ("Mask blur", params.get("mask_blur", 4) if params.get("mask") else None),
        ("Inpaint area", "Only masked" if params.get("mask") and params.get("inpaint_full_res") else None),
        ("Masked area padding", params.get("inpaint_padding", 32) if params.get("mask") and
         params.get("inpaint_full_res") else None),
        ("Hires upscale", _number(hires.scale) if hires else None),
        ("Hires steps", hires.steps if hires else None),
        ("Hires upscaler", ("Latent" if hires.upscaler == LATENT_UPSCALER else _quote(hires.upscaler))
         if hires else None),
        ("Style", _quote(", ".join(map(str, styles))) if isinstance(styles, list) and styles else None),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in fields if v is not None))
    return "\n".join(lines)


def _quote(text: Any) -> Any:
    """A1111's ``quote``: a value holding a comma, colon or newline is written as a JSON string."""
    if not isinstance(text, str) or not any(c in text for c in ",:\n\""):
        return text
    return json.dumps(text, ensure_ascii=False)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _tiny_png_with(*chunks: bytes) -> bytes:
    png = _tiny_png()
    return png[:-12] + b"".join(chunks) + png[-12:]


def _tiny_png() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0\0")) + _chunk(b"IEND", b"")
