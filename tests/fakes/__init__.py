"""Test doubles that speak real protocols over real sockets (see ``comfyui``)."""

from __future__ import annotations

from tests.fakes.comfyui import FIXTURES_DIR, FakeComfy, load_workflow

__all__ = ["FIXTURES_DIR", "FakeComfy", "load_workflow"]
