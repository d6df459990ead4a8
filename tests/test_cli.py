"""``python -m comfy`` as a user runs it: real processes against the fake ComfyUI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from comfy.graph import pngmeta
from tests.fakes.comfyui import FakeComfy
from tests.fixtures_util import COMFY
from tests.redis_support import redis_prefix, redis_server  # noqa: F401 - fixtures
from tests.toolbox_support import inputs_of

ROOT = Path(__file__).parent.parent


def run_cli(tmp_path: Path, url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMFYUI_URL": url, "STUDIO_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "comfy", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_generate_prints_where_the_images_are(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    result = run_cli(tmp_path, fake_comfy.url, "generate", "a lighthouse at dawn", "--steps", "3", "--seed", "42",
                     "--width", "64", "--height", "64", "--count", "2")
    assert result.returncode == 0, result.stderr
    paths = [line.strip() for line in result.stdout.splitlines() if line.strip().endswith(".png")]
    assert len(paths) == 2 and all(Path(p).is_file() for p in paths)
    seeds = sorted(json.loads(pngmeta.read_text_chunks(Path(p).read_bytes())["comfyui_studio"])["params"]["seed"]
                   for p in paths)
    assert seeds == [42, 43]
    assert "100%" in result.stderr  # the progress bar reached the end
    listing = run_cli(tmp_path, fake_comfy.url, "jobs")
    assert listing.returncode == 0 and listing.stdout.count("succeeded") == 2
    job_id = listing.stdout.split()[0]
    shown = json.loads(run_cli(tmp_path, fake_comfy.url, "show", job_id).stdout)
    assert shown["state"] == "succeeded" and shown["outputs"]


def test_img2img_and_workflow_files(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    image = COMFY / "images" / "protocol-test-input.png"
    result = run_cli(tmp_path, fake_comfy.url, "generate", "oil painting", "--image", str(image), "--denoise", "0.4",
                     "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert inputs_of(fake_comfy.prompts[-1]["prompt"], "KSampler")["denoise"] == 0.4
    flow = COMFY / "workflows" / "no_weights_api.json"
    result = run_cli(tmp_path, fake_comfy.url, "generate", "unused", "--workflow", str(flow))
    assert result.returncode == 2 and "no place for the prompt" in result.stderr
    result = run_cli(tmp_path, fake_comfy.url, "generate", "a fox", "--workflow",
                     str(COMFY / "workflows" / "txt2img_api.json"), "--seed", "5")
    assert result.returncode == 0, result.stderr
    assert fake_comfy.prompts[-1]["prompt"]["6"]["inputs"]["text"] == "a fox"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x", "--sampler", "nope"], "sampler 'nope' is not available on the server; choose one of: euler"),
        (["generate", "x", "--width", "100"], "width must be a multiple of 8"),
        (["generate", "x", "--denoise", "0.5"], "--denoise needs --image"),
        (["generate", "x", "--image", "missing.png"], "Cannot read the image missing.png"),
        (["cancel", "0123456789abcdef"], "No job with id '0123456789abcdef'"),
    ],
)
def test_bad_input_says_what_to_fix(tmp_path: Path, fake_comfy: FakeComfy, args: list[str], message: str) -> None:
    result = run_cli(tmp_path, fake_comfy.url, *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_wrong_setting_names_the_variable(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "localhost:8188", "jobs")
    assert result.returncode == 2 and "COMFYUI_URL" in result.stderr and "Traceback" not in result.stderr


def test_no_wait_then_a_worker_runs_it(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    queued = run_cli(tmp_path, fake_comfy.url, "generate", "x", "--steps", "2", "--no-wait")
    assert queued.returncode == 0 and "queued job" in queued.stderr
    assert "queued" in run_cli(tmp_path, fake_comfy.url, "jobs", "--state", "queued").stdout
    worker = run_cli(tmp_path, fake_comfy.url, "worker", "--burst")
    assert worker.returncode == 0, worker.stderr
    assert "succeeded" in run_cli(tmp_path, fake_comfy.url, "jobs").stdout


def test_status_lists_every_backend(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    result = run_cli(tmp_path, f"{fake_comfy.url},http://127.0.0.1:9", "status")
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert (first["url"], first["state"], first["reachable"]) == (fake_comfy.url, "up", True)
    assert (second["url"], second["reachable"]) == ("http://127.0.0.1:9", False)
    assert second["state"] in ("down", "probing") and "Cannot reach" in second["error"]


def test_generate_on_a_shared_redis_queue_takes_no_one_elses_job(tmp_path: Path, fake_comfy: FakeComfy,
                                                                 redis_server, redis_prefix) -> None:  # noqa: F811
    shared = {"REDIS_URL": redis_server.url, "REDIS_PREFIX": redis_prefix}

    def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COMFYUI_URL": fake_comfy.url, "STUDIO_DATA_DIR": str(tmp_path / "data"),
               "PYTHONPATH": str(ROOT), **shared}
        return subprocess.run([sys.executable, "-m", "comfy", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)

    theirs = cli("generate", "someone else's", "--steps", "2", "--width", "64", "--height", "64", "--no-wait")
    assert theirs.returncode == 0, theirs.stderr
    mine = cli("generate", "mine", "--steps", "2", "--width", "64", "--height", "64", "--timeout", "3")
    assert mine.returncode != 0 and "the workers on it run these jobs" in mine.stderr
    assert fake_comfy.prompts == []  # it ran neither: a worker runs them, on its own machine
    assert cli("worker", "--burst").returncode == 0
    assert len(fake_comfy.prompts) == 2
