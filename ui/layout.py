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
from ui.endpoints import named
from ui.files import PageCopies
from ui.handlers import FORM_FIELDS, Handlers, storable_form
from ui.history_tab import build_history_tab, wire_history_tab
from ui.inputs import uploaded_image
from ui.style import CSS, HEAD
from ui.workflow_tab import build_workflow_tab
from ui.plot_tab import build_plot
from ui.toolbox import RESTORED_FIELDS
from ui.toolbox_panel import build_inpaint, build_toolbox, restored_outputs, wire_toolbox

__all__ = ["build_ui", "CSS", "HEAD", "uploaded_image"]

def build_ui(studio: Studio, settings: Settings, *, auth_on: bool = False, browser_secret: str = "",
             copies: PageCopies | None = None) -> gr.Blocks:
    """The Blocks for one studio; ``browser_secret`` keeps saved form values readable across restarts.

    ``copies``: hand result images to Gradio as these owner-gated copies (see :mod:`ui.files`).
    """
    h = Handlers(studio, auth_on=auth_on, keys_on=bool(settings.keys()), copies=copies)
    limits = studio.limits
    # Uploads and the files Gradio made for this page are deleted after a day, checked hourly (a result's
    # owner-gated copy is made again when it is shown again).
    with gr.Blocks(title="ComfyUI Studio", delete_cache=(3600, 86400)) as demo:
        form_store = gr.BrowserState({}, storage_key="comfyui-studio-form", secret=browser_secret)
        shape_store = gr.BrowserState(["1:1", 512], storage_key="comfyui-studio-shape", secret=browser_secret)
        jobs_store = gr.BrowserState([], storage_key="comfyui-studio-jobs", secret=browser_secret)
        toolbox_store = gr.BrowserState({}, storage_key="comfyui-studio-toolbox", secret=browser_secret)
        watched = gr.State([])
        last_seed = gr.State(None)
        mode = gr.State("txt2img")

        gr.Markdown("## ComfyUI Studio")
        if settings.demo:
            gr.HTML(render.demo_banner(), elem_id="demo-banner")
        status = gr.HTML(elem_id="status")
        status_timer = gr.Timer(1.0)  # reads the engine's cached backend state: no request to a backend
        status_shown = gr.State("")

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
                                inpaint = build_inpaint()
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
                        toolbox = build_toolbox()
                        plot = build_plot()

                    with gr.Tab("Workflow", id="workflow") as workflow_tab:
                        wf = build_workflow_tab(h, studio, watched, lambda: [progress, preview, gallery])

                    with gr.Tab("Queue & history", id="history") as history_tab:
                        hist = build_history_tab()

                    with gr.Tab("PNG info", id="pnginfo") as pnginfo_tab:
                        png_in = uploaded_image(label="Drop a PNG", sources=["upload", "clipboard"], elem_id="png-in")
                        png_source = gr.Markdown()
                        png_params = gr.JSON(label="Settings")
                        with gr.Row():
                            png_use = gr.Button("Use these settings")
                            png_workflow = gr.Button("Open its workflow")
                        with gr.Accordion("All text chunks", open=False):
                            png_texts = gr.JSON(label="Text chunks")

            with gr.Column(scale=4, elem_id="results-col"):
                progress = gr.HTML(render.progress_html([], {}, {}), elem_id="progress")
                preview = gr.Image(label="Preview", interactive=False, height=320, elem_id="preview",
                                   format="jpeg")
                gallery = gr.Gallery(label="Results", columns=3, height=420, preview=False, elem_id="gallery",
                                     object_fit="contain", buttons=["download", "download_all", "fullscreen"])

        form = [prompt, negative, checkpoint, sampler, scheduler, steps, cfg, seed, width, height, batch_size,
                batch_count, denoise]
        assert len(form) == len(FORM_FIELDS)
        private: dict[str, Any] = {"api_visibility": "private"}
        # Quick answers skip Gradio's queue (one POST, no event stream): the load handlers, so the form is
        # usable sooner, and the form's saving, which a reload fires a dozen times.
        quick: dict[str, Any] = {**private, "queue": False}
        watch_kwargs: dict[str, Any] = {"concurrency_limit": None, "trigger_mode": "always_last",
                                        "show_progress": "hidden", **private}

        # Page load: the jobs this browser followed (and follow them again); the lists and saved form values.
        demo.load(h.restore_jobs, jobs_store, watched, **private).then(
            h.watch, None, [progress, preview, gallery], **watch_kwargs)
        demo.load(h.restore_form, [form_store, *form], form, **quick)
        demo.load(h.status, None, [status], **quick)
        demo.load(h.saved_workflows, None, wf.saved, **quick)
        demo.unload(h.forget_session)
        status_timer.tick(h.status_tick, status_shown, [status, status_shown], show_progress="hidden", **private)
        gr.on([c.change for c in form], storable_form, form, form_store,
              trigger_mode="always_last", show_progress="hidden", **quick)

        # Generate returns at once; the watcher streams (concurrency_limit=None: waiting on ComfyUI is I/O).
        txt2img_tab.select(lambda: "txt2img", None, mode, **private)
        img2img_tab.select(lambda: "img2img", None, mode, **private)
        generate.click(h.generate_toolbox, [mode, init_image, *form, *toolbox.inputs, *inpaint.inputs],
                       [watched, last_seed], concurrency_limit=None,
                       api_name="ui_generate", **private).then(lambda ids: ids, watched, jobs_store, **private).then(
            h.watch, None, [progress, preview, gallery], **watch_kwargs)
        stop.click(h.stop, None, None, concurrency_limit=None, **private)
        # The toolbox: its lists, LoRA rows, the mask editor; the X/Y/Z plot fills its grid in as cells finish.
        lists = [*toolbox.names, toolbox.fields["vae"], toolbox.fields["hires_upscaler"], toolbox.fields["styles"]]
        wire_toolbox(toolbox, inpaint, init_image, checkpoint)
        restored = restored_outputs(toolbox, inpaint)
        kept = restored[:len(RESTORED_FIELDS)]  # the toolbox as this browser keeps it across reloads
        demo.load(h.toolbox_lists, lists, lists, **private).then(h.restore_toolbox, toolbox_store, restored, **private)
        gr.on([c.change for c in kept], lambda *v: dict(zip(RESTORED_FIELDS, v)), kept, toolbox_store,
              trigger_mode="always_last", show_progress="hidden", **private)
        plotted = plot.run.click(h.run_plot, [mode, init_image, *form, *toolbox.inputs, *inpaint.inputs,
                                              *plot.inputs], [watched, plot.grid_id, plot.grid, plot.status],
                                 concurrency_limit=None, **private)
        plotted.success(h.watch_plot, plot.grid_id, [plot.grid, plot.status], **watch_kwargs)
        plotted.then(lambda ids: ids, watched, jobs_store, **private).then(
            h.watch, None, [progress, preview, gallery], **watch_kwargs)
        refresh.click(lambda c, s, sc: h.load_models(c, s, sc, refresh=True), [checkpoint, sampler, scheduler],
                      [checkpoint, sampler, scheduler], **private).then(h.toolbox_lists, lists, lists, **private)
        dice.click(lambda: -1, None, seed, **private)
        recycle.click(lambda last: last if last is not None else -1, last_seed, seed, **private)
        # The person's choice sets the size (.input); a reload restores ratio and base without touching it.
        aspect.input(render.aspect_size, [aspect, base], [width, height], **private)
        base.input(render.aspect_size, [aspect, base], [width, height], **private)
        gr.on([aspect.change, base.change], lambda a, b: [a, b], [aspect, base], shape_store, **quick)
        demo.load(render.stored_shape, shape_store, [aspect, base], **quick)
        swap.click(lambda w, hh: (hh, w), [width, height], [width, height], **private)

        # Queue & history.
        wire_history_tab(h, hist, history_tab, [generate_tab, workflow_tab, pnginfo_tab])
        reused = hist.reuse.click(h.reuse_settings, hist.selected, form, **private)
        reused.success(h.toolbox_from_job, hist.selected, restored, **private)
        reused.then(
            lambda: (gr.Tabs(selected="generate"), gr.Tabs(selected="txt2img"), "txt2img"), None,
            [tabs, mode_tabs, mode], **private)
        sent = hist.send.click(h.send_to_img2img, hist.selected, init_image, **private).then(
            h.reuse_settings, hist.selected, form, **private)
        sent.success(h.toolbox_from_job, hist.selected, restored, **private)
        sent.then(
            lambda: (gr.Tabs(selected="generate"), gr.Tabs(selected="img2img"), "img2img"), None,
            [tabs, mode_tabs, mode], **private)

        # PNG info.
        png_in.change(h.png_info, png_in, [png_source, png_params, png_texts], **private)
        png_used = png_use.click(h.png_to_form, png_params, form, **private)
        png_used.success(h.toolbox_from_png, png_params, restored, **private)
        png_used.then(
            lambda: (gr.Tabs(selected="generate"), gr.Tabs(selected="txt2img"), "txt2img"), None,
            [tabs, mode_tabs, mode], **private)

        png_workflow.click(h.load_workflow, [png_in, gr.State(None), gr.State(None)], wf.state, **private).then(
            lambda: gr.Tabs(selected="workflow"), None, tabs, **private)

        # The Gradio API for scripts (gradio_client): /generate, /job_status, /cancel, /jobs.
        # With STUDIO_MCP=1 the same four are MCP tools, named alike, described by their docstrings.
        for name, fn in (("generate", h.api_generate), ("job_status", h.api_job_status), ("cancel", h.api_cancel),
                         ("jobs", h.api_jobs)):
            gr.api(named(fn, name), api_name=name, concurrency_limit=None)
    return demo


def _number(label: str, value: float, low: float, high: float, *, step: float = 1, whole: bool = True) -> gr.Number:
    """A number box that keeps what was typed: the engine refuses a value out of range with a sentence,
    where a slider would clamp it silently after a toast and queue the clamped value."""
    shown = f"{low:g}" + f" to {high:g}" + (f", in steps of {step:g}" if whole and step > 1 else "")
    return gr.Number(value, label=label, info=shown, step=step, precision=0 if whole else None, min_width=120)


def outputs_paths(settings: Settings) -> list[str]:
    """Folders the page may serve files from: the saved outputs and kept inputs, nothing else."""
    return [str(Path(settings.outputs_dir).resolve()), str(Path(settings.inputs_dir).resolve())]
