"""Wrong logins against the real app: does the server keep answering while passwords are hashed?

``python -m bench.login_bench [N]``: the app with one user whose password is a 600k-round PBKDF2 hash;
N (default 10) wrong logins sent at once to Gradio's /login while /healthz is asked every 10 ms.
Figures: the slowest /healthz answer during the logins (a blocked event loop shows here), the time the
logins took, and the cost of a wrong login for the known name and for an unknown one.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from comfy.auth import hash_password  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from tests.ui_support import running_app  # noqa: E402


async def measure(url: str, logins: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        await http.get("/healthz")
        gaps: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await http.get("/healthz")
                gaps.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

        async def wrong(name: str) -> float:
            started = time.perf_counter()
            response = await http.post("/login/", data={"username": name, "password": "wrong-guess"})
            assert response.status_code == 400, response.text
            return time.perf_counter() - started

        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        await asyncio.gather(*(wrong("ann") for _ in range(logins)))
        wall = time.perf_counter() - started
        done.set()
        await prober
        known = statistics.median([await wrong("ann") for _ in range(3)])
        unknown = statistics.median([await wrong("nobody") for _ in range(3)])
    return {"logins": logins, "healthz_max_s": round(max(gaps), 3), "healthz_p50_s": round(statistics.median(gaps), 4),
            "logins_wall_s": round(wall, 2), "wrong_known_s": round(known, 3), "wrong_unknown_s": round(unknown, 3)}


def main(argv: list[str]) -> int:
    logins = int(argv[0]) if argv else 10
    with tempfile.TemporaryDirectory() as tmp, FakeComfy() as comfy, \
            running_app(comfy.url, Path(tmp) / "data", AUTH_USERS=f"ann:{hash_password('pw1')}") as url:
        print(json.dumps(asyncio.run(measure(url, logins))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
