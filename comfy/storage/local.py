"""Where finished images and uploaded inputs live.

:class:`OutputStore` is the small interface the worker writes through; :class:`LocalStore` keeps
files under the data folder and is always there (an S3 store uploads from it later). Writes are
atomic (temporary file, fsync, rename), so a crash never leaves half an image behind, and saving
the same output again overwrites it: re-running a recovered job's download is harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from comfy.errors import StorageError
from comfy.graph import pngmeta
from comfy.graph.pngmeta import METADATA_KEY

__all__ = ["StoredImage", "OutputStore", "LocalStore", "METADATA_KEY", "safe_name"]

#: The PNG text chunk holding the studio's own record of how an image was made.

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str) -> str:
    """Return ``name`` if it is one harmless path component; raise :class:`StorageError` otherwise."""
    if not _SAFE.match(name) or ".." in name:
        raise StorageError(f"{name!r} is not a valid file or job name.")
    return name


@dataclass(frozen=True)
class StoredImage:
    """One saved output file."""

    key: str  #: ``<job_id>/image_<n>.png``, relative to the outputs folder (and the S3 prefix later)
    path: str  #: the local file
    width: int | None
    height: int | None
    size: int
    content_type: str
    node_id: str | None = None
    source: str | None = None  #: the file name ComfyUI gave it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class OutputStore(Protocol):
    def save_output(self, job_id: str, index: int, data: bytes, *, metadata: dict[str, Any],
                    node_id: str | None = None, source: str | None = None) -> StoredImage: ...

    def save_input(self, data: bytes, *, suffix: str = ".png") -> Path: ...

    def read_input(self, path: str | Path) -> bytes: ...


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LocalStore:
    """Outputs under ``outputs_dir/<job_id>/``; init images under ``inputs_dir``, named by content."""

    def __init__(self, outputs_dir: Path, inputs_dir: Path) -> None:
        self.outputs_dir = Path(outputs_dir)
        self.inputs_dir = Path(inputs_dir)

    def path_for(self, key: str) -> Path:
        """The local file of an output key; raises :class:`StorageError` if the key escapes the folder."""
        parts = key.split("/")
        if len(parts) != 2:
            raise StorageError(f"{key!r} is not an output key.")
        return self.outputs_dir / safe_name(parts[0]) / safe_name(parts[1])

    def save_output(self, job_id: str, index: int, data: bytes, *, metadata: dict[str, Any],
                    node_id: str | None = None, source: str | None = None) -> StoredImage:
        """Save one output, with the studio's metadata added to PNGs. Raises :class:`StorageError`."""
        is_png = pngmeta.is_png(data)
        if is_png:
            params = metadata.get("params") or {}
            texts = {METADATA_KEY: json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)}
            if params.get("prompt") is not None:
                texts["parameters"] = pngmeta.a1111_parameters(params)
            data = pngmeta.add_text_chunks(data, texts)
        suffix = ".png" if is_png else Path(source or "").suffix.lower() or ".bin"
        key = f"{safe_name(job_id)}/image_{index}{suffix}"
        path = self.path_for(key)
        try:
            _atomic_write(path, data)
        except OSError as exc:
            raise StorageError(f"Could not save {path}: {exc.strerror or exc}.") from exc
        size = pngmeta.png_size(data) if is_png else None
        return StoredImage(
            key=key, path=str(path), width=size[0] if size else None, height=size[1] if size else None,
            size=len(data), content_type="image/png" if is_png else _content_type(suffix),
            node_id=node_id, source=source,
        )

    def save_input(self, data: bytes, *, suffix: str = ".png") -> Path:
        """Keep an uploaded init image (deduplicated by content) so a job can be re-run after a restart."""
        path = self.inputs_dir / f"{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
        if path.exists():
            with contextlib.suppress(OSError):
                os.utime(path)  # used again: retention counts from the last use
        else:
            try:
                _atomic_write(path, data)
            except OSError as exc:
                raise StorageError(f"Could not keep the uploaded image: {exc.strerror or exc}.") from exc
        return path

    def read_input(self, path: str | Path) -> bytes:
        """A kept input by its name (what jobs record) or, for jobs stored by older versions, its path."""
        resolved = (self.inputs_dir / path if Path(path).name == str(path) else Path(path)).resolve()
        if self.inputs_dir.resolve() not in resolved.parents:
            raise StorageError(f"{path} is not a kept input image.")
        try:
            return resolved.read_bytes()
        except OSError as exc:
            raise StorageError(f"The job's input image {path} is missing: {exc.strerror or exc}.") from exc


def _content_type(suffix: str) -> str:
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
            ".mp4": "video/mp4", ".webm": "video/webm"}.get(suffix, "application/octet-stream")
