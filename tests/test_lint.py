"""Static checks that catch real bugs (undefined names, unused imports, syntax errors) across the project.

What the engine may import is checked in test_structure.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_pyflakes_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E9", "--quiet",
                             "comfy", "api", "ui", "app.py", "bench", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
