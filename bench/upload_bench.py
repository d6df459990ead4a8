"""Memory of checking uploads: flat 64-megapixel PNGs (200 KB each on disk, what any client may send as an
init image, a mask or a workflow's image), fitted to 2048×2048 by :func:`comfy.graph.images.fit_image`, one
alone and then 4 at once from 4 threads (as the REST API and the page decode off the event loop).

Figures: the file's size, and for each round the peak growth of this process's resident memory and the wall
time. Uploads decode side by side only while their pixels fit in ``DECODE_BUDGET_PIXELS`` together, so 4 at
once should cost about what one does; ``ratio`` is the peak of 4 over the peak of one.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from bench.usage import no_arguments  # noqa: E402
from comfy.graph.images import fit_image  # noqa: E402


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


def _round(data: bytes, at_once: int) -> tuple[float, float]:
    base, peak, stop = _rss(), [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(lambda _: fit_image(data, max_width=2048, max_height=2048, max_bytes=50_000_000, multiple=8),
                      range(at_once)))
    stop.set()
    watcher.join()
    return (peak[0] - base) / 1e6, time.perf_counter() - started


def run() -> dict[str, float]:
    out = io.BytesIO()
    Image.new("RGB", (8000, 7990), (10, 20, 30)).save(out, "PNG")
    data = out.getvalue()
    one_mb, one_s = _round(data, 1)
    four_mb, four_s = _round(data, 4)
    return {"file_kb": round(len(data) / 1e3), "one_peak_mb": round(one_mb), "one_s": round(one_s, 2),
            "four_peak_mb": round(four_mb), "four_s": round(four_s, 2), "ratio": round(four_mb / max(one_mb, 1), 2)}


if __name__ == "__main__":
    no_arguments("upload_bench", __doc__)
    figures = run()
    for key, value in figures.items():
        print(f"{key:<14} {value:>8}")
    print(json.dumps(figures))
