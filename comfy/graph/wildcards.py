"""Wildcards: ``__name__`` takes a line of ``wildcards/name.txt``, ``{a|b|c}`` picks one of its options.

Every choice is drawn from the image's seed (a hash, not Python's ``random``), so the same prompt and
seed always expand to the same text: a retry or "use these settings" makes the same image. Options and
wildcard lines may hold more wildcards and choices (nested); a wildcard that leads back to itself is
refused with a sentence rather than looping. Lines that are empty or start with ``#`` are skipped.

>>> expand("a {red|blue|green} fox", 7) == expand("a {red|blue|green} fox", 7)
True
>>> expand("a {red|blue|green} fox", 7) in ("a red fox", "a blue fox", "a green fox")
True
>>> expand("no wildcards here", 1)
'no wildcards here'
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from comfy.errors import WorkflowError

__all__ = ["SHIPPED_WILDCARDS", "expand", "has_wildcards", "list_wildcards"]

#: The wildcard files that come with the studio.
SHIPPED_WILDCARDS = Path(__file__).resolve().parents[2] / "wildcards"
_MAX_DEPTH = 24
_MAX_OUTPUT = 100_000
_NAME = re.compile(r"^[\w][\w\- ./]*$")
_WILDCARD = re.compile(r"__([\w][\w\- ./]*?)__")
_PLAIN = re.compile(r"[^{_]+")


def has_wildcards(text: str) -> bool:
    """True when the text uses ``__name__`` or ``{a|b}``."""
    return bool(_WILDCARD.search(text) or re.search(r"\{[^{}]*\|", text))


def list_wildcards(directories: Path | str | Sequence[Path | str] = ()) -> list[str]:
    """The wildcard names found in the folders (``colors``, ``people/hair``...)."""
    names: set[str] = set()
    for folder in _folders(directories):
        names.update(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.txt"))
    return sorted(names)


def expand(text: str, seed: int, directories: Path | str | Sequence[Path | str] = (), *,
           stream: str = "prompt") -> str:
    """The text with every wildcard and choice replaced, drawn from ``seed``.

    ``directories`` are searched in order (put the user's folder before the shipped one). ``stream``
    keeps the draws of the prompt and the negative prompt apart. Raises :class:`WorkflowError`
    (field ``prompt``) for a missing or empty wildcard, or one that leads back to itself.
    """
    if not has_wildcards(text):
        return text
    return _Expander(seed, stream, _folders(directories)).run(text, ())


class _Expander:
    def __init__(self, seed: int, stream: str, folders: list[Path]) -> None:
        self.seed, self.stream, self.folders = seed, stream, folders
        self.draws = 0
        self.cache: dict[str, list[str]] = {}

    def pick(self, count: int) -> int:
        material = f"{self.seed}:{self.stream}:{self.draws}".encode()
        self.draws += 1
        return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") % count

    def run(self, text: str, chain: tuple[str, ...], braces: int = 0) -> str:
        if len(chain) > _MAX_DEPTH or braces > _MAX_DEPTH:
            what = " → ".join(chain) if len(chain) > _MAX_DEPTH else "{...} choices"
            raise WorkflowError(f"Wildcards nest more than {_MAX_DEPTH} deep ({what}); simplify them.",
                                field="prompt")
        closing = _closing_braces(text)  # one pass: an unclosed brace no longer costs a scan per character
        out: list[str] = []
        size = pos = 0
        while pos < len(text):
            char = text[pos]
            if char == "{" and (end := closing.get(pos, -1)) > pos:
                options = _split_options(text[pos + 1:end])
                if len(options) == 1:  # {word} without a choice is the artist's text, kept as written
                    piece = "{" + self.run(options[0], chain, braces + 1) + "}"
                else:
                    piece = self.run(options[self.pick(len(options))], chain, braces + 1)
                pos = end + 1
            elif text.startswith("__", pos) and (match := _WILDCARD.match(text, pos)):
                piece = self.wildcard(match.group(1), chain)
                pos = match.end()
            else:
                plain = _PLAIN.match(text, pos)  # a run of ordinary characters at once
                piece = plain.group() if plain and plain.end() > pos else char
                pos += len(piece)
            out.append(piece)
            size += len(piece)
            if size > _MAX_OUTPUT:
                raise WorkflowError(f"The wildcards expand to over {_MAX_OUTPUT} characters; simplify them.",
                                    field="prompt")
        return "".join(out)

    def wildcard(self, name: str, chain: tuple[str, ...]) -> str:
        if name in chain:
            loop = " → ".join(f"__{n}__" for n in (*chain[chain.index(name):], name))
            raise WorkflowError(f"Wildcard __{name}__ leads back to itself ({loop}); remove the loop.",
                                field="prompt")
        lines = self.lines(name)
        return self.run(lines[self.pick(len(lines))], (*chain, name))

    def lines(self, name: str) -> list[str]:
        if name in self.cache:
            return self.cache[name]
        if not _NAME.match(name) or ".." in name.split("/"):
            raise WorkflowError(f"__{name}__ is not a wildcard name; use letters, digits, - and / only.",
                                field="prompt")
        for folder in self.folders:
            path = folder / f"{name}.txt"
            if path.is_file():
                text = path.read_text(encoding="utf-8-sig", errors="replace")
                lines = [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
                if not lines:
                    raise WorkflowError(f"The wildcard file {name}.txt has no lines to choose from; add some.",
                                        field="prompt")
                self.cache[name] = lines
                return lines
        known = list_wildcards(self.folders)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean __{close[0]}__?)" if close else ""
        available = ", ".join(f"__{n}__" for n in known) or "none"
        raise WorkflowError(f"There is no wildcard file {name}.txt for __{name}__{hint}; available: {available}.",
                            field="prompt")


def _closing_braces(text: str) -> dict[int, int]:
    """Each ``{`` that is closed, to its ``}``; an unclosed brace is plain text (so not in the map)."""
    pairs, open_at = {}, []
    for index, char in enumerate(text):
        if char == "{":
            open_at.append(index)
        elif char == "}" and open_at:
            pairs[open_at.pop()] = index
    return pairs


def _split_options(body: str) -> list[str]:
    """The ``|``-separated options of a choice, at its own nesting level."""
    options, depth, current = [], 0, []
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        if char == "|" and depth == 0:
            options.append("".join(current))
            current = []
        else:
            current.append(char)
    options.append("".join(current))
    return options


def _folders(directories: Path | str | Sequence[Path | str]) -> list[Path]:
    items = [directories] if isinstance(directories, (str, Path)) else list(directories)
    return [Path(d) for d in items if Path(d).is_dir()]
