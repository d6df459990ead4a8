"""Saved workflows: an artist's API-format workflows kept under the data folder for reuse."""

from __future__ import annotations

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
    """``<data>/workflows/<name>.json``; names are what the artist typed, checked to be plain file names."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        name = name.strip()
        if not _NAME.match(name) or name.startswith("."):
            raise WorkflowError(
                "Give the workflow a name of letters, digits, spaces, '.', '-', '+', '(', ')' (at most 80).",
                field="name",
            )
        return self.directory / f"{name}.json"

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.json"))

    def save(self, name: str, graph: dict[str, Any]) -> str:
        """Keep ``graph`` (checked to be an API-format workflow) under ``name``, replacing an older one."""
        path = self._path(name)
        checked = workflows.parse_workflow(graph)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(checked, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        return path.stem

    def load(self, name: str) -> dict[str, Any]:
        path = self._path(name)
        try:
            return workflows.parse_workflow(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkflowError(f"There is no saved workflow called {name!r}.", field="name") from None

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
