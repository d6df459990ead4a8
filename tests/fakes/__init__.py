"""Test doubles that speak real protocols over real sockets: ``comfyui`` (a fake ComfyUI replaying captures),
``runpod_server`` (RunPod Serverless), ``s3_server`` (moto's S3 on loopback), ``loopback`` (serving them).

They import nothing of the studio: they stand for the servers it talks to.
"""

from __future__ import annotations

from tests.fakes.comfyui import FIXTURES_DIR, FakeComfy, load_workflow

__all__ = ["FIXTURES_DIR", "FakeComfy", "load_workflow"]
