"""The shape of the house, checked: two doors over one engine, rooms by concept, what each room may import.

The README's design notes draw the same map. These tests read the source with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SOURCES = ("comfy", "api", "ui", "tests", "bench")
WEB_FRAMEWORKS = ("gradio", "fastapi", "starlette", "uvicorn")
MAX_LINES = 600
MAX_ENGINE_TOP_MODULES = 12

#: What each room of the engine may import at module level, besides the standard library and third parties.
#: A module matches the longest prefix listed. ``comfy.errors`` is open to all.
ALLOWED: dict[str, tuple[str, ...]] = {
    "comfy.errors": (),
    "comfy.auth": ("comfy.ratelimit",),
    "comfy.ratelimit": (),
    "comfy.settings": (),
    "comfy.graph": ("comfy.graph",),
    "comfy.jobs": ("comfy.jobs.records", "comfy.jobs.leases", "comfy.jobs.layout", "comfy.jobs.queue",
                   "comfy.jobs.events", "comfy.jobs.store", "comfy.jobs.redis_scripts", "comfy.jobs.redis_store",
                   "comfy.jobs.redis_batch", "comfy.jobs.grid_records", "comfy.jobs.redis_wire"),
    "comfy.jobs.worker": ("comfy.jobs", "comfy.backends", "comfy.storage", "comfy.graph"),
    "comfy.jobs.cluster": ("comfy.jobs",),  # one process joined to the others: bridge, presence, store
    "comfy.storage": ("comfy.storage", "comfy.graph", "comfy.jobs.records", "comfy.jobs.leases", "comfy.jobs.queue"),
    "comfy.backends": ("comfy.backends", "comfy.graph", "comfy.storage.local", "comfy.jobs.records"),
    "comfy.service": ("comfy",),
    "comfy.cli": ("comfy",),
    "comfy": ("comfy",),  # the package's __init__ re-exports the public API; __main__ runs the CLI
    "api": ("comfy", "api"),
    "ui": ("comfy", "ui"),
}


def python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements that run at import: the module's, and those inside its ``try``/``if`` blocks, but not
    ``if TYPE_CHECKING:`` (never run)."""
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _module_level(node.orelse)
        elif isinstance(node, (ast.If, ast.Try)):
            yield from _module_level(node.body + node.orelse + getattr(node, "finalbody", [])
                                     + [n for h in getattr(node, "handlers", []) for n in h.body])
        else:
            yield node


def imports(path: Path, *, module_level_only: bool) -> Iterator[str]:
    """Absolute names of what a file imports (relative imports resolved against the file's package)."""
    tree = ast.parse(path.read_text())
    nodes = _module_level(tree.body) if module_level_only else ast.walk(tree)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield from (f"{base}.{alias.name}" for alias in node.names)  # a module, or a name in one


def internal(name: str, known: set[str]) -> str | None:
    """The project module an import names (``from comfy.graph import pngmeta`` names comfy.graph.pngmeta)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def test_no_source_file_is_over_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in [*python_files(*SOURCES), ROOT / "app.py"]
            if (n := p.read_text().count("\n")) > MAX_LINES}
    assert long == {}


def test_the_engine_has_at_most_12_top_level_modules_and_its_rooms() -> None:
    top = sorted(p.name for p in (ROOT / "comfy").glob("*.py"))
    assert len(top) <= MAX_ENGINE_TOP_MODULES, top
    rooms = sorted(p.name for p in (ROOT / "comfy").iterdir() if (p / "__init__.py").exists())
    assert rooms == ["backends", "graph", "jobs", "storage"]


@pytest.mark.parametrize("package", ["comfy", "comfy/jobs", "comfy/backends", "comfy/graph", "comfy/storage",
                                     "api", "ui", "tests/fakes", "tests/fakes/comfyui"])
def test_every_package_says_what_lives_there(package: str) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring and len(docstring.split()) >= 8, f"{package}/__init__.py needs a docstring saying what lives there"


def test_the_engine_imports_no_door_and_no_web_framework() -> None:
    offenders = {}
    for path in python_files("comfy"):
        bad = sorted({name for name in imports(path, module_level_only=False)
                      if name.split(".")[0] in (*WEB_FRAMEWORKS, "api", "ui")})
        if bad:
            offenders[module_name(path)] = bad
    assert offenders == {}


def rule_for(module: str) -> tuple[str, ...]:
    prefix = max((p for p in ALLOWED if module == p or module.startswith(p + ".")), key=len)
    return ALLOWED[prefix]


def project_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in python_files("comfy", "api", "ui")}
    known = set(paths)
    return {name: {target for imported in imports(path, module_level_only=True)
                   if (target := internal(imported, known)) and target != name}
            for name, path in paths.items()}


def test_each_room_imports_only_what_it_may() -> None:
    offenders = {}
    for module, targets in project_graph().items():
        allowed = rule_for(module)
        bad = sorted(t for t in targets if t != "comfy.errors" and t.split(".")[0] in ("comfy", "api", "ui")
                     and not any(t == a or t.startswith(a + ".") for a in allowed)
                     and not (t in ("comfy", "comfy.graph") and module.startswith(("api", "ui"))))
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_no_import_cycles() -> None:
    edges = project_graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == []
