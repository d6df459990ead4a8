"""Uploaded images checked before a graph uses them: readable, not a decompression bomb, within the size limits.

A PNG's header says its size before a single pixel is inflated, so a 48 KB file claiming 20000×20000 is
refused from its header. An image larger than the limits is scaled down (keeping its aspect ratio) and
the caller is told, so the run never goes past ``STUDIO_MAX_WIDTH`` × ``STUDIO_MAX_HEIGHT``. This is
CPU work: async callers run :func:`fit_image` in a thread.
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from comfy.errors import WorkflowError
from comfy.graph import pngmeta

__all__ = ["FittedImage", "MAX_DECODE_PIXELS", "fit_image"]

#: The most pixels an upload may have at all (a 61 MP camera fits; a 20000×20000 bomb does not).
#: Decoding one costs about 4 bytes a pixel, so this bounds the memory one upload can take.
MAX_DECODE_PIXELS = 64_000_000
_ORIENTATION = 0x0112  # the EXIF tag
#: Pixels decoded at once in this process. Each costs ~4 bytes, and a small file may hold many (a flat 64 MP
#: PNG is 200 KB), so uploads decode side by side only while their pixels fit in this together.
DECODE_BUDGET_PIXELS = MAX_DECODE_PIXELS


class _PixelBudget:
    """Decodes wait until their pixels fit in the budget; one alone always may (up to MAX_DECODE_PIXELS)."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self._used = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def take(self, pixels: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._used == 0 or self._used + pixels <= self.pixels)
            self._used += pixels
        try:
            yield
        finally:
            with self._changed:
                self._used -= pixels
                self._changed.notify_all()


_budget = _PixelBudget(DECODE_BUDGET_PIXELS)


@dataclass(frozen=True)
class FittedImage:
    """The image to keep (PNG bytes, or the upload unchanged when it already fitted) and its size."""

    data: bytes
    width: int
    height: int
    #: The upload's own size when it was scaled down, else None.
    scaled_from: tuple[int, int] | None = None

    @property
    def note(self) -> str | None:
        """A sentence for the user when the image was changed."""
        if self.scaled_from is None:
            return None
        w, h = self.scaled_from
        return f"The image was {w}×{h}; it was scaled down to {self.width}×{self.height} to fit the size limits."


def fit_image(data: bytes, *, max_width: int, max_height: int, max_bytes: int, multiple: int = 1,
              field: str = "image") -> FittedImage:
    """Check an uploaded image and fit it inside ``max_width`` × ``max_height`` (each side a multiple of
    ``multiple``, for a latent). Raises :class:`WorkflowError` naming ``field`` with what to fix."""
    if len(data) > max_bytes:
        raise WorkflowError(f"The image is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB.",
                            field=field)
    with _readable(data, field):
        width, height = _checked_size(data, field)
    with _budget.take(width * height), _readable(data, field):  # from decoding to the PNG written
        return _fit(data, width, height, max_width, max_height, multiple)


@contextlib.contextmanager
def _readable(data: bytes, field: str) -> Iterator[None]:
    """Pillow's complaints about an upload, as the sentence the user reads."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            yield
    except WorkflowError:
        raise
    except Image.DecompressionBombError as exc:  # so large that Pillow refuses to open it at all
        size = pngmeta.png_size(data) if pngmeta.is_png(data) else None
        if size is not None:
            _refuse_bombs(*size, field)
        raise WorkflowError(f"The image has more than {MAX_DECODE_PIXELS / 1e6:.0f} megapixels, the largest "
                            "accepted. Scale it down and upload it again.", field=field) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise WorkflowError("The uploaded file is not an image that can be read (PNG, JPEG or WebP).",
                            field=field) from exc


def _checked_size(data: bytes, field: str) -> tuple[int, int]:
    """The upload's size from its header, bombs refused, the file checked without decoding its pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as probe:
        width, height = probe.size
        _refuse_bombs(width, height, field)
        probe.verify()
    return width, height


@functools.cache
def _pixels_in_large_blocks() -> None:
    """Pillow keeps a large image in blocks; blocks above glibc's largest mmap threshold (32 MB) are mapped
    apart and go back to the system when freed, rather than staying in each decoding thread's heap (four
    64 MP uploads took 1.2 GB for good with 16 MB blocks, 0.4 GB with these)."""
    from PIL import Image

    Image.core.set_block_size(64 * 1024 * 1024)


def _fit(data: bytes, width: int, height: int, max_width: int, max_height: int, multiple: int) -> FittedImage:
    from PIL import Image, ImageOps

    _pixels_in_large_blocks()
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG" and _fitted_size(width, height, max_width, max_height, 1) != (width, height):
        # Decode a large JPEG at 1/2, 1/4 or 1/8 scale, still at least the size it is fitted to.
        side = max(max_width, max_height)
        img.draft("RGB", (min(width, side), min(height, side)))
    img.load()
    orientation = img.getexif().get(_ORIENTATION, 1)
    turned = orientation not in (None, 1)
    # A phone photo's width is its width as shown, after its EXIF rotation.
    image = ImageOps.exif_transpose(img) if turned else img
    if orientation in (5, 6, 7, 8):  # a quarter turn: the sides swap
        width, height = height, width
    new_w, new_h = _fitted_size(width, height, max_width, max_height, multiple)  # from the upload's own size
    if (new_w, new_h) == (width, height) and not turned:
        return FittedImage(data, width, height)
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P"):  # CMYK, 16-bit...: what a PNG can hold
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    if (new_w, new_h) != image.size:  # the decoded size (a JPEG's draft may already be smaller)
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "PNG")
    scaled = (width, height) if (new_w, new_h) != (width, height) else None
    return FittedImage(out.getvalue(), new_w, new_h, scaled)


def _refuse_bombs(width: int, height: int, field: str) -> None:
    if width * height > MAX_DECODE_PIXELS:
        raise WorkflowError(
            f"The image is {width}×{height} ({width * height / 1e6:.0f} megapixels); the largest accepted is "
            f"{MAX_DECODE_PIXELS / 1e6:.0f} megapixels. Scale it down and upload it again.", field=field)


def _fitted_size(width: int, height: int, max_width: int, max_height: int, multiple: int) -> tuple[int, int]:
    """The largest size with the image's aspect ratio inside the limits, each side a multiple of ``multiple``.

    >>> _fitted_size(4032, 3024, 2048, 2048, 8)
    (2048, 1536)
    >>> _fitted_size(640, 480, 2048, 2048, 8)
    (640, 480)
    """
    scale = min(1.0, max_width / width, max_height / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if multiple > 1:
        new_w = max(multiple, new_w - new_w % multiple)
        new_h = max(multiple, new_h - new_h % multiple)
    return new_w, new_h
