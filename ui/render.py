"""Pure helpers that turn engine values into what the page shows (HTML snippets, table rows, sizes)."""

from __future__ import annotations

import html
import math
import time
from typing import Any

from comfy import BackendStatus, Job, JobEvent, JobState

__all__ = [
    "ASPECT_RATIOS",
    "aspect_size",
    "status_html",
    "progress_html",
    "job_rows",
    "JOB_COLUMNS",
    "job_caption",
    "job_summary",
]

ASPECT_RATIOS = ["1:1", "4:3", "3:2", "16:9", "21:9", "3:4", "2:3", "9:16"]

_STATE_COLOURS = {"queued": "#8a8f98", "running": "#2f7de1", "succeeded": "#1f9d55", "failed": "#d64545",
                  "cancelled": "#b7791f"}


def aspect_size(ratio: str, base: int) -> tuple[int, int]:
    """Width and height, multiples of 8, with about ``base``² pixels in the given ratio.

    >>> aspect_size("1:1", 512), aspect_size("16:9", 1024), aspect_size("2:3", 512)
    ((512, 512), (1368, 768), (416, 624))
    """
    w, _, h = ratio.partition(":")
    r = float(w) / float(h)
    width = base * math.sqrt(r)
    height = base / math.sqrt(r)
    return max(64, round(width / 8) * 8), max(64, round(height / 8) * 8)


def _gb(value: int | None) -> str:
    return f"{value / 1024**3:.1f} GB" if value else "?"


def status_html(statuses: list[BackendStatus], counts: dict[JobState, int], *, queue_error: str | None = None) -> str:
    """The header: each backend (no secrets), up or not, GPU and VRAM or RunPod workers, load; our queue.

    ``queue_error``: the job queue cannot be read (its Redis is away); that is said first, while it lasts.
    """
    if queue_error is not None:
        return ('<div class="studio-status down"><span class="dot"></span><b>Job queue unavailable</b> · '
                f"{html.escape(queue_error)} Running jobs keep running and are recorded when it is back; new "
                "jobs cannot be queued until then.</div>")
    ours = ", ".join(f"{n} {state.value}" for state, n in counts.items()
                     if n and state in (JobState.QUEUED, JobState.RUNNING)) or "idle"
    if len(statuses) == 1:
        [status] = statuses
        if not status.reachable:
            return (f'<div class="studio-status down"><span class="dot"></span><b>Backend unreachable</b> · '
                    f"{_backend_line(status)} Jobs wait in the queue until it answers. · Studio queue: {ours}</div>")
        return (f'<div class="studio-status up"><span class="dot"></span><b>Connected</b> · {_backend_line(status)}'
                f" · Studio queue: {ours}</div>")
    up = sum(status.reachable for status in statuses)
    if not up:
        summary = f"<b>No backend answers</b> ({len(statuses)} configured) · jobs wait in the queue until one does"
    else:
        summary = f"<b>Connected</b> · {up} of {len(statuses)} backends up"
    rows = "".join(
        f'<li class="{"up" if status.reachable else "down"}"><span class="dot"></span>{_backend_line(status)}</li>'
        for status in statuses)
    return (f'<div class="studio-status pool {"up" if up else "down"}">{summary} · Studio queue: {ours}'
            f'<ul class="backends">{rows}</ul></div>')


def _backend_line(status: BackendStatus) -> str:
    name = html.escape(status.url)
    if not status.reachable:
        reason = html.escape(status.error or "no answer")
        later = f" (down {status.down_for_s:.0f} s; asked again until it answers)" if status.down_for_s else ""
        return f"{name} · {reason}{later}"
    if status.kind == "demo":
        return f"{name} · demo backend: placeholder pictures drawn on the CPU, no GPU and no ComfyUI"
    if status.kind == "runpod":
        workers = f"{status.workers_running or 0} GPU workers busy, {status.workers_idle or 0} idle"
        what = f"RunPod Serverless · {workers} · {status.jobs_in_queue or 0} waiting there"
    else:
        gpu = html.escape(status.gpu or "unknown device")
        vram = f" · {_gb(status.vram_total)} VRAM ({_gb(status.vram_free)} free)" if status.vram_total else ""
        version = f" · ComfyUI {html.escape(status.comfyui_version)}" if status.comfyui_version else ""
        what = f"{gpu}{vram}{version} · ComfyUI queue: {status.queue_remaining}"
    ours = (f" · ours {status.in_flight}/{status.max_in_flight}"
            if status.in_flight is not None and status.max_in_flight else "")
    return f"{name} · {what}{ours}"


def progress_html(jobs: list[Job], live: dict[str, JobEvent], positions: dict[str, int | None], *,
                  show_backend: bool = False) -> str:
    """One bar per watched job that is not done yet, with step, node and place in the queue (and, with
    several backends, where it runs)."""
    if not jobs:
        return '<div class="studio-progress idle">Write a prompt and press Generate (Ctrl+Enter).</div>'
    rows = []
    for job in jobs:
        event = live.get(job.id)
        state = job.state.value
        percent = round(100 * ((event.progress if event and event.progress is not None else None) or job.progress))
        if job.state is JobState.QUEUED:
            place = positions.get(job.id)
            label = "waiting for the backend" if job.note and "backend" in job.note else (
                f"queued · #{place + 1} in line" if place is not None else "queued")
            percent = 0
        elif job.state is JobState.RUNNING:
            node = (event.node if event else None) or job.node or "starting"
            step, steps = (event.step, event.steps) if event else (job.step, job.steps)
            label = f"{html.escape(node)}" + (f" · step {step} of {steps}" if steps else "")
            if show_backend and job.backend:
                label += f" · on {html.escape(job.backend)}"
        elif job.state is JobState.SUCCEEDED:
            label, percent = f"done · {len(job.outputs)} image(s)", 100
        else:
            label = html.escape((job.error or {}).get("message") or state)
        prompt = html.escape((job.params.get("prompt") or job.kind)[:80])
        rows.append(
            f'<div class="job {state}" data-job="{job.id}" data-state="{state}">'
            f'<div class="line"><span class="what">{prompt}</span><span class="pct">{percent}%</span></div>'
            f'<div class="bar"><div class="fill" style="width:{percent}%;background:{_STATE_COLOURS[state]}"></div></div>'
            f'<div class="detail">{label}</div></div>'
        )
    return '<div class="studio-progress">' + "".join(rows) + "</div>"


JOB_COLUMNS = ["Job", "State", "Place", "Progress", "Prompt", "Queued at", "Took", "Images"]


def _took(job: Job) -> str:
    if job.started_at and job.finished_at:
        return f"{job.finished_at - job.started_at:.1f} s"
    if job.started_at and job.state is JobState.RUNNING:
        return f"{time.time() - job.started_at:.0f} s…"
    return ""


def job_rows(jobs: list[Job], positions: dict[str, int | None]) -> list[list[Any]]:
    rows = []
    for job in jobs:
        place = positions.get(job.id)
        rows.append([
            job.id, job.state.value, "" if place is None else place + 1, f"{job.progress:.0%}",
            (job.params.get("prompt") or f"[{job.kind}]")[:120],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.queued_at)), _took(job), len(job.outputs),
        ])
    return rows


def job_caption(job: Job) -> str:
    return f"{job.state.value} · {(job.params.get('prompt') or job.kind)[:40]}"


def job_summary(job: Job, position: int | None) -> str:
    """Markdown for the history's detail panel."""
    lines = [f"**Job `{job.id}`** · {job.state.value}" + (f" · #{position + 1} in queue" if position is not None else "")]
    if job.error:
        lines.append(f"**Error:** {job.error.get('message')}")
    if job.note and not job.state.is_final:
        lines.append(f"_{job.note}_")
    timing = [f"queued {time.strftime('%H:%M:%S', time.localtime(job.queued_at))}"]
    if job.started_at:
        timing.append(f"waited {max(job.started_at - job.queued_at, 0):.1f} s")
    if job.started_at and job.finished_at:
        timing.append(f"ran {job.finished_at - job.started_at:.1f} s")
    if job.attempts > 1:
        timing.append(f"{job.attempts} attempts")
    lines.append(" · ".join(timing))
    return "\n\n".join(lines)


def demo_banner() -> str:
    """The line that says plainly the studio runs on the demo backend, and how to connect a real one."""
    return ('<div class="studio-demo"><b>Demo</b>: no ComfyUI is connected, so the pictures are placeholders '
            "drawn on the CPU (with real steps, previews, queue and history). To generate for real, set "
            "<code>COMFYUI_URL</code> to your ComfyUI (a RunPod pod: "
            "<code>https://&lt;pod-id&gt;-8188.proxy.runpod.net</code>), or <code>RUNPOD_ENDPOINT_ID</code> and "
            "<code>RUNPOD_API_KEY</code> for RunPod Serverless (on a Space: <i>Settings → Variables and "
            "secrets</i>), and restart.</div>")
