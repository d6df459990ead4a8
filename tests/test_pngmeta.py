"""PNG text chunks: one reader for the whole studio, bounded, forgiving of damage, strict about size."""

from __future__ import annotations

import struct
import zlib

import pytest

from comfy.errors import WorkflowError
from comfy.graph import pngmeta, workflow_from_png
from comfy.graph.pngmeta import MAX_TEXT_BYTES, _chunk, _tiny_png


def png_with(*chunks: bytes) -> bytes:
    png = _tiny_png()
    return png[:-12] + b"".join(chunks) + png[-12:]  # before IEND


def ztxt(key: str, text: bytes) -> bytes:
    return _chunk(b"zTXt", key.encode() + b"\0\0" + zlib.compress(text))


def test_a_later_chunk_of_a_keyword_wins_as_in_pil() -> None:
    png = png_with(_chunk(b"tEXt", b"parameters\0old"), _chunk(b"tEXt", b"parameters\0edited"))
    assert pngmeta.read_text_chunks(png) == {"parameters": "edited"}


def test_a_truncated_zlib_stream_is_skipped_not_half_read() -> None:
    cut = _chunk(b"zTXt", b"broken\0\0" + zlib.compress(b"hello world " * 50)[:20])
    assert pngmeta.read_text_chunks(png_with(cut, _chunk(b"tEXt", b"ok\0yes"))) == {"ok": "yes"}


def test_a_zip_bomb_is_never_inflated_past_the_limit() -> None:
    skipped: list[str] = []
    bomb = png_with(ztxt("prompt", b"{" + b" " * (MAX_TEXT_BYTES + 10) + b"}"))
    assert len(bomb) < 100_000  # a small file...
    assert pngmeta.read_text_chunks(bomb, too_large=skipped) == {} and skipped == ["prompt"]
    with pytest.raises(WorkflowError, match="larger than 16 MB"):  # ...refused with its own sentence
        workflow_from_png(bomb)


def test_a_file_cut_inside_a_chunk_keeps_the_chunks_before_it() -> None:
    whole = png_with(_chunk(b"tEXt", b"first\0one"), _chunk(b"tEXt", b"second\0two"))
    cut_at = whole.index(b"second") + 3
    assert pngmeta.read_text_chunks(whole[:cut_at]) == {"first": "one"}


def test_the_studio_chunk_round_trips_through_add_and_read() -> None:
    png = pngmeta.add_text_chunks(_tiny_png(), {pngmeta.METADATA_KEY: '{"seed": 1}', "parameters": "a cat"})
    assert pngmeta.read_text_chunks(png) == {pngmeta.METADATA_KEY: '{"seed": 1}', "parameters": "a cat"}
    assert struct.unpack(">II", png[16:24]) == (1, 1)
