"""The examples in the engine's and the page's docstrings are run, so they stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import api
import comfy
import ui

MODULES = sorted(info.name for package in (comfy, api, ui)
                 for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
                 if not info.ispkg and not info.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output)"
