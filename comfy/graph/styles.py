"""Prompt styles, in AUTOMATIC1111's ``styles.csv`` format: read, merged, applied, written.

A style is a name, a prompt and a negative prompt. A style prompt with ``{prompt}`` puts the artist's
prompt there; one without it is appended after a comma (A1111's rule, for the negative too). The studio
ships ``styles/default.csv``; users add their own CSV files (A1111's ``styles.csv`` is read as is), and
a user style of the same name replaces the shipped one.

>>> style = Style("Cinematic", "cinematic still of {prompt}, film grain", "cartoon")
>>> apply_styles("a fox", "blurry", [style])
('cinematic still of a fox, film grain', 'blurry, cartoon')
>>> [s.name for s in parse_styles_csv('name,prompt,negative_prompt\\n"Ink","ink drawing, {prompt}",\\n')]
['Ink']
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from comfy.errors import WorkflowError

logger = logging.getLogger(__name__)

__all__ = ["Style", "SHIPPED_STYLES", "parse_styles_csv", "load_styles", "styles_csv", "apply_styles",
           "merge_prompt", "resolve_styles"]

#: The styles that come with the studio.
SHIPPED_STYLES = Path(__file__).resolve().parents[2] / "styles" / "default.csv"
_MAX_CSV_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "prompt": self.prompt, "negative_prompt": self.negative_prompt}


def parse_styles_csv(text: str | bytes, *, source: str = "styles.csv") -> list[Style]:
    """The styles of one CSV, A1111's columns ``name,prompt,negative_prompt`` (older files say ``text``).

    Rows without a name, and A1111's placeholder style "None", are skipped. Raises :class:`WorkflowError`
    (field ``styles``) when the file is not such a CSV.
    """
    if isinstance(text, bytes):
        if len(text) > _MAX_CSV_BYTES:
            raise WorkflowError(f"{source} is over {_MAX_CSV_BYTES // 1024 // 1024} MB; a styles file is small text.",
                                field="styles")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise WorkflowError(f"{source} is not UTF-8 text; save it as a UTF-8 CSV.", field="styles") from None
    text = text.lstrip("\ufeff")
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "name" not in columns or not ({"prompt", "text"} & set(columns)):
        raise WorkflowError(f"{source} is not a styles CSV: its first line must be name,prompt,negative_prompt.",
                            field="styles")
    styles = []
    try:
        for row in reader:
            row = {(k or "").strip().lower(): (v or "") for k, v in row.items() if isinstance(v, str)}
            name = row.get("name", "").strip()
            if not name or name == "None":
                continue
            styles.append(Style(name, row.get("prompt", row.get("text", "")).strip(),
                                row.get("negative_prompt", "").strip()))
    except csv.Error as exc:
        raise WorkflowError(f"{source} is not a valid CSV ({exc}); check its quotes.", field="styles") from exc
    return styles


def load_styles(*paths: Path | str) -> dict[str, Style]:
    """Every style in the given CSV files and folders (``*.csv`` in each), later ones replacing earlier names.

    Call it as ``load_styles(SHIPPED_STYLES, data_dir / "styles")``. Missing paths are skipped.
    """
    styles: dict[str, Style] = {}
    for path in map(Path, paths):
        files = sorted(path.glob("*.csv")) if path.is_dir() else [path] if path.is_file() else []
        for file in files:
            for style in _parsed(file):
                styles[style.name] = style
    return styles


def _parsed(file: Path) -> tuple[Style, ...]:
    """A CSV's styles, parsed again only when the file changed; a file that cannot be read is left out with
    one warning (a user's broken CSV must not stop every generation, with styles or without)."""
    try:
        stat = file.stat()
        key = (str(file), stat.st_mtime_ns, stat.st_size)
        if key not in _PARSED:
            if len(_PARSED) > 256:
                _PARSED.clear()
            _PARSED[key] = tuple(parse_styles_csv(file.read_bytes(), source=file.name))
        return _PARSED[key]
    except (OSError, WorkflowError) as exc:
        if (file, str(exc)) not in _WARNED:
            _WARNED.add((file, str(exc)))
            logger.warning("Styles file %s is left out: %s", file.name, exc)
        return ()


_PARSED: dict[tuple[str, int, int], tuple[Style, ...]] = {}
_WARNED: set[tuple[Path, str]] = set()


def styles_csv(styles: Iterable[Style]) -> str:
    """A CSV A1111 reads as its ``styles.csv``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "prompt", "negative_prompt"])
    for style in styles:
        writer.writerow([style.name, style.prompt, style.negative_prompt])
    return out.getvalue()


def merge_prompt(style_prompt: str, prompt: str) -> str:
    """A1111's ``merge_prompts``: ``{prompt}`` is replaced, else the style is appended after a comma."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def resolve_styles(names: Sequence[str] | None, library: Mapping[str, Style]) -> list[Style]:
    """The styles named, in order; an unknown name raises :class:`WorkflowError` naming the choices."""
    found = []
    for name in names or ():
        if name not in library:
            by_case = {n.lower(): n for n in library}
            if name.lower() in by_case:
                found.append(library[by_case[name.lower()]])
                continue
            close = difflib.get_close_matches(name, list(library), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            choices = ", ".join(sorted(library)) or "none (add a styles CSV)"
            raise WorkflowError(f"There is no style {name!r}{hint}; choose from: {choices}.", field="styles")
        found.append(library[name])
    return found


def apply_styles(prompt: str, negative_prompt: str, styles: Iterable[Style]) -> tuple[str, str]:
    """The prompt and negative prompt with each style applied in turn."""
    for style in styles:
        if style.prompt:
            prompt = merge_prompt(style.prompt, prompt)
        if style.negative_prompt:
            negative_prompt = merge_prompt(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt
