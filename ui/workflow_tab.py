"""The Workflow tab: load any API-format workflow (on upload, no extra press), edit its inputs node by node, run it.

Each node with editable inputs gets a box titled with the node's own title; numbers with a known range
are sliders, seeds a number with a "random" toggle. The job's history row shows the workflow's prompt
text and its progress bar the workflow's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from comfy import Studio
from ui.handlers import Handlers
from ui.inputs import uploaded_image

__all__ = ["WorkflowTab", "build_workflow_tab", "group_by_node", "widget"]

SLIDER_SPAN = 100_000  # a number whose range is wider than this (a seed's 2**64) stays a number box


class WorkflowTab:
    """The components other parts of the page wire to."""

    def __init__(self, state: gr.State, file: gr.File, saved: gr.Dropdown) -> None:
        self.state, self.file, self.saved = state, file, saved


def build_workflow_tab(h: Handlers, studio: Studio, watched: gr.State,
                       watch_targets: Callable[[], list[Any]]) -> WorkflowTab:
    """The tab's components (inside a ``gr.Tab``); ``watch_targets`` gives the progress/preview/results outputs
    (built after the tabs, so asked for when a workflow's inputs render)."""
    private: dict[str, Any] = {"api_visibility": "private"}
    gr.Markdown("Load any ComfyUI workflow in **API format** (*Export (API)* in ComfyUI) or a "
                "PNG ComfyUI made: it loads as soon as it is dropped, and its inputs appear below, node by node.")
    with gr.Row():
        wf_file = gr.File(label="Workflow file (.json or .png)", file_types=[".json", ".png"], elem_id="wf-file")
        with gr.Column():
            wf_saved = gr.Dropdown(studio.library.names(), label="Saved workflows", value=None, elem_id="wf-saved")
            with gr.Accordion("…or paste API-format JSON", open=False):
                wf_paste = gr.Code(language="json", lines=6, show_label=False)
                wf_paste_load = gr.Button("Load pasted JSON", size="sm")
    with gr.Row():
        wf_name = gr.Textbox(label="Save as", placeholder="my portrait workflow", scale=3)
        wf_save = gr.Button("Save", size="sm", scale=1)
    wf_state = gr.State(None)
    nothing = gr.State(None)

    @gr.render(inputs=wf_state)
    def workflow_inputs(loaded: dict[str, Any] | None) -> None:
        if not loaded:
            gr.Markdown("_No workflow loaded._", elem_id="wf-empty")
            return
        gr.Markdown(f"**{loaded['name']}** · {len(loaded['inputs'])} editable input(s)", elem_id="wf-loaded")
        run = gr.Button("Run workflow", variant="primary", elem_id="run-workflow")
        components: list[Any] = []
        randoms: dict[int, gr.Checkbox] = {}
        for title, specs in group_by_node(loaded["inputs"]):
            with gr.Group(elem_classes=["wf-node"]):
                gr.Markdown(title, elem_classes=["wf-node-title"])
                for spec in specs:
                    if is_seed(spec):
                        with gr.Row():
                            components.append(widget(spec, studio))
                            randoms[len(components) - 1] = gr.Checkbox(
                                False, label="random", min_width=80, scale=0,
                                elem_id=f"wf-{spec['node_id']}-{spec['input_name']}-random")
                    else:
                        components.append(widget(spec, studio))

        async def run_with(data: dict[Any, Any], request: gr.Request) -> list[str]:
            # A set of inputs arrives as {component: value}: the widget count varies.
            values = [data[c] for c in components]
            random_seeds = {i for i, box in randoms.items() if data[box]}
            return await h.run_workflow(data[wf_state], values, request, random_seeds=random_seeds)

        run.click(run_with, {wf_state, *components, *randoms.values()}, watched, concurrency_limit=None,
                  **private).then(
            h.watch, None, watch_targets(), concurrency_limit=None, trigger_mode="always_last",
            show_progress="hidden", **private)

    # Loaded as soon as it is dropped or picked; pasted JSON on its button (a paste is typed, not dropped).
    wf_file.upload(h.load_workflow, [wf_file, nothing, nothing], wf_state, **private)
    async def load_saved(name: str | None, request: gr.Request) -> dict[str, Any]:
        return await h.load_workflow(None, None, name, request)

    wf_saved.input(load_saved, wf_saved, wf_state, **private)
    wf_paste_load.click(h.load_workflow, [nothing, wf_paste, nothing], wf_state, **private)
    wf_save.click(h.save_workflow, [wf_state, wf_name], wf_saved, **private)
    return WorkflowTab(wf_state, wf_file, wf_saved)


def group_by_node(inputs: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The inputs grouped by node, in the order their nodes first appear; each group titled with the node's title.

    >>> group_by_node([{"node_id": "6", "node_title": "Prompt", "class_type": "CLIPTextEncode"},
    ...                {"node_id": "3", "node_title": "KSampler", "class_type": "KSampler"},
    ...                {"node_id": "6", "node_title": "Prompt", "class_type": "CLIPTextEncode"}])[0][0]
    '**Prompt** · node 6 (CLIPTextEncode)'
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for spec in inputs:
        groups.setdefault(spec["node_id"], []).append(spec)
    titled = []
    for node_id, specs in groups.items():
        first = specs[0]
        kind = f" ({first['class_type']})" if first["class_type"] != first["node_title"] else ""
        titled.append((f"**{first['node_title']}** · node {node_id}{kind}", specs))
    return titled


def is_seed(spec: dict[str, Any]) -> bool:
    return spec["kind"] == "int" and (spec.get("param") == "seed" or spec["input_name"] in ("seed", "noise_seed"))


def _slider_range(spec: dict[str, Any], studio: Studio) -> tuple[float, float] | None:
    low, high = spec.get("min"), spec.get("max")
    if low is None or high is None:
        return None
    limits = studio.limits
    cap = {"steps": limits.max_steps, "width": limits.max_width, "height": limits.max_height,
           "batch_size": limits.max_batch_size, "cfg": 30.0}.get(spec.get("param") or "")
    if cap is not None:
        high = min(high, cap)
    value = spec.get("value")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = min(low, value), max(high, value)  # never clamp the workflow's own value
    return (low, high) if high - low <= SLIDER_SPAN else None


def widget(spec: dict[str, Any], studio: Studio) -> Any:
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
        step = spec.get("step") or (1 if kind == "int" else 0.01)
        span = None if is_seed(spec) else _slider_range(spec, studio)
        if span is not None:
            return gr.Slider(span[0], span[1], value=spec["value"], step=step, label=label, **elem)
        # The range is checked by the run (a sentence naming this input); Gradio's own check names no field.
        low, high = spec.get("min"), spec.get("max")
        info = f"{low} to {high}" if low is not None and high is not None else None
        return gr.Number(spec["value"], label=label, info=info, step=step,
                         precision=0 if kind == "int" else None, scale=4, **elem)
    if kind == "image":
        return uploaded_image(label=f"{label} (leave empty to keep {spec['value']!r})", **elem)
    return gr.Textbox(str(spec["value"] if spec["value"] is not None else ""), label=label,
                      lines=3 if spec.get("multiline") else 1, **elem)
