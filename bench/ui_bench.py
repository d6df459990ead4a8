"""The studio app under 50 concurrent API clients (gradio_client), each queueing and following a job.

Each client is its own user (AUTH_USERS u0..u49, logged in through gradio_client): the page bounds the
streams one caller holds (16), and clients from one address without logins would be one caller.

Figures: p50/p99 of the delay from the worker receiving ComfyUI's progress event to the client seeing it
(each status update carries the event's time; same machine, same clock), and the app's memory (RSS)
before and at the end of the run. Then the page in headless Chromium (when Debian's is installed): the
time from navigation to a usable form (the checkpoint list filled in), median and worst of a few loads.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradio_client import Client  # noqa: E402

from bench.usage import no_arguments  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from tests.ui_support import app_process  # noqa: E402

CLIENTS = 50
STEPS = 10


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _client_run(url: str, index: int, delays: list[float], inside: list[float], errors: list[str],
                start: threading.Barrier) -> None:
    try:
        try:
            client = _logged_in(url, index)
        finally:
            start.wait()  # the others start even when this one could not log in
        queued = client.predict(prompt=f"bench {index}", steps=STEPS, seed=index, width=64, height=64,
                                api_name="/generate")
        final = None
        for update in client.submit(queued["job_ids"][0], api_name="/job_status"):
            if update["event"] == "progress" and update.get("at"):
                now = time.time()
                delays.append((now - update["at"]) * 1000)
                inside.append((update["sent"] - update["at"]) * 1000)
            final = update
        if not final or final["state"] != "succeeded":
            errors.append(f"client {index}: {final}")
        client.close()
    except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
        errors.append(f"client {index}: {type(exc).__name__}: {exc}")


def _logged_in(url: str, index: int, tries: int = 20) -> Client:
    """A client logged in as user ``index``; 50 logins at once are partly told to wait (503), so retry."""
    for attempt in range(tries):
        try:
            return Client(url, auth=(f"u{index}", f"pw{index}"), verbose=False)
        except Exception:  # noqa: BLE001 - busy: try again shortly
            if attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _serve_fake(urls: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    with FakeComfy(step_time=0.02, node_time=0.002) as fake:
        urls.put(fake.url)
        stop.wait()


def run(clients: int = CLIENTS) -> dict[str, float]:
    """Run ``clients`` API clients at once against a fresh app; the fake ComfyUI runs jobs one at a time.

    The fake ComfyUI, the app and the clients are three processes, so the clients' own Python threads do not
    slow the server they measure, nor the fake.
    """
    ctx = multiprocessing.get_context("spawn")
    urls, stop = ctx.Queue(), ctx.Event()
    fake = ctx.Process(target=_serve_fake, args=(urls, stop), daemon=True)
    fake.start()
    comfy_url = urls.get(timeout=60)
    try:
        return _measure(comfy_url, clients)
    finally:
        stop.set()
        fake.join(10)


def _client_group(url: str, first: int, count: int, results: multiprocessing.Queue,
                  start: multiprocessing.Barrier) -> None:
    """``count`` client threads in one process (gradio_client polls in each thread, so 50 in one process
    would measure the clients' own GIL contention rather than the app)."""
    delays: list[float] = []
    inside: list[float] = []
    errors: list[str] = []
    barrier = threading.Barrier(count, action=start.wait)
    threads = [threading.Thread(target=_client_run, args=(url, first + i, delays, inside, errors, barrier))
               for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    results.put((delays, inside, errors))


def _measure(comfy_url: str, clients: int, groups: int = 5) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        users = ",".join(f"u{i}:pw{i}" for i in range(clients))
        with app_process(comfy_url, Path(tmp) / "data", STUDIO_MAX_IN_FLIGHT="2", AUTH_USERS=users,
                         STUDIO_RATE_LIMIT_PER_MINUTE="0") as (url, proc):
            idle_rss, _ = _rss_mb(proc.pid)
            results = ctx.Queue()
            start = ctx.Barrier(groups)
            per_group = clients // groups
            procs = [ctx.Process(target=_client_group, args=(url, g * per_group, per_group, results, start))
                     for g in range(groups)]
            started = time.perf_counter()
            for p in procs:
                p.start()
            delays: list[float] = []
            inside: list[float] = []
            errors: list[str] = []
            for _ in procs:
                d, i, e = results.get(timeout=900)
                delays += d
                inside += i
                errors += e
            for p in procs:
                p.join(30)
            wall = time.perf_counter() - started
            rss, peak = _rss_mb(proc.pid)
            loads = _page_loads(url)
    ordered = sorted(delays)
    return {
        "clients": clients, "jobs_ok": clients - len(errors), "progress_updates": len(delays),
        "wall_s": round(wall, 2),
        "progress_delay_p50_ms": round(statistics.median(ordered), 1) if ordered else -1,
        "progress_delay_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1) if ordered else -1,
        "in_app_p50_ms": round(statistics.median(inside), 1) if inside else -1,
        "in_app_p99_ms": round(sorted(inside)[min(len(inside) - 1, int(0.99 * len(inside)))], 1) if inside else -1,
        "app_rss_idle_mb": round(idle_rss, 1), "app_rss_end_mb": round(rss, 1), "app_rss_peak_mb": round(peak, 1),
        "page_usable_p50_s": round(statistics.median(loads), 2) if loads else -1,
        "page_usable_max_s": round(max(loads), 2) if loads else -1,
        "errors": errors[:3],
    }


def _page_loads(url: str, loads: int = 5) -> list[float]:
    """Seconds from navigation to a usable form, in a fresh browser context each time (no cache)."""
    if not Path("/usr/bin/chromium").exists():
        return []
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            for _ in range(loads + 1):  # the first warms the server's own caches; not counted
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.request.post(f"{url}/login", form={"username": "u0", "password": "pw0"})
                page = context.new_page()
                started = time.perf_counter()
                page.goto(url)
                page.wait_for_function("() => { const i = document.querySelector('#checkpoint input');"
                                       " return i && i.value; }", timeout=60_000)
                seconds.append(time.perf_counter() - started)
                context.close()
        finally:
            browser.close()
    return seconds[1:]


def main() -> None:
    figures = run()
    rows = [("50 clients: jobs that succeeded", "jobs_ok", ""), ("progress updates seen", "progress_updates", ""),
            ("progress event -> client, p50 ms", "progress_delay_p50_ms", ""),
            ("progress event -> client, p99 ms", "progress_delay_p99_ms", "<= 150"),
            ("app memory idle, MB RSS", "app_rss_idle_mb", ""), ("app memory peak, MB RSS", "app_rss_peak_mb", "<= 300"),
            ("wall time for all, s", "wall_s", ""),
            ("page load to a usable form, p50 s", "page_usable_p50_s", ""),
            ("page load to a usable form, max s", "page_usable_max_s", "<= 1.5")]
    for label, key, goal in rows:
        print(f"{label:<40} {figures[key]:>10}  {goal}")
    print(json.dumps(figures))


if __name__ == "__main__":
    no_arguments("ui_bench", __doc__)
    main()
