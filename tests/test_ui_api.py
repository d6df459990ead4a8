"""The studio page's Gradio API (named endpoints) through gradio_client, against the real app process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gradio_client import Client

from comfy.graph import pngmeta
from tests.fakes.comfyui import FakeComfy
from tests.ui_support import ROOT, running_app


@pytest.fixture(scope="module")
def shared_comfy():
    with FakeComfy(step_time=0.005, node_time=0.001) as server:
        yield server


@pytest.fixture
def fake_comfy(shared_comfy: FakeComfy):
    # One app and one fake ComfyUI for the module (starting the app costs seconds); knobs reset per test.
    shared_comfy.hold, shared_comfy.step_time = False, 0.005
    yield shared_comfy
    shared_comfy.hold, shared_comfy.step_time = False, 0.005


@pytest.fixture(scope="module")
def app_url(shared_comfy: FakeComfy, tmp_path_factory: pytest.TempPathFactory):
    with running_app(shared_comfy.url, tmp_path_factory.mktemp("app") / "data") as url:
        yield url


def _follow(client: Client, job_id: str) -> list[dict]:
    job = client.submit(job_id, api_name="/job_status")
    updates = [update for update in job]
    return updates


def test_generate_and_follow_a_job(app_url: str, fake_comfy: FakeComfy) -> None:
    fake_comfy.step_time = 0.1  # slow enough that following starts before the job ends
    client = Client(app_url, verbose=False)
    queued = client.predict(prompt="a lighthouse at dawn", steps=3, seed=42, width=64, height=64, batch_count=2,
                            api_name="/generate")
    assert queued["seeds"] == [42, 43] and len(queued["job_ids"]) == 2
    updates = _follow(client, queued["job_ids"][0])
    assert updates[0]["job_id"] == queued["job_ids"][0]
    assert updates[-1]["state"] == "succeeded" and updates[-1]["images"]
    assert any(u["event"] == "progress" and u["step"] for u in updates)
    image = Path(updates[-1]["images"][0])
    assert "Seed: 42" in pngmeta.read_text_chunks(image.read_bytes())["parameters"]
    assert _follow(client, queued["job_ids"][1])[-1]["state"] == "succeeded"
    listed = client.predict(state="succeeded", limit=50, api_name="/jobs")
    assert set(queued["job_ids"]) <= {j["job_id"] for j in listed}
    client.close()


def test_generate_takes_the_toolbox_fields(app_url: str, fake_comfy: FakeComfy) -> None:
    client = Client(app_url, verbose=False)
    queued = client.predict(prompt="a fox", steps=2, seed=7, width=64, height=64, styles=["Cinematic"],
                            hires={"scale": 2, "denoise": 0.4}, api_name="/generate")
    final = _follow(client, queued["job_ids"][0])[-1]
    assert final["state"] == "succeeded"
    meta = json.loads(pngmeta.read_text_chunks(Path(final["images"][0]).read_bytes())["comfyui_studio"])
    assert meta["toolbox"]["styles"] == ["Cinematic"] and meta["toolbox"]["hires"]["size"] == [128, 128]
    with pytest.raises(Exception, match="There is no style 'Nope'"):
        client.predict(prompt="a fox", styles=["Nope"], api_name="/generate")
    client.close()


def test_cancel_a_queued_job(app_url: str, fake_comfy: FakeComfy) -> None:
    fake_comfy.hold = True
    client = Client(app_url, verbose=False)
    queued = client.predict(prompt="x", steps=2, width=64, height=64, batch_count=3, api_name="/generate")
    last = queued["job_ids"][-1]
    answer = client.predict(job_id=last, api_name="/cancel")
    assert answer["state"] == "cancelled"
    fake_comfy.hold = False
    final = _follow(client, last)[-1]
    assert final["state"] == "cancelled"
    client.close()


def test_bad_input_is_a_readable_error(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    with pytest.raises(Exception) as info:
        client.predict(prompt="x", sampler="nope", api_name="/generate")
    assert "sampler 'nope' is not available on the server" in str(info.value)
    with pytest.raises(Exception) as info:
        client.predict(job_id="0123456789abcdef", api_name="/cancel")
    assert "No job with id" in str(info.value)
    client.close()


def test_with_logins_each_user_sees_their_own_jobs(tmp_path: Path, shared_comfy: FakeComfy) -> None:
    with running_app(shared_comfy.url, tmp_path / "data", AUTH_USERS="ann:pw1,bob:pw2") as url:
        ann = Client(url, auth=("ann", "pw1"), verbose=False)
        bob = Client(url, auth=("bob", "pw2"), verbose=False)
        mine = ann.predict(prompt="ann's", steps=2, width=64, height=64, api_name="/generate")["job_ids"]
        assert [j["job_id"] for j in ann.predict(api_name="/jobs")] == mine
        assert bob.predict(api_name="/jobs") == []
        with pytest.raises(Exception, match="No job with id"):
            bob.predict(job_id=mine[0], api_name="/cancel")
        with pytest.raises(Exception):
            Client(url, auth=("ann", "wrong"), verbose=False)
        ann.close()
        bob.close()


def test_share_without_login_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "STUDIO_DATA_DIR": str(tmp_path / "d"), "PYTHONPATH": str(ROOT)}
    env.pop("AUTH_USERS", None)
    result = subprocess.run([sys.executable, "app.py", "--share"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "Set AUTH_USERS" in result.stderr and "Traceback" not in result.stderr
