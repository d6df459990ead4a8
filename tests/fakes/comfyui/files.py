"""ComfyUI's input/, output/ and temp/ folders, in memory, and the PNGs SaveImage writes into them.

Imports nothing from the rest of the package.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field

from PIL import Image

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DEFAULT_SHAPE = (512, 512, 1)


@dataclass
class _StoredFile:
    data: bytes
    mtime: float = field(default_factory=time.time)
    _size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            try:
                with Image.open(io.BytesIO(self.data)) as img:
                    self._size = img.size
            except OSError:
                self._size = _DEFAULT_SHAPE[:2]
        return self._size

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _norm_subfolder(subfolder: str) -> str:
    normalized = posixpath.normpath(subfolder) if subfolder else ""
    return "" if normalized == "." else normalized


class _Files:
    """ComfyUI's input/, output/ and temp/ directories, in memory."""

    KINDS = ("input", "output", "temp")

    def __init__(self) -> None:
        self._files: dict[tuple[str, str, str], _StoredFile] = {}

    def get(self, kind: str, subfolder: str, name: str) -> _StoredFile | None:
        return self._files.get((kind, _norm_subfolder(subfolder), name))

    def put(self, kind: str, subfolder: str, name: str, data: bytes) -> None:
        self._files[(kind, _norm_subfolder(subfolder), name)] = _StoredFile(data)

    def names(self, kind: str) -> list[str]:
        return [posixpath.join(sub, name) for (k, sub, name) in self._files if k == kind]

    def wipe(self, kind: str) -> None:
        self._files = {key: f for key, f in self._files.items() if key[0] != kind}

    def next_counter(self, kind: str, subfolder: str, prefix: str) -> int:
        """folder_paths.get_save_image_path: one more than the highest ``<prefix>_NNNNN_`` present."""
        sub = _norm_subfolder(subfolder)
        counters = [0]
        for k, s, name in self._files:
            if k == kind and s == sub and name.startswith(prefix + "_"):
                digits = name[len(prefix) + 1 :].split("_")[0]
                if digits.isdigit():
                    counters.append(int(digits))
        return max(counters) + 1

    def resolve_image(self, value: str) -> _StoredFile | None:
        """folder_paths annotated paths: ``name``, ``sub/name``, ``name [input|output|temp]``."""
        kind, name = "input", value
        match = re.fullmatch(r"(.*) \[(input|output|temp)\]", value)
        if match:
            name, kind = match.group(1), match.group(2)
        subfolder, _, base = name.rpartition("/")
        return self.get(kind, subfolder, base)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


class _PngFactory:
    """RGB PNGs with SaveImage's chunk layout: IHDR, tEXt(prompt)[, tEXt(extra)...], IDAT, IEND.

    The pixel data (a gradient) is compressed once per size, so a 512x512 file costs a concatenation.
    """

    def __init__(self) -> None:
        self._bodies: dict[tuple[int, int, int], bytes] = {}
        self._lock = threading.Lock()

    def make(self, width: int, height: int, texts: list[tuple[str, str]], variant: int = 0) -> bytes:
        """``variant`` changes the pixels (batch items must not be byte-identical files)."""
        header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        text = b"".join(_png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")) for k, v in texts)
        return _PNG_SIGNATURE + header + text + self._body(width, height, variant % 16)

    def _body(self, width: int, height: int, variant: int) -> bytes:
        with self._lock:
            body = self._bodies.get((width, height, variant))
            if body is None:
                body = self._bodies[(width, height, variant)] = self._render(width, height, variant)
            return body

    @staticmethod
    def _render(width: int, height: int, variant: int) -> bytes:
        red = Image.linear_gradient("L").rotate(90).resize((width, height))
        green = Image.linear_gradient("L").resize((width, height))
        blue = Image.new("L", (width, height), (96 + 37 * variant) % 256)
        raw = Image.merge("RGB", (red, green, blue)).tobytes()
        stride = width * 3
        scanlines = b"".join(b"\x00" + raw[i : i + stride] for i in range(0, len(raw), stride))
        return _png_chunk(b"IDAT", zlib.compress(scanlines, 4)) + _png_chunk(b"IEND", b"")


def _expand_prefix(prefix: str, width: int, height: int) -> str:
    """The ``%width%``/``%height%``/``%date:...%`` variables of get_save_image_path (not node refs)."""
    if "%" not in prefix:
        return prefix
    now = time.localtime()
    values = {
        "width": str(width), "height": str(height), "year": str(now.tm_year),
        "month": f"{now.tm_mon:02}", "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}",
        "minute": f"{now.tm_min:02}", "second": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)

    def date(match: re.Match[str]) -> str:
        fmt = match.group(1)
        tokens = (("yyyy", "%Y"), ("yy", "%y"), ("MM", "%m"), ("dd", "%d"), ("hh", "%H"), ("mm", "%M"), ("ss", "%S"))
        for token, code in tokens:
            fmt = fmt.replace(token, code)
        return time.strftime(fmt, now)

    return re.sub(r"%date:([^%]+)%", date, prefix)


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Minimal multipart/form-data parser (field -> (filename, bytes)); python-multipart is not a dependency."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("multipart body without boundary")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + match.group(1).encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        disposition = next((line for line in lines if line.lower().startswith("content-disposition")), "")
        params = dict(re.findall(r'(\w+)="([^"]*)"', disposition))
        if "name" in params:
            fields[params["name"]] = (params.get("filename"), data.removesuffix(b"\r\n"))
    return fields
