"""Recovery across processes: kill -9 a worker mid-job, start another, the job completes exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfy.jobs.queue import JobQueue
from comfy.jobs.records import JobState
from tests.fakes.comfyui import FakeComfy

ROOT = Path(__file__).parent.parent


def _worker(data_dir: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COMFYUI_URL": url, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_LEASE_SECONDS": "3"}
    return subprocess.Popen([sys.executable, "-m", "comfy", "worker", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _enqueue(data_dir: Path, steps: int) -> str:
    with JobQueue(data_dir / "queue") as queue:
        job, _ = queue.enqueue({"prompt": "a lighthouse", "steps": steps, "seed": 11, "width": 64, "height": 64,
                                "checkpoint": "random-sd15.safetensors"})
    return job.id


def _job(data_dir: Path, job_id: str):
    with JobQueue(data_dir / "queue") as queue:
        return queue.get(job_id)


@pytest.mark.slow
@pytest.mark.parametrize("server_restarts", [False, True], ids=["reattach", "resubmit"])
def test_kill_9_mid_job_then_restart_completes_exactly_once(tmp_path: Path, server_restarts: bool) -> None:
    data_dir = tmp_path / "data"
    with FakeComfy(step_time=0.1) as fake:
        job_id = _enqueue(data_dir, steps=25)
        first = _worker(data_dir, fake.url)
        try:
            _wait_for(lambda: (_job(data_dir, job_id).step or 0) >= 2)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        killed = _job(data_dir, job_id)
        assert killed.state is JobState.RUNNING and killed.prompt_id
        if server_restarts:
            fake.restart()  # ComfyUI restarted too and lost the prompt: it must be submitted again
        fake.step_time = 0.01
        second = _worker(data_dir, fake.url, "--burst")
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0, out.decode()
        done = _job(data_dir, job_id)
        assert done.state is JobState.SUCCEEDED, (done, out.decode())
        assert len(done.outputs) == 1 and Path(done.outputs[0]["path"]).is_file()
        ran = [b for b in fake.prompts if b["prompt_id"] in {killed.prompt_id, done.prompt_id}]
        if server_restarts:
            assert done.attempts == 2 and len(fake.prompts) == 2 and done.prompt_id != killed.prompt_id
        else:
            assert done.attempts == 1 and len(fake.prompts) == 1 and done.prompt_id == killed.prompt_id
        assert ran
        assert sorted(os.listdir(data_dir / "outputs" / job_id)) == ["image_0.png"]
