"""The app at start-up and at its door: it says where its data is, and refuses uploads past the limit."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fakes.comfyui import FakeComfy
from tests.ui_support import app_log, running_app


def test_the_app_names_its_data_folder_and_refuses_oversize_uploads(tmp_path: Path, fake_comfy: FakeComfy) -> None:
    data = tmp_path / "data"
    with running_app(fake_comfy.url, data, STUDIO_MAX_UPLOAD_BYTES="4096") as url:
        small = httpx.post(f"{url}/gradio_api/upload", files={"files": ("a.png", b"x" * 1000)}, timeout=30)
        assert small.status_code == 200, small.text
        big = httpx.post(f"{url}/gradio_api/upload", files={"files": ("b.png", b"x" * 10_000)}, timeout=30)
        assert big.status_code == 413, big.text
        # The page's JSON calls carry images as base64: a body past the upload limit is refused unread.
        body = b'{"data": ["a cat", "", "", "euler", "normal", 2, 7, 1, 64, 64, 1, 1, 1.0, "' + b"A" * 2_000_000 + b'"]}'
        for route in ("/gradio_api/call/generate", "/gradio_api/queue/join"):
            refused = httpx.post(f"{url}{route}", content=body, headers={"Content-Type": "application/json"},
                                 timeout=30)
            assert refused.status_code == 413, (route, refused.text[:200])
            assert "the limit is" in refused.json()["error"]["message"]
    assert f"Data folder: {data}" in app_log(data)


def test_the_app_refuses_a_queue_on_a_network_filesystem_with_a_sentence(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.ui_support import ROOT

    table = tmp_path / "mountinfo"
    table.write_text(f"21 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 21 0:50 / {tmp_path} rw - nfs4 nas:/x rw\n")
    code = ("import sys, app; from comfy.storage import mounts; from pathlib import Path; "
            f"mounts.MOUNTINFO = Path({str(table)!r}); sys.exit(app.main([]))")
    env = {"PATH": "/usr/bin:/bin", "STUDIO_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT),
           "COMFYUI_URL": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "nfs4 filesystem" in result.stderr and "local disk" in result.stderr and "Traceback" not in result.stderr
