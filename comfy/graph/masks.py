"""Inpainting masks: checked against the init image, and the "only masked" region worked out as A1111 does.

A mask is a PNG the size of the init image, white where the image is to be repainted. For "only masked"
(``inpaint_full_res``) the repainted area is the mask's bounding box plus ``inpaint_padding``, widened to
the aspect ratio of the generation size, then sampled at that full size and pasted back.

>>> region = Region(10, 20, 100, 50)
>>> region.as_tuple()
(10, 20, 100, 50)
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from comfy.errors import WorkflowError

__all__ = ["Region", "image_size", "check_mask", "masked_region"]


@dataclass(frozen=True)
class Region:
    """A rectangle of the init image, in pixels."""

    x: int
    y: int
    width: int
    height: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


def _open(data: bytes, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise WorkflowError(f"{field} is not a readable image ({exc}); send a PNG.", field=field) from None


def image_size(data: bytes, field: str = "init_image") -> tuple[int, int]:
    """Width and height of an encoded image; :class:`WorkflowError` if it cannot be read."""
    return _open(data, field).size


def check_mask(mask: bytes, init_image: bytes) -> None:
    """Refuse a mask that is not a PNG the size of the init image, or that masks nothing."""
    if mask[:8] != b"\x89PNG\r\n\x1a\n":
        raise WorkflowError("The mask must be a PNG (white = repaint, black = keep).", field="mask")
    mask_image = _open(mask, "mask")
    width, height = image_size(init_image)
    if mask_image.size != (width, height):
        raise WorkflowError(f"The mask is {mask_image.size[0]}×{mask_image.size[1]} but the init image is "
                            f"{width}×{height}; draw the mask on the same image, at its size.", field="mask")
    if _mask_l(mask_image).getbbox() is None:
        raise WorkflowError("The mask is all black, so nothing would be repainted; paint in white what should "
                            "change.", field="mask")


def _mask_l(image: Image.Image) -> Image.Image:
    # The builder reads the red channel (LoadImageMask, channel "red"); so does this.
    return image.convert("RGB").getchannel("R") if image.mode != "L" else image


def masked_region(mask: bytes, padding: int, width: int, height: int) -> Region:
    """The area "only masked" repaints: the mask's box plus ``padding``, at the aspect of width × height.

    As A1111's ``get_crop_region`` and ``expand_crop_region``: kept inside the image.

    >>> import io; from PIL import Image
    >>> m = Image.new("L", (512, 512)); m.paste(255, (200, 200, 260, 240)); buf = io.BytesIO(); m.save(buf, "PNG")
    >>> masked_region(buf.getvalue(), 32, 512, 512)
    Region(x=168, y=158, width=124, height=124)
    """
    image = _mask_l(_open(mask, "mask"))
    box = image.getbbox()
    if box is None:
        raise WorkflowError("The mask is all black, so nothing would be repainted.", field="mask")
    full_w, full_h = image.size
    x1, y1 = max(box[0] - padding, 0), max(box[1] - padding, 0)
    x2, y2 = min(box[2] + padding, full_w), min(box[3] + padding, full_h)
    # widen the short side to the generation's aspect ratio, centred, shifted back inside the image
    ratio = width / height
    box_w, box_h = x2 - x1, y2 - y1
    if box_w / box_h < ratio:
        x1, x2 = _grow(x1, x2, round(box_h * ratio), full_w)
    else:
        y1, y2 = _grow(y1, y2, round(box_w / ratio), full_h)
    return Region(x1, y1, x2 - x1, y2 - y1)


def _grow(low: int, high: int, wanted: int, limit: int) -> tuple[int, int]:
    wanted = min(wanted, limit)
    extra = wanted - (high - low)
    low -= extra // 2
    high += extra - extra // 2
    if low < 0:
        high, low = high - low, 0
    if high > limit:
        low, high = max(low - (high - limit), 0), limit
    return low, high
