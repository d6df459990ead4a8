"""Wrong logins against the real app: does the server keep answering while passwords are hashed?

``python -m bench.login_bench [N] [FLOOD]``: the app with users whose passwords are 600k-round PBKDF2
hashes; N (default 10) wrong logins sent at once to Gradio's /login while /healthz is asked every 10 ms.
Figures: the slowest /healthz answer during the logins (a blocked event loop shows here), the time the
logins took, and the cost of a wrong login for the known name and for an unknown one (medians of 8 each,
interleaved).

Then a flood: FLOOD (default 40) wrong logins at once, each from its own address (``X-Forwarded-For``, so
the per-address limit does not hide what follows), and a real login sent just after them. Figures: the
real login alone; under the flood, its first answer (status and time: a bounded server answers 503 at
once, an unbounded one queues it behind the whole flood); and the time until it is logged in, trying
again after ``Retry-After`` when told to. ``ratio`` is that time over the real login alone.
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

from bench.usage import parser_for  # noqa: E402
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

        busy = 0

        async def wrong(name: str) -> float:
            nonlocal busy
            started = time.perf_counter()
            response = await http.post("/login/", data={"username": name, "password": "wrong-guess"})
            assert response.status_code in (400, 503), response.text  # 503: more checks at once than allowed
            busy += response.status_code == 503
            return time.perf_counter() - started

        prober = asyncio.create_task(probe())
        started = time.perf_counter()
        await asyncio.gather(*(wrong("ann") for _ in range(logins)))
        wall = time.perf_counter() - started
        done.set()
        await prober
        await asyncio.sleep(1.0)  # the burst's checks are done: one login at a time from here
        samples: dict[str, list[float]] = {"ann": [], "nobody": []}
        for _ in range(8):  # interleaved, so that the machine's moods fall on both alike
            for name in samples:
                samples[name].append(await wrong(name))
        known, unknown = (statistics.median(samples[name]) for name in ("ann", "nobody"))
    return {"logins": logins, "healthz_max_s": round(max(gaps), 3), "healthz_p50_s": round(statistics.median(gaps), 4),
            "logins_wall_s": round(wall, 2), "refused_busy": busy, "wrong_known_s": round(known, 3),
            "wrong_unknown_s": round(unknown, 3)}


async def flood(url: str, size: int) -> dict[str, float]:
    """A real login's latency alone, and under a flood of wrong logins from ``size`` addresses."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        async def login(name: str, password: str, address: str = "10.9.0.1") -> tuple[int, float, float]:
            started = time.perf_counter()
            response = await http.post("/login/", data={"username": name, "password": password},
                                       headers={"X-Forwarded-For": address})
            return response.status_code, time.perf_counter() - started, float(response.headers.get("retry-after", 1))

        status, alone, _ = await login("carol", "pw3")
        assert status == 200, status
        flood_started = time.perf_counter()
        wrongs = [asyncio.create_task(login(f"nobody{i}", "wrong-guess", f"10.8.{i // 250}.{i % 250}"))
                  for i in range(size)]
        await asyncio.sleep(0.05)  # the flood is in
        started = time.perf_counter()
        status, first, wait = await login("ann", "pw1")
        first_status = status
        while status != 200:  # what a person does when told to wait
            assert status in (429, 503), status
            await asyncio.sleep(wait)
            status, _, wait = await login("ann", "pw1")
        logged_in = time.perf_counter() - started
        answers = await asyncio.gather(*wrongs)
        flood_wall = time.perf_counter() - flood_started
    return {"flood": size, "real_login_alone_s": round(alone, 3), "first_answer_status": first_status,
            "first_answer_s": round(first, 3), "logged_in_after_s": round(logged_in, 3),
            "ratio": round(logged_in / alone, 1), "flood_refused_busy": sum(1 for s, _, _ in answers if s == 503),
            "flood_wall_s": round(flood_wall, 2)}


def main(argv: list[str]) -> int:
    parser = parser_for("login_bench", __doc__)
    parser.add_argument("logins", nargs="?", type=int, default=10, help="wrong logins sent at once (default 10)")
    parser.add_argument("flood", nargs="?", type=int, default=40, help="wrong logins in the flood (default 40)")
    args = parser.parse_args(argv)
    logins, size = args.logins, args.flood
    users = ",".join(f"{name}:{hash_password(password)}" for name, password in (("ann", "pw1"), ("carol", "pw3")))
    with tempfile.TemporaryDirectory() as tmp, FakeComfy() as comfy, \
            running_app(comfy.url, Path(tmp) / "data", AUTH_USERS=users) as url:
        print(json.dumps(asyncio.run(measure(url, logins))), flush=True)
        print(json.dumps(asyncio.run(flood(url, size))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
