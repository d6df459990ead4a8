"""The studio's page: components and how their events are wired to :class:`ui.handlers.Handlers`.

Layout: a status header; on the left the tabs (Generate with its Text-to-image and Image-to-image
tabs, Workflow, Queue & history, PNG info); on the right what is running now (progress, the latest
preview, finished images). Form settings live in the browser (``gr.BrowserState``), the jobs in the
engine's queue, so neither a reload nor a restart loses anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from comfy import Settings, Studio
from ui import render
from ui.files import PageCopies
from ui.handlers import FORM_FIELDS, Handlers, storable_form

__all__ = ["build_ui", "CSS", "HEAD", "uploaded_image"]

CSS = """
.studio-demo { font-size: 0.92em; padding: 8px 12px; border-radius: 8px; background: #fff7e0; color: #5c4400; border: 1px solid #f0d58a; }
.studio-status { font-size: 0.9em; padding: 6px 10px; border-radius: 8px; }
.studio-status .dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%; margin-right: 6px; }
.studio-status.up .dot { background: #1f9d55; }
.studio-status.down { background: #fdecec; color: #8a1f1f; }
.studio-status.down .dot { background: #d64545; }
.studio-status ul.backends { list-style: none; margin: 4px 0 0; padding: 0; }
.studio-status li.up .dot { background: #1f9d55; }
.studio-status li.down { color: #8a1f1f; }
.studio-status li.down .dot { background: #d64545; }
.studio-progress { display: flex; flex-direction: column; gap: 10px; min-height: 48px; }
.studio-progress.idle { color: #8a8f98; }
.studio-progress .line { display: flex; justify-content: space-between; gap: 8px; font-size: 0.9em; }
.studio-progress .what { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.studio-progress .bar { height: 8px; background: #e5e7eb; border-radius: 4px; overflow: hidden; }
.studio-progress .fill { height: 100%; transition: width 0.2s; }
.studio-progress .detail { font-size: 0.8em; color: #6b7280; }
#generate-btn { min-height: 48px; }
"""

#: Ctrl/Cmd+Enter anywhere on the page presses Generate.
HEAD = """
<script>
document.addEventListener('keydown', (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
    const btn = document.querySelector('#generate-btn');
    if (btn) { e.preventDefault(); btn.click(); }
  }
});
</script>
"""


def build_ui(studio: Studio, settings: Settings, *, auth_on: bool = False, browser_secret: str = "",
             copies: PageCopies | None = None) -> gr.Blocks:
    """The Blocks for one studio; ``browser_secret`` keeps saved form values readable across restarts.

    ``copies``: hand result images to Gradio as these owner-gated copies (see :mod:`ui.files`).
    """
    h = Handlers(studio, auth_on=auth_on, keys_on=bool(settings.keys()), copies=copies)
    limits = studio.limits
    with gr.Blocks(title="ComfyUI Studio") as demo:
        form_store = gr.BrowserState({}, storage_key="comfyui-studio-form", secret=browser_secret)
        jobs_store = gr.BrowserState([], storage_key="comfyui-studio-jobs", secret=browser_secret)
        watched = gr.State([])
        last_seed = gr.State(None)
        mode = gr.State("txt2img")

        gr.Markdown("## ComfyUI Studio")
        if settings.demo:
            gr.HTML(render.demo_banner(), elem_id="demo-banner")
        status = gr.HTML(elem_id="status")
        status_timer = gr.Timer(5.0)

        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Tabs(elem_id="tabs") as tabs:
                    with gr.Tab("Generate", id="generate") as generate_tab:
                        prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a lighthouse at dawn, oil painting",
                                            elem_id="prompt")
                        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="negative")
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="generate-btn", scale=3)
                            stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
                        with gr.Tabs(elem_id="mode-tabs") as mode_tabs:
                            with gr.Tab("Text to image", id="txt2img") as txt2img_tab:
                                with gr.Row():
                                    aspect = gr.Dropdown(render.ASPECT_RATIOS, value="1:1", label="Aspect ratio")
                                    base = gr.Radio([512, 768, 1024], value=512, label="Base size")
                                    swap = gr.Button("⇅ Swap", size="sm")
                                with gr.Row():
                                    width = _number("Width", 512, 64, limits.max_width, step=8)
                                    height = _number("Height", 512, 64, limits.max_height, step=8)
                            with gr.Tab("Image to image", id="img2img") as img2img_tab:
                                init_image = uploaded_image(label="Init image",
                                                            sources=["upload", "clipboard"], elem_id="init-image")
                                gr.Markdown(f"Runs at the image's own size; a larger one is scaled down to fit "
                                            f"{limits.max_width}×{limits.max_height} (sides in multiples of 8).",
                                            elem_id="img2img-size")
                                denoise = _number("Denoise strength", 0.6, 0.0, 1.0, step=0.01, whole=False)
                        with gr.Accordion("Model and sampler", open=True):
                            with gr.Row():
                                checkpoint = gr.Dropdown([], label="Checkpoint", scale=4, elem_id="checkpoint")
                                refresh = gr.Button("Refresh lists", size="sm", scale=1, min_width=80)
                            with gr.Row():
                                sampler = gr.Dropdown([], label="Sampler", elem_id="sampler")
                                scheduler = gr.Dropdown([], label="Scheduler", elem_id="scheduler")
                            with gr.Row():
                                steps = _number("Steps", 20, 1, limits.max_steps)
                                cfg = _number("CFG", 7.0, 0.0, 100.0, step=0.5, whole=False)
                            with gr.Row():
                                seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, scale=4)
                                dice = gr.Button("Random", size="sm", scale=1, min_width=70)
                                recycle = gr.Button("Last used", size="sm", scale=1, min_width=70)
                            with gr.Row():
                                batch_size = _number("Batch size", 1, 1, limits.max_batch_size)
                                batch_count = _number("Batch count", 1, 1, 100)

                    with gr.Tab("Workflow", id="workflow") as workflow_tab:
                        gr.Markdown("Load any ComfyUI workflow in **API format** (*Export (API)* in ComfyUI) or a "
                                    "PNG ComfyUI made; its inputs appear below.")
                        with gr.Row():
                            wf_file = gr.File(label="Workflow file (.json or .png)", file_types=[".json", ".png"])
                            wf_paste = gr.Code(label="…or paste API-format JSON", language="json", lines=6)
                        with gr.Row():
                            wf_saved = gr.Dropdown(studio.library.names(), label="Saved workflows", value=None)
                            wf_load = gr.Button("Load workflow", variant="secondary")
                        with gr.Row():
                            wf_name = gr.Textbox(label="Save as", placeholder="my portrait workflow", scale=3)
                            wf_save = gr.Button("Save", size="sm", scale=1)
                        wf_state = gr.State(None)

                        @gr.render(inputs=wf_state)
                        def workflow_inputs(loaded: dict[str, Any] | None) -> None:
                            if not loaded:
                                gr.Markdown("_No workflow loaded._")
                                return
                            gr.Markdown(f"**{loaded['name']}** · {len(loaded['inputs'])} editable input(s)")
                            components = [_widget(spec) for spec in loaded["inputs"]]
                            run = gr.Button("Run workflow", variant="primary", elem_id="run-workflow")
                            async def run_with(data: dict[Any, Any], request: gr.Request) -> list[str]:
                                # A set of inputs arrives as {component: value}: the widget count varies.
                                return await h.run_workflow(data[wf_state], [data[c] for c in components], request)

                            run.click(run_with, {wf_state, *components}, watched, concurrency_limit=None,
                                      api_visibility="private").then(
                                h.watch, None, [progress, preview, gallery], concurrency_limit=None,
                                trigger_mode="always_last", api_visibility="private", show_progress="hidden")

                    with gr.Tab("Queue & history", id="history") as history_tab:
                        with gr.Row(equal_height=True):
                            state_filter = gr.Dropdown(["all", "queued", "running", "succeeded", "failed",
                                                        "cancelled"], value="all", label="Show", scale=2)
                            newer = gr.Button("◀ Newer", size="sm", scale=1)
                            older = gr.Button("Older ▶", size="sm", scale=1)
                        table = gr.Dataframe(headers=render.JOB_COLUMNS, interactive=False, wrap=True,
                                             elem_id="jobs-table", max_height=420,
                                             column_widths=["17%", "11%", "7%", "9%", "26%", "16%", "8%", "6%"])
                        history_gallery = gr.Gallery(label="Images on this page", columns=6, height=220,
                                                     fit_columns=False, object_fit="cover",
                                                     elem_id="history-gallery")
                        with gr.Group():
                            selected = gr.Textbox(label="Selected job", interactive=True, elem_id="selected-job")
                            detail = gr.Markdown(elem_id="job-detail")
                            with gr.Row():
                                cancel_btn = gr.Button("Cancel", size="sm", variant="stop")
                                front_btn = gr.Button("Move to front", size="sm")
                                reuse_btn = gr.Button("Use these settings", size="sm")
                                send_btn = gr.Button("Send to img2img", size="sm")
                            job_images = gr.Gallery(label="Images", columns=4, height=300, fit_columns=False,
                                                    elem_id="job-images",
                                                    object_fit="contain",
                                                    buttons=["download", "download_all", "fullscreen"])
                            job_settings = gr.JSON(label="Settings")
                        cursors = gr.State([None])  # the cursor of each page seen, to go back
                        history_timer = gr.Timer(2.0, active=False)

                    with gr.Tab("PNG info", id="pnginfo") as pnginfo_tab:
                        png_in = uploaded_image(label="Drop a PNG",
                                                sources=["upload", "clipboard"])
                        png_source = gr.Markdown()
                        png_params = gr.JSON(label="Settings")
                        with gr.Row():
                            png_use = gr.Button("Use these settings")
                            png_workflow = gr.Button("Open its workflow")
                        with gr.Accordion("All text chunks", open=False):
                            png_texts = gr.JSON(label="Text chunks")

            with gr.Column(scale=4):
                progress = gr.HTML(render.progress_html([], {}, {}), elem_id="progress")
                preview = gr.Image(label="Preview", interactive=False, height=320, elem_id="preview",
                                   format="jpeg")
                gallery = gr.Gallery(label="Results", columns=3, height=420, preview=False, elem_id="gallery",
                                     object_fit="contain", buttons=["download", "download_all", "fullscreen"])

        form = [prompt, negative, checkpoint, sampler, scheduler, steps, cfg, seed, width, height, batch_size,
                batch_count, denoise]
        assert len(form) == len(FORM_FIELDS)
        private: dict[str, Any] = {"api_visibility": "private"}
        watch_kwargs: dict[str, Any] = {"concurrency_limit": None, "trigger_mode": "always_last",
                                        "show_progress": "hidden", **private}

        # Page load: the jobs this browser followed (and follow them again); the lists and saved form values.
        demo.load(h.restore_jobs, jobs_store, watched, **private).then(
            h.watch, None, [progress, preview, gallery], **watch_kwargs)
        demo.load(h.restore_form, [form_store, *form], form, **private)
        demo.load(h.status, None, status, **private)
        demo.load(h.saved_workflows, None, wf_saved, **private)
        demo.unload(h.forget_session)
        status_timer.tick(h.status, None, status, show_progress="hidden", **private)
        gr.on([c.change for c in form], storable_form, form, form_store,
              trigger_mode="always_last", show_progress="hidden", **private)

        # Generate returns at once; the watcher streams (concurrency_limit=None: waiting on ComfyUI is I/O).
        txt2img_tab.select(lambda: "txt2img", None, mode, **private)
        img2img_tab.select(lambda: "img2img", None, mode, **private)
        generate.click(h.generate, [mode, init_image, *form], [watched, last_seed], concurrency_limit=None,
                       api_name="ui_generate", **private).then(lambda ids: ids, watched, jobs_store, **private).then(
            h.watch, None, [progress, preview, gallery], **watch_kwargs)
        stop.click(h.stop, None, None, concurrency_limit=None, **private)
        refresh.click(lambda c, s, sc: h.load_models(c, s, sc, refresh=True), [checkpoint, sampler, scheduler],
                      [checkpoint, sampler, scheduler], **private)
        dice.click(lambda: -1, None, seed, **private)
        recycle.click(lambda last: last if last is not None else -1, last_seed, seed, **private)
        aspect.change(render.aspect_size, [aspect, base], [width, height], **private)
        base.change(render.aspect_size, [aspect, base], [width, height], **private)
        swap.click(lambda w, hh: (hh, w), [width, height], [width, height], **private)

        # Workflow tab.
        wf_load.click(h.load_workflow, [wf_file, wf_paste, wf_saved], wf_state, **private)
        wf_save.click(h.save_workflow, [wf_state, wf_name], wf_saved, **private)

        # Queue & history: refreshed while the tab is open.
        async def show_page(state: str, pages: list[Any], request: gr.Request) -> tuple[Any, Any]:
            rows, thumbs, _next = await h.history(state, pages[-1], request)
            return rows, thumbs

        history_outputs = [table, history_gallery]
        history_tab.select(lambda: gr.Timer(active=True), None, history_timer, **private).then(
            show_page, [state_filter, cursors], history_outputs, **private)
        for other in (generate_tab, workflow_tab, pnginfo_tab):
            other.select(lambda: gr.Timer(active=False), None, history_timer, **private)
        history_timer.tick(show_page, [state_filter, cursors], history_outputs, show_progress="hidden", **private)
        state_filter.change(lambda: [None], None, cursors, **private).then(
            show_page, [state_filter, cursors], history_outputs, **private)

        async def go_older(state: str, pages: list[Any], request: gr.Request) -> list[Any]:
            _rows, _thumbs, next_cursor = await h.history(state, pages[-1], request)
            return pages + [next_cursor] if next_cursor is not None else pages

        older.click(go_older, [state_filter, cursors], cursors, **private).then(
            show_page, [state_filter, cursors], history_outputs, **private)
        newer.click(lambda pages: pages[:-1] or [None], cursors, cursors, **private).then(
            show_page, [state_filter, cursors], history_outputs, **private)

        def pick_row(data: gr.SelectData) -> str:
            row = data.row_value if getattr(data, "row_value", None) else None
            return str(row[0]) if row else ""

        def pick_thumb(data: gr.SelectData) -> str:
            caption = (data.value or {}).get("caption") or ""  # "<job id> · state · prompt"
            return caption.split(" · ", 1)[0]

        table.select(pick_row, None, selected, **private)
        history_gallery.select(pick_thumb, None, selected, **private)
        selected.change(h.job_detail, selected, [detail, job_settings, job_images], **private)
        cancel_btn.click(h.cancel_job, selected, None, **private).then(
            h.job_detail, selected, [detail, job_settings, job_images], **private)
        front_btn.click(h.move_to_front, selected, None, **private).then(
            show_page, [state_filter, cursors], history_outputs, **private)
        reuse_btn.click(h.reuse_settings, selected, form, **private).then(
            lambda: (gr.Tabs(selected="generate"), gr.Tabs(selected="txt2img"), "txt2img"), None,
            [tabs, mode_tabs, mode], **private)
        send_btn.click(h.send_to_img2img, selected, init_image, **private).then(
            h.reuse_settings, selected, form, **private).then(
            lambda: (gr.Tabs(selected="generate"), gr.Tabs(selected="img2img"), "img2img"), None,
            [tabs, mode_tabs, mode], **private)

        # PNG info.
        png_in.change(h.png_info, png_in, [png_source, png_params, png_texts], **private)
        png_use.click(h.png_to_form, png_params, form, **private).then(
            lambda: (gr.Tabs(selected="generate"), gr.Tabs(selected="txt2img"), "txt2img"), None,
            [tabs, mode_tabs, mode], **private)

        png_workflow.click(h.load_workflow, [png_in, gr.State(None), gr.State(None)], wf_state, **private).then(
            lambda: gr.Tabs(selected="workflow"), None, tabs, **private)

        # The Gradio API for scripts (gradio_client): /generate, /job_status, /cancel, /jobs.
        gr.api(h.api_generate, api_name="generate", concurrency_limit=None)
        gr.api(h.api_job_status, api_name="job_status", concurrency_limit=None)
        gr.api(h.api_cancel, api_name="cancel", concurrency_limit=None)
        gr.api(h.api_jobs, api_name="jobs", concurrency_limit=None)
    return demo


def uploaded_image(**kwargs: Any) -> gr.Image:
    """An image upload (``type="filepath"``) that reaches its handler as the file's path, never decoded on the way.

    ``gr.Image`` opens every upload with Pillow before the handler runs, so a decompression bomb failed
    there without a word; the engine checks and decodes uploads itself, in a thread, and says what is wrong.
    (A subclass would make Gradio write a ``.pyi`` beside this file, so the one instance is adapted.)
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    decode = image.preprocess

    def path_only(payload: Any) -> Any:
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return decode(payload)

    image.preprocess = path_only  # type: ignore[method-assign]
    return image


def _number(label: str, value: float, low: float, high: float, *, step: float = 1, whole: bool = True) -> gr.Number:
    """A number box that keeps what was typed: the engine refuses a value out of range with a sentence,
    where a slider would clamp it silently after a toast and queue the clamped value."""
    shown = f"{low:g}" + f" to {high:g}" + (f", in steps of {step:g}" if whole and step > 1 else "")
    return gr.Number(value, label=label, info=shown, step=step, precision=0 if whole else None, min_width=120)


def _widget(spec: dict[str, Any]) -> Any:
    """The component for one discovered workflow input."""
    label = spec["label"]
    kind = spec["kind"]
    elem = {"elem_id": f"wf-{spec['node_id']}-{spec['input_name']}", "interactive": True}
    if kind == "combo" and spec.get("choices"):
        value = spec["value"] if spec["value"] in spec["choices"] else spec["choices"][0]
        return gr.Dropdown(spec["choices"], value=value, label=label, **elem)
    if kind == "bool":
        return gr.Checkbox(bool(spec["value"]), label=label, **elem)
    if kind in ("int", "float"):
        return gr.Number(spec["value"], label=label, minimum=spec.get("min"), maximum=spec.get("max"),
                         step=spec.get("step") or (1 if kind == "int" else 0.01), precision=0 if kind == "int" else None,
                         **elem)
    if kind == "image":
        return uploaded_image(label=f"{label} (leave empty to keep {spec['value']!r})", **elem)
    return gr.Textbox(str(spec["value"] if spec["value"] is not None else ""), label=label,
                      lines=3 if spec.get("multiline") else 1, **elem)


def outputs_paths(settings: Settings) -> list[str]:
    """Folders the page may serve files from: the saved outputs and kept inputs, nothing else."""
    return [str(Path(settings.outputs_dir).resolve()), str(Path(settings.inputs_dir).resolve())]
