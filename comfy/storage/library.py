"""Saved workflows: an artist's API-format workflows kept under the data folder for reuse.

Without logins there is one shared library. With logins each user saves into a folder of their own,
so nobody can overwrite another user's workflow; the shared ones (saved before logins were turned on)
stay readable by everyone, and a user's own workflow of the same name comes first for that user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from comfy import graph as workflows
from comfy.errors import WorkflowError

__all__ = ["WorkflowLibrary"]

_NAME = re.compile(r"^[\w][\w .()+-]{0,79}$")


class WorkflowLibrary:
    """``<data>/workflows/<name>.json`` (shared) and ``<data>/workflows/users/<owner>/<name>.json`` (a
    user's own); names are what the artist typed, checked to be plain file names."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _folder(self, owner: str | None) -> Path:
        if owner is None:
            return self.directory
        # Readable, and unique even for names that differ only in characters a file name cannot hold.
        slug = re.sub(r"[^\w.-]", "_", owner)[:40].lstrip(".") or "user"
        return self.directory / "users" / f"{slug}-{hashlib.sha256(owner.encode()).hexdigest()[:12]}"

    def _path(self, name: str, owner: str | None = None) -> Path:
        name = name.strip()
        if not _NAME.match(name) or name.startswith("."):
            raise WorkflowError(
                "Give the workflow a name of letters, digits, spaces, '.', '-', '+', '(', ')' (at most 80).",
                field="name",
            )
        return self._folder(owner) / f"{name}.json"

    def names(self, owner: str | None = None) -> list[str]:
        """The workflows ``owner`` may load: their own and the shared ones."""
        folders = {self.directory} | ({self._folder(owner)} if owner is not None else set())
        return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.json")})

    def save(self, name: str, graph: dict[str, Any], owner: str | None = None) -> str:
        """Keep ``graph`` (checked to be an API-format workflow) under ``name`` in ``owner``'s library,
        replacing an older one of theirs (never anyone else's)."""
        path = self._path(name, owner)
        checked = workflows.parse_workflow(graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(checked, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return path.stem

    def load(self, name: str, owner: str | None = None) -> dict[str, Any]:
        """``owner``'s own workflow of that name, else the shared one."""
        for path in dict.fromkeys([self._path(name, owner), self._path(name)]):
            try:
                return workflows.parse_workflow(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
        raise WorkflowError(f"There is no saved workflow called {name!r}.", field="name")

    def delete(self, name: str, owner: str | None = None) -> None:
        self._path(name, owner).unlink(missing_ok=True)
