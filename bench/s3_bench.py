"""S3 storage figures, against moto's S3 server on loopback (in its own process, so it does not share our GIL).

(a) Upload throughput for 100 PNG images of 512×512: once through :class:`S3Store` alone, one PUT after the
    other (the wire and moto), and once through the :class:`Uploader` (backlog records, sha256, concurrency 4),
    from ``schedule`` of 25 jobs of 4 images to the last one recorded as uploaded.
(b) Added latency per job with S3 on vs off, through :class:`Studio` with the fake ComfyUI (512×512 output,
    a fixed execution time), one job at a time, alternating a studio without S3 and one with it in one run:
    submit → ``succeeded`` event (S3 must not slow this down) and submit → uploaded.

``python bench/s3_bench.py`` prints a table, then one JSON line.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from comfy.graph.params import GenerationParams  # noqa: E402
from comfy.jobs.queue import JobQueue  # noqa: E402
from comfy.service import Studio  # noqa: E402
from comfy.settings import Settings  # noqa: E402
from comfy.storage.local import LocalStore  # noqa: E402
from comfy.storage.s3 import S3Store, make_s3_client  # noqa: E402
from comfy.storage.uploader import Uploader  # noqa: E402
from tests.fakes.comfyui import FakeComfy  # noqa: E402
from bench.usage import no_arguments  # noqa: E402

BUCKET = "bench"
IMAGES = 100
SIZE = 512
LATENCY_JOBS = 12  # per mode
ROWS = [
    ("(a) 100 PNGs 512x512, total MB", "a_total_mb"),
    ("(a) S3Store.upload one after the other, images/s", "a_sequential_images_per_s"),
    ("(a) the same, MB/s", "a_sequential_mb_per_s"),
    ("(a) Uploader (25 jobs x 4, concurrency 4), images/s", "a_uploader_images_per_s"),
    ("(a) the same, MB/s", "a_uploader_mb_per_s"),
    ("(b) submit -> succeeded, S3 off, p50 ms", "b_succeeded_off_p50_ms"),
    ("(b) submit -> succeeded, S3 on, p50 ms", "b_succeeded_on_p50_ms"),
    ("(b) added latency to succeeded (on - off), p50 ms", "b_added_to_succeeded_p50_ms"),
    ("(b) submit -> uploaded, S3 on, p50 ms", "b_uploaded_p50_ms"),
    ("(b) succeeded -> uploaded, S3 on, p50 ms", "b_succeeded_to_uploaded_p50_ms"),
    ("(b) succeeded -> uploaded, S3 on, max ms", "b_succeeded_to_uploaded_max_ms"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Moto:
    """``python -m moto.server`` on a free loopback port, for the duration of a ``with``."""

    def __enter__(self) -> str:
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.url}/moto-api/data.json", timeout=1).raise_for_status()
                return self.url
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("moto's server did not start") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _settings(data_dir: Path, moto_url: str | None, comfy_url: str = "http://127.0.0.1:9") -> Settings:
    s3: dict[str, Any] = {}
    if moto_url:
        s3 = {"s3_bucket": BUCKET, "s3_endpoint_url": moto_url, "s3_region": "us-east-1",
              "s3_access_key_id": "AKIABENCH0000000000", "s3_secret_access_key": "bench-secret"}
    return Settings(_env_file=None, comfyui_url=comfy_url, data_dir=data_dir, **s3)  # type: ignore[call-arg]


def _png(seed: int) -> bytes:
    """A 512×512 PNG that compresses like a render (a gradient with grain), about 0.4 MB."""
    from PIL import Image

    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")
    grain = Image.frombytes("RGB", (SIZE, SIZE), bytes(rng.getrandbits(5) for _ in range(SIZE * SIZE * 3)))
    out = io.BytesIO()
    Image.blend(base, grain, 0.25).save(out, format="PNG")
    return out.getvalue()


def _stored_jobs(queue: JobQueue, store: LocalStore, blobs: list[bytes], per_job: int) -> list[Any]:
    jobs = []
    for at in range(0, len(blobs), per_job):
        job, _ = queue.enqueue({"prompt": "bench", "seed": at})
        queue.claim("bench", lease_seconds=600)
        meta = {"job_id": job.id, "kind": "generate", "params": job.params}
        stored = [store.save_output(job.id, i, data, metadata=meta) for i, data in enumerate(blobs[at:at + per_job])]
        jobs.append(queue.finish(job.id, "bench", outputs=[s.to_dict() for s in stored]))
    return jobs


async def _throughput(moto_url: str, tmp: Path) -> dict[str, float]:
    blobs = [_png(i) for i in range(IMAGES)]
    total_mb = sum(map(len, blobs)) / 1e6
    settings = _settings(tmp / "a", moto_url)
    client = make_s3_client(settings)
    client.create_bucket(Bucket=BUCKET)
    queue = JobQueue(settings.queue_dir)
    store = LocalStore(settings.outputs_dir, settings.inputs_dir)
    jobs = _stored_jobs(queue, store, blobs, per_job=4)
    paths = [(job.id, i, o["path"]) for job in jobs for i, o in enumerate(job.outputs)]

    s3 = S3Store.from_settings(settings, client=client)
    started = time.perf_counter()
    for job_id, index, path in paths:
        s3.upload(f"seq{job_id[3:]}", index, path)
    sequential = time.perf_counter() - started

    uploader = Uploader.from_settings(settings, queue, client=client, concurrency=4, poll_interval=0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(uploader.run(stop))
    started = time.perf_counter()
    for job in jobs:
        uploader.schedule(job)
    for job in jobs:
        await uploader.wait_uploaded(job.id, timeout=300)
    through_uploader = time.perf_counter() - started
    stop.set()
    await task
    uploader.close()
    queue.close()
    return {
        "a_images": IMAGES,
        "a_total_mb": round(total_mb, 1),
        "a_sequential_images_per_s": round(IMAGES / sequential, 1),
        "a_sequential_mb_per_s": round(total_mb / sequential, 1),
        "a_uploader_images_per_s": round(IMAGES / through_uploader, 1),
        "a_uploader_mb_per_s": round(total_mb / through_uploader, 1),
    }


async def _one_job(studio: Studio, seed: int) -> tuple[float, float | None]:
    """(submit → succeeded, submit → uploaded) in ms; the second is None without S3."""
    started = time.perf_counter()
    [job] = await studio.submit(GenerationParams(prompt="a lighthouse", steps=4, seed=seed, width=SIZE, height=SIZE,
                                                 checkpoint="random-sd15.safetensors"))
    async for event in studio.follow(job.id):
        if event.final:
            assert event.kind == "succeeded", event
            break
    succeeded = (time.perf_counter() - started) * 1000
    if studio.uploader is None:
        return succeeded, None
    await studio.uploader.wait_uploaded(job.id, timeout=60)
    return succeeded, (time.perf_counter() - started) * 1000


async def _latency(moto_url: str, tmp: Path) -> dict[str, float]:
    with FakeComfy(step_time=0.02, node_time=0.002) as fake:
        on_settings = _settings(tmp / "on", moto_url, fake.url)
        off = Studio(_settings(tmp / "off", None, fake.url))
        on = Studio(on_settings, s3_client=make_s3_client(on_settings))
        results: dict[str, list[float]] = {"off": [], "on": [], "uploaded": [], "gap": []}
        try:
            for studio in (off, on):
                await studio.models()
                await studio.start()
            await _one_job(off, 1)  # warm both paths (first connections, first PNG chunk code)
            await _one_job(on, 2)
            for index in range(LATENCY_JOBS):
                succeeded_off, _ = await _one_job(off, 100 + index)
                succeeded_on, uploaded = await _one_job(on, 200 + index)
                results["off"].append(succeeded_off)
                results["on"].append(succeeded_on)
                assert uploaded is not None
                results["uploaded"].append(uploaded)
                results["gap"].append(uploaded - succeeded_on)
        finally:
            await off.aclose()
            await on.aclose()
    p50 = {name: statistics.median(values) for name, values in results.items()}
    return {
        "b_jobs_per_mode": LATENCY_JOBS,
        "b_succeeded_off_p50_ms": round(p50["off"], 1),
        "b_succeeded_on_p50_ms": round(p50["on"], 1),
        "b_added_to_succeeded_p50_ms": round(p50["on"] - p50["off"], 1),
        "b_uploaded_p50_ms": round(p50["uploaded"], 1),
        "b_succeeded_to_uploaded_p50_ms": round(p50["gap"], 1),
        "b_succeeded_to_uploaded_max_ms": round(max(results["gap"]), 1),
    }


def run() -> dict[str, Any]:
    """Both measurements, in one run, against one moto process."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never probe instance metadata on a laptop
    with tempfile.TemporaryDirectory() as tmp, _Moto() as moto_url:
        figures = asyncio.run(_throughput(moto_url, Path(tmp)))
        figures.update(asyncio.run(_latency(moto_url, Path(tmp))))
    return figures


def main() -> None:
    figures = run()
    width = max(len(label) for label, _ in ROWS)
    print(f"{'figure':<{width}}  {'value':>10}")
    for label, key in ROWS:
        print(f"{label:<{width}}  {figures[key]:>10}")
    print(json.dumps(figures))


if __name__ == "__main__":
    no_arguments("s3_bench", __doc__)
    main()
