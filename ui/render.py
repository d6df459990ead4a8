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
    "job_title",
    "image_caption",
    "settings_text",
    "duration",
]

ASPECT_RATIOS = ["1:1", "4:3", "3:2", "16:9", "21:9", "3:4", "2:3", "9:16"]

PROGRESS_ROWS = 6  # bars shown at once in the right panel; the rest are summed up in a line

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


def stored_shape(stored: Any) -> tuple[str, int]:
    """The aspect ratio and base size a browser kept, or the defaults where it kept nothing valid.

    >>> stored_shape(["2:3", 768]), stored_shape(["7:5", "x"]), stored_shape(None)
    (('2:3', 768), ('1:1', 512), ('1:1', 512))
    """
    ratio, base = (list(stored) + [None, None])[:2] if isinstance(stored, (list, tuple)) else (None, None)
    return (ratio if ratio in ASPECT_RATIOS else "1:1", base if base in (512, 768, 1024) else 512)


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
        memory = "RAM" if status.device_type == "cpu" else "VRAM"  # ComfyUI on the CPU reports the machine's RAM
        vram = f" · {_gb(status.vram_total)} {memory} ({_gb(status.vram_free)} free)" if status.vram_total else ""
        version = f" · ComfyUI {html.escape(status.comfyui_version)}" if status.comfyui_version else ""
        what = f"{gpu}{vram}{version} · ComfyUI queue: {status.queue_remaining}"
    ours = (f" · ours {status.in_flight}/{status.max_in_flight}"
            if status.in_flight is not None and status.max_in_flight else "")
    return f"{name} · {what}{ours}"


def job_title(job: Job) -> str:
    """What a job is about, in a line: its prompt, a workflow's name before it.

    >>> job_title(Job(id="0" * 16, seq=1, kind="workflow", params={"workflow_name": "portrait", "prompt": "a cat"}))
    'portrait · a cat'
    """
    prompt = job.params.get("prompt") or ""
    name = job.params.get("workflow_name") if job.kind == "workflow" else None
    if name:
        return f"{name} · {prompt}" if prompt else f"{name} (workflow)"
    return prompt or f"[{job.kind}]"


def _loads_model(node: str | None) -> bool:
    """Whether ComfyUI's current node is the one loading a checkpoint (no step progress until it is done).

    >>> _loads_model("Load Checkpoint"), _loads_model("CheckpointLoaderSimple"), _loads_model("Load Image")
    (True, True, False)
    """
    text = (node or "").lower()
    return "image" not in text and ("checkpoint" in text or "loader" in text or ("load" in text and "model" in text))


def short_reason(reason: str) -> str:
    """The gist of why a backend does not answer, for a row (the header has the whole sentence).

    >>> short_reason("Cannot reach the ComfyUI server (prompt status): connection refused, or the host was not found.")
    'connection refused'
    >>> short_reason("no backend answers (a: timed out; b: refused)")
    'no backend answers'
    """
    text = reason.removeprefix("waiting for the backend: ").strip()
    if text.startswith("no backend answers"):
        return "no backend answers"
    text = text.rsplit("): ", 1)[-1] if "): " in text else text.rsplit(": ", 1)[-1]
    return text.split(", or ", 1)[0].rstrip(". ")[:80] or "no answer"


def waiting_label(job: Job, down: str | None, place: int | None) -> tuple[str, bool]:
    """A queued job's line, and whether it waits on a backend that does not answer (said on its own row)."""
    if down:
        return f"backend unreachable: {short_reason(down)} — resumes when it answers", True
    if job.note and job.note.startswith("waiting for"):
        return job.note, True
    return (f"queued · #{place + 1} in line" if place is not None else "queued"), False


def progress_html(jobs: list[Job], live: dict[str, JobEvent], positions: dict[str, int | None], *,
                  show_backend: bool = False, down: str | None = None) -> str:
    """One bar per watched job that is not done yet, with step, node and place in the queue (and, with
    several backends, where it runs). ``down``: why no backend answers, said on each waiting row."""
    if not jobs:
        return '<div class="studio-progress idle">Write a prompt and press Generate (Ctrl+Enter).</div>'
    rows = []
    more = jobs[PROGRESS_ROWS:]
    for job in jobs[:PROGRESS_ROWS]:
        event = live.get(job.id)
        state = job.state.value
        fraction = (event.progress if event and event.progress is not None else None) or job.progress
        percent = round(100 * fraction)
        shown = f"{percent}%"
        extra = ""
        if job.state is JobState.QUEUED:
            label, waiting = waiting_label(job, down, positions.get(job.id))
            percent, shown, extra = 0, "waiting" if waiting else "queued", " waiting" if waiting else ""
            label = html.escape(label)
        elif job.state is JobState.RUNNING:
            node = (event.node if event else None) or job.node or "starting"
            step, steps = (event.step, event.steps) if event else (job.step, job.steps)
            if _loads_model(node) and not steps:
                label, shown, extra = f"loading model · {html.escape(node)}", "loading", " loading"
            else:
                label = f"{html.escape(node)}" + (f" · step {step} of {steps}" if steps else "")
            if show_backend and job.backend:
                label += f" · on {html.escape(job.backend)}"
        elif job.state is JobState.SUCCEEDED:
            label, percent, shown = f"done · {len(job.outputs)} image(s)", 100, "100%"
        else:
            label, shown = html.escape((job.error or {}).get("message") or state), state
        title = html.escape(job_title(job)[:80])
        rows.append(
            f'<div class="job {state}{extra}" data-job="{job.id}" data-state="{state}">'
            f'<div class="line"><span class="what">{title}</span><span class="pct">{shown}</span></div>'
            f'<div class="bar"><div class="fill" style="width:{percent}%;background:{_STATE_COLOURS[state]}"></div></div>'
            f'<div class="detail">{label}</div></div>'
        )
    if more:  # a batch of 100 is a line, not 100 bars
        waiting = sum(job.state is JobState.QUEUED for job in more)
        rows.append(f'<div class="more">and {len(more)} more ({waiting} queued); all in Queue &amp; history</div>')
    return '<div class="studio-progress">' + "".join(rows) + "</div>"


JOB_COLUMNS = ["Job", "State", "Place", "Progress", "Prompt", "Queued", "Took", "Images"]
JOB_COLUMN_WIDTHS = ["11%", "13%", "8%", "20%", "19%", "11%", "9%", "9%"]
SHORT_ID = 8


def duration(seconds: float) -> str:
    """A human duration.

    >>> duration(1.34), duration(12.2), duration(184), duration(3725)
    ('1.3 s', '12 s', '3 min 4 s', '1 h 2 min')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s" if whole % 60 else f"{whole // 60} min"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def _took(job: Job) -> str:
    if job.started_at and job.finished_at:
        return duration(job.finished_at - job.started_at)
    if job.started_at and job.state is JobState.RUNNING:
        return duration(time.time() - job.started_at) + "…"
    return ""


def _when(stamp: float) -> str:
    local = time.localtime(stamp)
    today = time.localtime().tm_yday == local.tm_yday and time.localtime().tm_year == local.tm_year
    return time.strftime("%H:%M:%S" if today else "%b %d %H:%M", local)


def _progress_cell(job: Job, down: str | None, place: int | None) -> str:
    if job.state is JobState.QUEUED:
        label, waiting = waiting_label(job, down, place)
        return label if waiting else ""
    if job.state is JobState.RUNNING:
        node = job.node or ""
        if _loads_model(node) and not job.steps:
            return "loading model"
        return f"{job.progress:.0%}" + (f" · step {job.step} of {job.steps}" if job.steps else "")
    if job.state is JobState.SUCCEEDED:
        return "100%"
    return job.state.value


def job_rows(jobs: list[Job], positions: dict[str, int | None], down: str | None = None) -> list[list[Any]]:
    """The history table's rows: short ids, human times, a progress cell that says why a job waits."""
    rows = []
    for job in jobs:
        place = positions.get(job.id)
        rows.append([
            job.id[:SHORT_ID], job.state.value, "" if place is None else place + 1,
            _progress_cell(job, down, place), job_title(job)[:120], _when(job.queued_at), _took(job),
            len(job.outputs),
        ])
    return rows


def job_caption(job: Job) -> str:
    return f"{job.state.value} · {job_title(job)[:40]}"


def image_caption(job: Job, index: int, count: int) -> str:
    """A result's caption: its full seed and its place in the batch (seeds of a batch share one number).

    >>> image_caption(Job(id="0" * 16, seq=1, kind="generate", params={"seed": 8609751822104141}), 1, 3)
    'seed 8609751822104141 · 2 of 3'
    """
    seed = job.params.get("seed")
    where = f"{index + 1} of {count}"
    return f"seed {seed} · {where}" if seed is not None else where


def job_summary(job: Job, position: int | None) -> str:
    """Markdown for the history's detail panel."""
    lines = [f"**Job `{job.id}`** · {job.state.value}" + (f" · #{position + 1} in queue" if position is not None else "")]
    if job.kind == "workflow" and job.params.get("workflow_name"):
        lines.append(f"Workflow **{job.params['workflow_name']}**")
    if job.error:
        lines.append(f"**Error:** {job.error.get('message')}")
    if job.note and not job.state.is_final:
        lines.append(f"_{job.note}_")
    timing = [f"queued {time.strftime('%H:%M:%S', time.localtime(job.queued_at))}"]
    if job.started_at:
        timing.append(f"waited {duration(max(job.started_at - job.queued_at, 0))}")
    if job.started_at and job.finished_at:
        timing.append(f"ran {duration(job.finished_at - job.started_at)}")
    if job.attempts > 1:
        timing.append(f"{job.attempts} attempts")
    lines.append(" · ".join(timing))
    return "\n\n".join(lines)


_SETTING_NAMES = [("steps", "Steps"), ("sampler", "Sampler"), ("scheduler", "Schedule type"), ("cfg", "CFG scale"),
                  ("seed", "Seed"), ("size", "Size"), ("checkpoint", "Model"), ("denoise", "Denoising strength"),
                  ("batch_size", "Batch size"), ("workflow_name", "Workflow")]


def settings_text(params: dict[str, Any]) -> str:
    """A job's settings as AUTOMATIC1111 writes them: the prompt, the negative prompt, then one line of settings.

    >>> print(settings_text({"prompt": "a cat", "negative_prompt": "blurry", "steps": 20, "sampler": "euler",
    ...                      "cfg": 7.0, "seed": 42, "width": 512, "height": 768, "checkpoint": "sd15.safetensors"}))
    a cat
    Negative prompt: blurry
    Steps: 20, Sampler: euler, CFG scale: 7, Seed: 42, Size: 512x768, Model: sd15.safetensors
    """
    values = dict(params)
    if values.get("width") and values.get("height"):
        values["size"] = f"{values['width']}x{values['height']}"
    if values.get("init_image") is None and values.get("denoise") in (1, 1.0):
        values.pop("denoise")  # text to image: full strength says nothing
    if values.get("batch_size") == 1:
        values.pop("batch_size")
    parts = []
    for key, name in _SETTING_NAMES:
        value = values.get(key)
        if value is None or value == "":
            continue
        parts.append(f"{name}: {value:g}" if isinstance(value, float) else f"{name}: {value}")
    lines = [str(params.get("prompt") or "")]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    lines.append(", ".join(parts))
    return "\n".join(line for line in lines if line)


def demo_banner() -> str:
    """The line that says plainly the studio runs on the demo backend, and how to connect a real one."""
    return ('<div class="studio-demo"><b>Demo</b>: no ComfyUI is connected, so the pictures are placeholders '
            "drawn on the CPU (with real steps, previews, queue and history). To generate for real, set "
            "<code>COMFYUI_URL</code> to your ComfyUI (a RunPod pod: "
            "<code>https://&lt;pod-id&gt;-8188.proxy.runpod.net</code>), or <code>RUNPOD_ENDPOINT_ID</code> and "
            "<code>RUNPOD_API_KEY</code> for RunPod Serverless (on a Space: <i>Settings → Variables and "
            "secrets</i>), and restart.</div>")
