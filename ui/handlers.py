"""What the page's events do: each handler validates UI input, calls the engine, and shapes the answer.

Handlers never talk to ComfyUI, parse protocol frames or touch the queue's storage: they call
:class:`comfy.Studio`. Engine errors become ``gr.Error`` messages that say what to fix; anything
unexpected is logged with its trace and shown as one plain sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from comfy import (
    BackendState,
    BackendStatus,
    ComfyError,
    GenerationParams,
    Job,
    JobEvent,
    JobNotFound,
    JobState,
    QueueError,
    Studio,
    WorkflowError,
)
from comfy import graph as workflows
from comfy.graph.pnginfo import read_png_info
from ui import render
from ui.numbers import browser_seed, whole, workflow_value
from ui.streams import PageStreams
from ui.endpoints import NamedEndpoints
from ui.errors import _owner, friendly
from ui.files import PageCopies
from ui.toolbox_handlers import ToolboxHandlers

__all__ = ["Handlers", "FORM_FIELDS", "friendly", "storable_form"]

logger = logging.getLogger(__name__)

#: The Generate form, in the order its components are passed to handlers.
FORM_FIELDS = ["prompt", "negative_prompt", "checkpoint", "sampler", "scheduler", "steps", "cfg", "seed", "width",
               "height", "batch_size", "batch_count", "denoise"]
WATCH_LIMIT = 64  # jobs one page follows at once
GALLERY_LIMIT = 48  # newest results shown under the preview; the history pages through the rest
WATCHED_SESSIONS = 4096
#: Of which one logged-in user's (tabs and browsers): past this, that user's oldest session is forgotten.
SESSIONS_PER_USER = 64
HISTORY_IMAGES = 100  # images of one history page in its gallery (25 jobs; a batch of 100 pages through)
STATUS_COUNTS_TTL = 1.0  # seconds the header's queue counts are reused across pages  # pages whose followed jobs are kept; the least recently active is forgotten first


class Handlers(NamedEndpoints, ToolboxHandlers):
    """The UI's behaviour, bound to one :class:`Studio` (shared by every browser session)."""

    def __init__(self, studio: Studio, *, auth_on: bool = False, keys_on: bool = False,
                 copies: PageCopies | None = None) -> None:
        self.studio = studio
        self.auth_on = auth_on
        #: Whether the page sees only its owner's jobs: with logins each user's; with API keys but no
        #: logins the open page's (owner None), never an API key's.
        self.scoped = auth_on or keys_on
        #: Result images go to Gradio as these copies, which ui.files gates by owner (None: the files).
        self.copies = copies
        #: (user, session hash) -> job ids that page follows (the newest batch and what is still running).
        #: The user is part of the key: a session hash comes from the browser, anyone can send another's.
        self._watched: OrderedDict[tuple[str | None, str], list[str]] = OrderedDict()
        self.streams = PageStreams()  #: the page's and the Gradio API's streams, per caller
        self._counts: dict[JobState, int] = {}  # the queue's counts for the header, read at most once a second
        self._counts_at = self._asked_at = -1e9
        self._asked: list[BackendStatus] = []  # the backends' own answers, while the pool has not checked them yet

    # -- models and status ------------------------------------------------------------------------

    @friendly
    async def load_models(self, checkpoint: str | None, sampler: str | None, scheduler: str | None,
                          refresh: bool = False) -> tuple[Any, Any, Any]:
        models = await self.studio.models(refresh=refresh)
        if refresh and not models.checkpoints:
            gr.Warning("The backend could not be reached, so the lists could not be refreshed.")

        def pick(choices: list[str], current: str | None, default: str | None) -> Any:
            value = current if current in choices else (default if default in choices else
                                                         (choices[0] if choices else current))
            return gr.update(choices=choices, value=value)

        return (pick(models.checkpoints, checkpoint, None), pick(models.samplers, sampler, "euler"),
                pick(models.schedulers, scheduler, "normal"))

    @friendly
    async def restore_form(self, stored: dict[str, Any] | None, *current: Any) -> list[Any]:
        """After a (re)load: the backend's lists, then the values this browser had saved, where still valid."""
        stored = stored or {}
        values = dict(zip(FORM_FIELDS, current))
        values.update({k: v for k, v in stored.items() if k in values and v is not None})
        lists = await self.load_models(values["checkpoint"], values["sampler"], values["scheduler"])
        dropdowns = dict(zip(("checkpoint", "sampler", "scheduler"), lists))
        return [dropdowns.get(name) or gr.update(value=values[name]) for name in FORM_FIELDS]

    async def status(self) -> str:
        """The header, asking each backend (on page load)."""
        statuses = await self.studio.backends_status()
        try:
            counts = await self.studio.counts()
        except QueueError as exc:  # the queue's Redis is away: say so while it lasts
            return render.status_html(statuses, {}, queue_error=str(exc))
        return render.status_html(statuses, counts)

    async def live_status(self) -> str:
        """The header from what the engine already knows: the pool's last checks and the queue's counts.

        No request to any backend, so every page can read it each second and see a change within one.
        """
        now = time.monotonic()
        if now - self._counts_at >= STATUS_COUNTS_TTL:
            try:
                self._counts, self._counts_at = await self.studio.counts(), now
            except QueueError as exc:  # the queue's Redis is away: say so while it lasts
                return render.status_html(await self.studio.backends_status(), {}, queue_error=str(exc))
        views = self.studio.pool.views()
        if any(v.state is BackendState.UP and v.health is None for v in views):  # not checked yet: ask, once for all
            if now - self._asked_at >= STATUS_COUNTS_TTL:
                self._asked, self._asked_at = await self.studio.backends_status(), now
            return render.status_html(self._asked, self._counts)
        statuses = []
        for view in views:
            health, backend = view.health, view.backend
            known = {"name": backend.name, "kind": backend.kind, "load": view.load, "in_flight": view.in_flight,
                     "max_in_flight": backend.max_in_flight, "state": view.state.value,
                     "down_for_s": round(now - view.down_since) if view.down_since is not None else None}
            if view.state is not BackendState.UP or health is None:
                statuses.append(BackendStatus(backend.url, False, error=view.error, **known))
                continue
            statuses.append(BackendStatus(
                backend.url, True, gpu=health.gpu, vram_total=health.vram_total, vram_free=health.vram_free,
                device_type=health.device_type, queue_remaining=health.queue_remaining,
                comfyui_version=health.version, workers_idle=health.workers_idle,
                workers_running=health.workers_running, jobs_in_queue=health.jobs_in_queue,
                jobs_in_progress=health.jobs_in_progress, **known))
        return render.status_html(statuses, self._counts)

    async def status_tick(self, shown: str | None) -> tuple[Any, Any]:
        """Each second: the header again, sent only when it changed."""
        html_now = await self.live_status()
        return (gr.skip(), gr.skip()) if html_now == shown else (html_now, html_now)

    # -- generating -------------------------------------------------------------------------------

    def _params(self, values: dict[str, Any], *, img2img: bool,
                toolbox: dict[str, Any] | None = None) -> GenerationParams:
        """The form as parameters, with the toolbox's; every number is checked by the engine, never clamped here."""

        def number(name: str, default: float, kind: type) -> Any:
            value = values.get(name)
            return default if value in (None, "") else whole(name, value) if kind is int else float(value)

        params = {
            "prompt": values["prompt"] or "", "negative_prompt": values.get("negative_prompt") or "",
            "checkpoint": values.get("checkpoint") or None, "sampler": values.get("sampler") or "euler",
            "scheduler": values.get("scheduler") or "normal", "steps": number("steps", 20, int),
            "cfg": number("cfg", 7.0, float), "seed": browser_seed(number("seed", -1, int)),
            "batch_size": number("batch_size", 1, int),
        }
        if img2img:  # the size is the init image's own (fitted to the limits), set by the engine
            params["denoise"] = number("denoise", 0.6, float)
        else:
            params["width"] = number("width", 512, int)
            params["height"] = number("height", 512, int)
        return GenerationParams.from_dict({**params, **(toolbox or {})})

    @friendly
    async def generate(self, mode: str, image: str | None, prompt: str, negative_prompt: str, checkpoint: str | None,
                       sampler: str | None, scheduler: str | None, steps: float, cfg: float, seed: float | None,
                       width: float, height: float, batch_size: float, batch_count: float, denoise: float,
                       request: gr.Request) -> tuple[list[str], int]:
        """Queue the batch and return at once; the watcher streams its progress."""
        values = {"prompt": prompt, "negative_prompt": negative_prompt, "checkpoint": checkpoint, "sampler": sampler,
                  "scheduler": scheduler, "steps": steps, "cfg": cfg, "seed": seed, "width": width, "height": height,
                  "batch_size": batch_size, "batch_count": batch_count, "denoise": denoise}
        return await self._queue(values, mode, image, request)

    async def _queue(self, values: dict[str, Any], mode: str, image: str | None, request: gr.Request, *,
                     toolbox: dict[str, Any] | None = None, mask: bytes | None = None) -> tuple[list[str], int]:
        img2img = mode == "img2img"
        params = self._params(values, img2img=img2img, toolbox=toolbox)  # checked before the image is read
        batch_count = values.get("batch_count")
        count = whole("batch_count", batch_count) if batch_count not in (None, "") else 1
        data = await self._init_image(image) if img2img else None
        jobs = await self.studio.submit(params, count=count, image=data, mask=mask if img2img else None,
                                        owner=_owner(request, self.auth_on))
        await self._watch(request, [job.id for job in jobs])
        size = f", {jobs[0].params['width']}×{jobs[0].params['height']}" if img2img and jobs else ""
        gr.Info(f"Queued {len(jobs)} job(s)" + (f", seed {jobs[0].params['seed']}" if jobs else "") + size + ".")
        if jobs and jobs[0].note:
            gr.Warning(jobs[0].note)
        return self.watched(request), int(jobs[0].params["seed"])

    def _session(self, request: gr.Request | None) -> tuple[str | None, str]:
        return _owner(request, self.auth_on), getattr(request, "session_hash", None) or "default"

    async def _watch(self, request: gr.Request | None, job_ids: list[str]) -> None:
        key = self._session(request)
        keep = [i for i in self._watched.get(key, []) if not await self._final(i)]
        self._follow(key, (keep + [i for i in job_ids if i not in keep])[-WATCH_LIMIT:])

    def _follow(self, key: tuple[str | None, str], job_ids: list[str]) -> None:
        self._watched[key] = job_ids
        self._watched.move_to_end(key)
        # Session hashes come from browsers: keep a bound, and a user's own first (with logins, one user
        # making up sessions must not push out everyone else's followed jobs).
        owner = key[0]
        if owner is not None:
            theirs = [k for k in self._watched if k[0] == owner]
            for old in theirs[:max(0, len(theirs) - SESSIONS_PER_USER)]:
                del self._watched[old]
        while len(self._watched) > WATCHED_SESSIONS:
            self._watched.popitem(last=False)

    def watched(self, request: gr.Request | None) -> list[str]:
        return list(self._watched.get(self._session(request), []))

    def forget_session(self, request: gr.Request) -> None:
        with contextlib.suppress(gr.Error):
            self._watched.pop(self._session(request), None)

    async def _mine(self, job_ids: list[str], request: gr.Request | None) -> list[Job]:
        """The jobs among ``job_ids`` that exist and the caller may see, in order."""
        found = []
        for job_id in job_ids:
            with contextlib.suppress(ComfyError):
                found.append(await self._own(job_id, request))
        return found

    async def _final(self, job_id: str) -> bool:
        try:
            return (await self.studio.job(job_id)).state.is_final
        except ComfyError:
            return True

    @friendly
    async def stop(self, request: gr.Request) -> None:
        """Cancel this page's unfinished jobs; the running one is interrupted on ComfyUI as well."""
        stopped = 0
        for job in await self._mine(self.watched(request), request):
            if not job.state.is_final:
                await self.studio.cancel(job.id)
                stopped += 1
        gr.Info(f"Stopping {stopped} job(s)." if stopped else "Nothing is running.")

    async def restore_jobs(self, stored: list[str] | None, request: gr.Request) -> list[str]:
        """After a reload: follow again the jobs this browser was following (those of this user)."""
        ids = [i for i in (stored or []) if isinstance(i, str)][-WATCH_LIMIT:]
        known = [job.id for job in await self._mine(ids, request)]
        self._follow(self._session(request), known)
        return self.watched(request)

    async def watch(self, request: gr.Request) -> AsyncIterator[tuple[str, Any, list[Any]]]:
        """Stream progress, the latest preview and finished images until this page's jobs are done."""
        with self.streams.slot(self.streams.caller(request, _owner(request, self.auth_on))):
            async for update in self._watch_updates(request):
                yield update

    async def _watch_updates(self, request: gr.Request) -> AsyncIterator[tuple[str, Any, list[Any]]]:
        sub = self.studio.bus.subscribe()
        live: dict[str, JobEvent] = {}
        preview: Image.Image | None = None
        try:
            while True:
                jobs = await self._mine(self.watched(request), request)
                ids = [job.id for job in jobs]
                yield await self._render_watch(jobs, live, preview)
                if all(job.state.is_final for job in jobs):
                    return
                try:
                    event = await sub.get(timeout=1.0)
                except asyncio.TimeoutError:
                    continue
                for event in [event, *sub.drain()]:  # coalesce a burst into one update
                    if event.job_id not in ids:
                        continue
                    if event.kind == "preview" and event.preview:
                        preview = _decode_preview(event.preview) or preview
                    else:
                        live[event.job_id] = event
        finally:
            sub.close()

    async def _render_watch(self, jobs: list[Job], live: dict[str, JobEvent],
                            preview: Any) -> tuple[str, Any, list[Any]]:
        positions = {job.id: await self.studio.position(job.id) for job in jobs if job.state is JobState.QUEUED}
        shown = [j for j in jobs if not j.state.is_final] or jobs[-4:]
        gallery = []
        for job in reversed(jobs):
            urls = await self.images(job)
            gallery += [(url, render.image_caption(job, i, len(urls))) for i, url in enumerate(urls)]
        gallery = gallery[:GALLERY_LIMIT]
        if gallery and all(job.state.is_final for job in jobs):
            preview = gallery[0][0]  # done: the latent preview gives way to the newest image
        several = len(self.studio.pool.backends) > 1
        down = self.studio.pool.down_reason()
        return render.progress_html(shown, live, positions, show_backend=several, down=down), preview, gallery

    async def images(self, job: Job) -> list[str]:
        """A job's images as the page can show them: presigned URLs once in S3, else the local files."""
        try:
            urls = await self.studio.image_urls(job)
        except ComfyError as exc:
            logger.warning("Cannot show the images of job %s: %s", job.id, exc)
            return []
        shown = [u for u in urls if u.startswith(("http://", "https://")) or Path(u).is_file()]
        if self.copies is None:
            return shown
        copies = self.copies
        return await asyncio.to_thread(  # a copy may be made: file work, off the event loop
            lambda: [u if u.startswith(("http://", "https://")) else copies.copy(job.id, u) for u in shown])

    # -- queue & history --------------------------------------------------------------------------

    @friendly
    async def history(self, state: str, cursor: int | None,
                      request: gr.Request) -> tuple[list[list[Any]], list[Any], int | None, list[str]]:
        """One page of the table: rows (short ids), a thumbnail per job, the next cursor, and the rows' full ids."""
        try:
            states = None if state in ("", "all", None) else [JobState(state)]
        except ValueError:
            raise gr.Error(f"Show: {state!r} is not a state; choose all, "
                           f"{', '.join(s.value for s in JobState)}.") from None
        page = await self.studio.jobs(states=states, **self._whose(request), limit=25, cursor=cursor)
        positions = {job.id: await self.studio.position(job.id) for job in page.jobs if job.state is JobState.QUEUED}
        thumbs = []  # every image of the page, for the lightbox: "<job id> · 2 of 4 · state · prompt"
        for job in page.jobs:
            images = await self.images(job)
            thumbs += [(url, f"{job.id} · {i + 1} of {len(images)} · {render.job_caption(job)}")
                       for i, url in enumerate(images)]
        thumbs = thumbs[:HISTORY_IMAGES]
        rows = render.job_rows(page.jobs, positions, self.studio.pool.down_reason())
        return rows, thumbs, page.next_cursor, [job.id for job in page.jobs]

    async def _resolve(self, job_id: str, request: gr.Request | None) -> Job:
        """The job named by its id or by the short id the table shows (the first characters)."""
        job_id = job_id.strip()
        if len(job_id) >= 16:
            return await self._own(job_id, request)
        if len(job_id) >= 4:
            page = await self.studio.jobs(**self._whose(request), limit=200)
            matches = [job for job in page.jobs if job.id.startswith(job_id)]
            if len(matches) == 1:
                return matches[0]
        raise JobNotFound(job_id)

    async def _own(self, job_id: str, request: gr.Request | None) -> Job:
        """The job if the caller may see it; another user's job is "not found", as on the REST API."""
        owner = _owner(request, self.auth_on)
        job = await self.studio.job(job_id)
        if self.scoped and job.owner != owner:
            raise JobNotFound(job_id)
        return job

    def _whose(self, request: gr.Request | None) -> dict[str, Any]:
        """The owner filter of this page's listings: its owner's jobs (only those nobody owns when that is None)."""
        owner = _owner(request, self.auth_on)
        return {"owner": owner, "unowned": self.scoped and owner is None}

    @friendly
    async def job_detail(self, job_id: str | None, request: gr.Request) -> tuple[Any, ...]:
        """The detail panel: summary, settings as text and as JSON, images, and which buttons apply.

        An id that names no job (of this user) clears the panel and says so, rather than keeping the last one.
        """
        buttons = (gr.update(visible=False), gr.update(visible=False))
        if not job_id or not job_id.strip():
            return "Select a job in the table.", "", {}, [], *buttons
        try:
            job = await self._resolve(job_id, request)
        except ComfyError as exc:  # another user's job is "not found" too, and shows nothing of it
            return str(exc), "", {}, [], *buttons
        urls = await self.images(job)
        images = [(url, render.image_caption(job, i, len(urls))) for i, url in enumerate(urls)]
        settings = {k: v for k, v in job.params.items() if k != "images"}
        position = await self.studio.position(job.id)
        buttons = (gr.update(visible=not job.state.is_final), gr.update(visible=job.state is JobState.QUEUED))
        return (render.job_summary(job, position), render.settings_text(settings), settings,
                gr.update(value=images, visible=bool(images)), *buttons)

    @friendly
    async def cancel_job(self, job_id: str | None, request: gr.Request) -> None:
        if not job_id:
            raise WorkflowError("Select a job first.", field="job")
        job = await self._resolve(job_id, request)
        if job.state.is_final:
            gr.Info(f"Job {job.id[:8]} has already {job.state.value}.")
            return
        await self.studio.cancel(job.id)
        gr.Info("Cancelled." if job.state is JobState.QUEUED else "Stopping it on the backend.")

    @friendly
    async def move_to_front(self, job_id: str | None, request: gr.Request) -> None:
        if not job_id:
            raise WorkflowError("Select a queued job first.", field="job")
        job = await self._resolve(job_id, request)
        if job.state is not JobState.QUEUED:
            raise WorkflowError(f"Job {job.id[:8]} is {job.state.value}; only a queued job can move.", field="job")
        await self.studio.move_to_front(job.id)
        gr.Info("It runs next.")

    @friendly
    async def reuse_settings(self, job_id: str | None, request: gr.Request) -> list[Any]:
        """The form values of a finished job ("use these settings")."""
        if not job_id:
            raise WorkflowError("Select a job first.", field="job")
        job = await self._resolve(job_id, request)
        if job.kind != "generate":
            raise WorkflowError("That job ran a loaded workflow; reopen it in the Workflow tab.", field="job")
        return await self.form_values(job.params)

    async def form_values(self, params: dict[str, Any]) -> list[Any]:
        """gr.update()s for the form fields, leaving alone what ``params`` does not say.

        A checkpoint, sampler or scheduler the server does not offer is left as it is, with a warning
        that names it: setting a value outside a dropdown's choices fails the whole update.
        """
        models = await self.studio.models()
        offered = {"checkpoint": models.checkpoints, "sampler": models.samplers, "scheduler": models.schedulers}
        missing = [f"{name} {params[name]!r}" for name, choices in offered.items()
                   if params.get(name) is not None and params[name] not in choices]
        if missing:
            gr.Warning(f"The server has no {' and no '.join(missing)}, so that was left as it is; "
                       "the other settings were filled in.")
        skip = {"batch_count", *(name for name in offered if params.get(name) not in offered[name])}
        return [gr.update(value=params[name]) if params.get(name) is not None and name not in skip else gr.update()
                for name in FORM_FIELDS]

    @friendly
    async def send_to_img2img(self, job_id: str | None, request: gr.Request) -> str:
        if not job_id:
            raise WorkflowError("Select a finished job first.", field="job")
        job = await self._resolve(job_id, request)
        if not job.outputs:
            raise WorkflowError("That job has no image yet.", field="job")
        images = await self.images(job)
        if not images:
            raise WorkflowError("That job's images are no longer available.", field="job")
        return images[0]

    # -- PNG info ---------------------------------------------------------------------------------

    @friendly
    def png_info(self, path: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
        if not path:
            return "Drop a PNG to read its settings.", {}, {}
        try:
            info = read_png_info(Path(path).read_bytes())
        except WorkflowError as exc:  # a toast that says so; a raised error would also mark the outputs "Error"
            gr.Warning(str(exc))
            return f"_{exc}_", {}, {}
        source = {"comfyui_studio": "ComfyUI Studio", "a1111": "AUTOMATIC1111-style parameters",
                  "comfyui": "a ComfyUI workflow", "none": "nothing: this PNG carries no generation settings"}
        return f"Settings read from **{source[info.source]}**.", info.params, _shown_texts(info.texts)

    @friendly
    async def png_to_form(self, params: dict[str, Any] | None) -> list[Any]:
        if not params or not params.get("prompt"):
            raise WorkflowError("This PNG has no settings to use.", field="image")
        return await self.form_values(params)

    # -- workflows --------------------------------------------------------------------------------

    def saved_workflows(self, request: gr.Request) -> Any:
        """The saved-workflows list of this user (their own and the shared ones)."""
        return gr.update(choices=self.studio.library.names(_owner(request, self.auth_on)))

    @friendly
    async def load_workflow(self, file: str | None, pasted: str | None, saved: str | None,
                            request: gr.Request = None) -> dict[str, Any]:  # type: ignore[assignment]
        """Parse a workflow (file, pasted JSON or a saved one) and discover its editable inputs."""
        if file:
            data = Path(file).read_bytes()
            graph = (workflows.workflow_from_png(data) if data[:4] == b"\x89PNG" else workflows.parse_workflow(data))
            name = Path(file).stem
        elif pasted and pasted.strip():
            graph, name = workflows.parse_workflow(pasted), "pasted workflow"
        elif saved:
            graph, name = self.studio.library.load(saved, _owner(request, self.auth_on)), saved
        else:
            raise WorkflowError("Choose a workflow file, paste its JSON, or pick a saved one.", field="workflow")
        info = await self.studio.object_info()
        if info is not None:
            workflows.validate(graph, info, pending_uploads=True)
        inputs = workflows.discover_inputs(graph, info)
        return {"name": name, "graph": graph, "inputs": [_input_dict(i) for i in inputs]}

    @friendly
    def save_workflow(self, loaded: dict[str, Any] | None, name: str,
                      request: gr.Request = None) -> Any:  # type: ignore[assignment]
        if not loaded:
            raise WorkflowError("Load a workflow first.", field="workflow")
        owner = _owner(request, self.auth_on)  # with logins, into this user's own library only
        saved = self.studio.library.save(name or loaded["name"], loaded["graph"], owner)
        gr.Info(f"Saved as {saved!r}.")
        return gr.update(choices=self.studio.library.names(owner), value=saved)

    @friendly
    async def run_workflow(self, loaded: dict[str, Any] | None, values: list[Any], request: gr.Request,
                           random_seeds: set[int] | frozenset[int] = frozenset()) -> list[str]:
        """Queue the loaded workflow with the values of its widgets (in the order of ``loaded["inputs"]``).

        ``random_seeds``: the indexes of seed inputs to draw afresh. The job's history shows the workflow's
        prompt text and name (``params``), not just "workflow".
        """
        if not loaded:
            raise WorkflowError("Load a workflow first.", field="workflow")
        inputs: dict[tuple[str, str], Any] = {}
        images: dict[str, bytes] = {}
        shown: dict[str, Any] = {"workflow_name": loaded["name"]}
        for index, (spec, value) in enumerate(zip(loaded["inputs"], values)):
            if spec["kind"] == "image":
                if value:
                    images[spec["node_id"]] = Path(value).read_bytes()
                continue
            if index in random_seeds:
                high = int(spec.get("max") or 2**32 - 1)
                value = secrets.randbelow(min(high, 2**53) + 1)  # a seed JSON and the page carry exactly
            if value is None:
                continue
            value = workflow_value(spec, value)
            inputs[(spec["node_id"], spec["input_name"])] = value
            param = spec.get("param")
            if param and param not in shown and param in _SHOWN_PARAMS:
                shown[param] = value
        job = await self.studio.submit_workflow(loaded["graph"], inputs=inputs, images=images,
                                                owner=_owner(request, self.auth_on), params=shown)
        await self._watch(request, [job.id])
        seed = f", seed {shown['seed']}" if "seed" in shown else ""
        gr.Info(f"Queued workflow {loaded['name']!r}{seed}.")
        return self.watched(request)


#: The studio parameters a workflow job records for its history row, settings text and PNG metadata.
_SHOWN_PARAMS = ("prompt", "negative_prompt", "checkpoint", "sampler", "scheduler", "steps", "cfg", "seed", "width",
                 "height", "batch_size", "denoise")


#: The most of one PNG text chunk the page shows: a settings panel, not a viewer for megabytes of JSON.
SHOWN_TEXT_CHARS = 64 * 1024


def _shown_texts(texts: dict[str, str]) -> dict[str, str]:
    """
    >>> _shown_texts({"prompt": "x" * 70_000})["prompt"][-32:]
    '… (70,000 characters; not shown)'
    """
    return {key: value if len(value) <= SHOWN_TEXT_CHARS
            else f"{value[:2000]}… ({len(value):,} characters; not shown)" for key, value in texts.items()}


def storable_form(*values: Any) -> dict[str, Any]:
    """The form as the browser keeps it: a number JSON cannot carry exactly (a seed of 10**23) is not kept,
    since one such value would break the page's event stream."""
    return {name: None if isinstance(value, int) and not -2**63 <= value < 2**63 else value
            for name, value in zip(FORM_FIELDS, values)}


def _decode_preview(data: bytes) -> Image.Image | None:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except OSError:
        return None


def _input_dict(item: workflows.EditableInput) -> dict[str, Any]:
    return {
        "node_id": item.node_id, "input_name": item.input_name, "label": item.label, "kind": item.kind,
        "value": item.value, "min": item.min, "max": item.max, "step": item.step,
        "choices": list(item.choices) if item.choices else None, "multiline": item.multiline,
        "node_title": item.node_title, "class_type": item.class_type, "param": item.param,
    }

