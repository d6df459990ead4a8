"""Every bench answers ``--help`` with its own docstring, and refuses arguments it does not take."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parser_for(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser named ``python -m bench.<module>`` whose help is the bench's docstring."""
    return argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def no_arguments(module: str, doc: str | None, argv: Sequence[str] | None = None) -> None:
    """For a bench that takes no arguments: ``--help`` prints what it measures; anything else is refused."""
    parser_for(module, doc).parse_args(argv)
