"""The command line at its edges: a closed pipe, no backend, --help, the data folder, prune."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from comfy.settings import DEFAULT_DATA_DIR, PROJECT_DIR, Settings
from tests.test_cli import ROOT, run_cli

NOWHERE = "http://127.0.0.1:9"


def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    env = {**os.environ, "COMFYUI_URL": ",".join(f"http://127.0.0.1:{p}" for p in range(9, 40)),
           "STUDIO_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "comfy", "status"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `| head` that has already gone
    _out, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 0


def test_generate_without_a_backend_says_what_it_waits_for_and_stops_at_the_timeout(tmp_path: Path) -> None:
    result = run_cli(tmp_path, NOWHERE, "generate", "a fox", "--timeout", "4", timeout=60)
    assert result.returncode == 1
    assert "waiting for the backend" in result.stderr and "Cannot reach the ComfyUI server" in result.stderr
    assert "gave up waiting after 4 s" in result.stderr and "stay in the queue" in result.stderr
    assert f"data folder: {tmp_path / 'data'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_the_environment() -> None:
    result = subprocess.run([sys.executable, "-m", "comfy", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert "COMFYUI_URL" in result.stdout and "STUDIO_DATA_DIR" in result.stdout


def test_the_default_data_folder_is_the_same_from_any_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("STUDIO_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings(_env_file=None).data_dir == DEFAULT_DATA_DIR == PROJECT_DIR / "data"  # type: ignore[call-arg]
    monkeypatch.setenv("STUDIO_DATA_DIR", "relative/place")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.data_dir == tmp_path / "relative" / "place"  # resolved once, where the command started
    os.chdir("/")
    assert settings.queue_dir == tmp_path / "relative" / "place" / "queue"


def test_prune_from_the_command_line_reports_what_it_freed(tmp_path: Path) -> None:
    result = run_cli(tmp_path, NOWHERE, "prune", "--older-than", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Removed 0 job(s)") and "MB freed" in result.stdout
