"""Every bench answers ``--help`` with what it measures and refuses an argument it does not take,
instead of starting a long run or ending in a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "usage"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", BENCHES)
def test_help_names_the_bench_and_what_it_measures(name: str) -> None:
    module = "bench" if name == "__main__" else f"bench.{name}"
    done = _run("-m", module, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module}")
    first_line = next(line for line in (ROOT / "bench" / f"{name}.py").read_text().split('"""')[1].splitlines()
                      if line.strip())
    assert first_line.strip()[:40] in done.stdout


def test_a_wrong_argument_is_one_sentence_not_a_traceback() -> None:
    done = _run("-m", "bench.login_bench", "ten")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "invalid int value: 'ten'" in done.stderr
    done = _run("-m", "bench.drills", "meteor")
    assert done.returncode == 2 and "no drill named meteor; choose from kill9" in done.stderr
