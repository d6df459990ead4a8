"""The real app with logins: the page's own (private) endpoints, its files and the REST API check the owner.

Bob is logged in and knows Ann's job ids. He calls the page's private handlers the way the browser
does (``/gradio_api/queue/join``), fetches her images by path, and asks the REST API with his login.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client

from tests.fakes.comfyui import FakeComfy
from tests.ui_support import app_log, running_app


def login(url: str, user: str, password: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    assert http.post("/login/", data={"username": user, "password": password}).status_code == 200
    return http


def call_page(http: httpx.Client, api_name: str, data: list[Any], session: str | None = None) -> dict[str, Any]:
    """Run one of the page's event handlers as the browser does; the final queue message."""
    fn_index = next(d["id"] for d in http.get("/config").json()["dependencies"] if d["api_name"] == api_name)
    session = session or secrets.token_hex(8)
    joined = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "session_hash": session,
                                                       "event_data": None, "trigger_id": None})
    assert joined.status_code == 200, joined.text
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the queue never completed the call")


def rest(url: str, user: str, password: str) -> httpx.Client:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Basic {token}"})


def wait_for(http: httpx.Client, job_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (job := http.get(f"/api/v1/jobs/{job_id}").json())["status"] != status:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.fixture
def held_comfy():
    with FakeComfy(step_time=0.005, node_time=0.001) as server:
        yield server


def test_another_login_can_neither_follow_nor_stop_nor_see_a_job(tmp_path: Path, held_comfy: FakeComfy) -> None:
    data = tmp_path / "data"
    with running_app(held_comfy.url, data, AUTH_USERS="ann:pw1,bob:pw2") as url:
        held_comfy.hold = True
        ann_page = Client(url, auth=("ann", "pw1"), verbose=False)
        running, queued = ann_page.predict(prompt="ann's lighthouse", steps=2, width=64, height=64, batch_count=2,
                                           api_name="/generate")["job_ids"]
        ann_page.close()
        ann_api, bob_api = rest(url, "ann", "pw1"), rest(url, "bob", "pw2")
        wait_for(ann_api, running, "running")
        bob = login(url, "bob", "pw2")

        for name in ("cancel_job", "move_to_front", "job_detail", "send_to_img2img"):
            for job_id in (running, queued):
                answer = call_page(bob, name, [job_id])
                # The detail panel clears and says so; the actions refuse.
                assert answer["success"] is (name == "job_detail"), (name, answer)
                assert "No job with id" in json.dumps(answer) and "lighthouse" not in json.dumps(answer), (name, answer)
        # A reload with her ids in his browser's storage, then the page's watcher on that session.
        assert call_page(bob, "restore_jobs", [[running, queued]], session="bob-tab")["success"] is True
        watched = json.dumps(call_page(bob, "watch", [], session="bob-tab"))
        assert running not in watched and queued not in watched and "lighthouse" not in watched
        assert call_page(bob, "stop", [], session="bob-tab")["success"] is True
        for job_id in (running, queued):
            assert bob_api.get(f"/api/v1/jobs/{job_id}").status_code == 404
            assert bob_api.delete(f"/api/v1/jobs/{job_id}").status_code == 404
        for job_id in (running, queued):  # the page's jobs, seen on the API by the same login: untouched
            job = ann_api.get(f"/api/v1/jobs/{job_id}").json()
            assert job["status"] in ("queued", "running") and job["cancel_requested"] is False, job

        held_comfy.hold = False
        wait_for(ann_api, queued, "succeeded")
        wait_for(ann_api, running, "succeeded")
        [saved] = (data / "outputs" / queued).glob("image_0.*")
        ann = login(url, "ann", "pw1")
        assert call_page(ann, "restore_jobs", [[running, queued]], session="ann-tab")["success"] is True
        assert "lighthouse" in json.dumps(call_page(ann, "watch", [], session="ann-tab"))  # her own page does
        assert ann.get(f"/gradio_api/file={saved}").status_code == 200
        assert ann.get(f"/gradio_api/file={saved}").content == saved.read_bytes()
        for path in (f"/gradio_api/file={saved}", f"/gradio_api/file/{saved}",
                     f"/gradio_api/file={data}/outputs/../outputs/{queued}/{saved.name}"):
            assert bob.get(path).status_code == 404, path
        assert httpx.get(f"{url}/gradio_api/file={saved}").status_code == 404  # no login at all
        for client in (ann_api, bob_api, bob, ann):
            client.close()
    log = app_log(data)
    assert "Protected: the page needs a login (2 user(s)" in log and "the same logins as HTTP Basic" in log
