"""The Queue & history tab: a page of jobs (short ids, human times), the selected job's detail and actions.

The buttons follow the job's state: Cancel while it is not done, Move to front while it is queued. The
settings show as AUTOMATIC1111-style text to copy, the JSON behind a toggle. An id that names no job clears
the detail. The table refreshes every second while the tab is open, from the same job records as the panel
on the right, so both say the same.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui import render
from ui.favourites import Favourites, favourite_key, favourites_label, toggle
from ui.handlers import Handlers

__all__ = ["HistoryTab", "build_history_tab", "wire_history_tab"]

REFOCUS = ("() => { const open = document.querySelector('#history-gallery .thumbnail-small.selected');"
           " if (open) open.focus(); }")


class HistoryTab:
    """The tab's components, built inside a ``gr.Tab`` by :func:`build_history_tab`."""

    def __init__(self) -> None:
        with gr.Row(equal_height=True):
            self.state_filter = gr.Dropdown(["all", "queued", "running", "succeeded", "failed", "cancelled"],
                                            value="all", label="Show", scale=2)
            self.newer = gr.Button("◀ Newer", size="sm", scale=1)
            self.older = gr.Button("Older ▶", size="sm", scale=1)
        self.table = gr.Dataframe(headers=render.JOB_COLUMNS, interactive=False, wrap=True, elem_id="jobs-table",
                                  max_height=420, column_widths=render.JOB_COLUMN_WIDTHS)
        self.thumbs = gr.Gallery(label="Images on this page (click one: ←/→ walk through them)", columns=6,
                                 height=240, fit_columns=False, object_fit="contain", elem_id="history-gallery",
                                 buttons=["download", "fullscreen"])
        with gr.Row(equal_height=True):
            self.fav_label = gr.Markdown(favourites_label([], None), elem_id="fav-label")
            self.fav = gr.Button("☆ Favourite", size="sm", scale=0, min_width=110, elem_id="fav-btn")
            self.fav_zip = gr.DownloadButton("Download selected (zip)", size="sm", scale=0, min_width=190,
                                             elem_id="fav-zip")
        self.favourites = gr.BrowserState([], storage_key="comfyui-studio-favourites")
        self.current = gr.State(None)  # the key of the image open in the lightbox
        with gr.Group():
            self.selected = gr.Textbox(label="Selected job", interactive=True, elem_id="selected-job",
                                       placeholder="pick a row, or type a job id (the first 8 characters do)")
            self.detail = gr.Markdown(elem_id="job-detail")
            with gr.Row():
                self.cancel = gr.Button("Cancel", size="sm", variant="stop", visible=False, elem_id="cancel-job")
                self.front = gr.Button("Move to front", size="sm", visible=False, elem_id="front-job")
                self.reuse = gr.Button("Use these settings", size="sm")
                self.send = gr.Button("Send to img2img", size="sm")
            self.images = gr.Gallery(label="Images", columns=4, height=300, fit_columns=False, elem_id="job-images",
                                     object_fit="contain", buttons=["download", "download_all", "fullscreen"])
            self.settings_text = gr.Textbox(label="Settings", lines=4, interactive=False, buttons=["copy"],
                                            elem_id="settings-text")
            with gr.Accordion("Settings as JSON", open=False, elem_id="settings-json-toggle"):
                self.settings_json = gr.JSON(label="Settings (JSON)", elem_id="settings-json")
        self.cursors = gr.State([None])  # the cursor of each page seen, to go back
        self.ids = gr.State([])  # the full ids of the rows shown
        self.timer = gr.Timer(1.0, active=False)


def build_history_tab() -> HistoryTab:
    return HistoryTab()


def wire_history_tab(h: Handlers, t: HistoryTab, tab: gr.Tab, others: list[gr.Tab]) -> None:
    """Its events: paging, refreshing while open, picking a job, the actions on it."""
    private: dict[str, Any] = {"api_visibility": "private"}
    quiet: dict[str, Any] = {"show_progress": "hidden", **private}

    async def show_page(state: str, pages: list[Any], request: gr.Request) -> tuple[Any, Any, Any]:
        rows, thumbs, _next, ids = await h.history(state, pages[-1], request)
        return rows, thumbs, ids

    page_in, page_out = [t.state_filter, t.cursors], [t.table, t.thumbs, t.ids]
    detail_out = [t.detail, t.settings_text, t.settings_json, t.images, t.cancel, t.front]

    async def refresh(state: str, pages: list[Any], selected: str, request: gr.Request) -> tuple[Any, ...]:
        """The table and, for the selected job, its detail: the place, the state and the buttons move with it."""
        page = await show_page(state, pages, request)
        return (*page, *(await h.job_detail(selected, request)))

    tab.select(lambda: gr.Timer(active=True), None, t.timer, **private).then(show_page, page_in, page_out, **private)
    for other in others:
        other.select(lambda: gr.Timer(active=False), None, t.timer, **private)
    t.timer.tick(refresh, [*page_in, t.selected], page_out + detail_out, **quiet)
    t.state_filter.change(lambda: [None], None, t.cursors, **private).then(show_page, page_in, page_out, **private)

    async def go_older(state: str, pages: list[Any], request: gr.Request) -> list[Any]:
        _rows, _thumbs, next_cursor, _ids = await h.history(state, pages[-1], request)
        return pages + [next_cursor] if next_cursor is not None else pages

    t.older.click(go_older, page_in, t.cursors, **private).then(show_page, page_in, page_out, **private)
    t.newer.click(lambda pages: pages[:-1] or [None], t.cursors, t.cursors, **private).then(
        show_page, page_in, page_out, **private)

    def pick_row(ids: list[str], data: gr.SelectData) -> str:
        row = data.index[0] if isinstance(data.index, (list, tuple)) else None
        if isinstance(row, int) and 0 <= row < len(ids):
            return ids[row]
        value = data.row_value if getattr(data, "row_value", None) else None
        return str(value[0]) if value else ""

    def pick_thumb(data: gr.SelectData) -> str:
        caption = (data.value or {}).get("caption") or ""  # "<job id> · state · prompt"
        return caption.split(" · ", 1)[0]

    def pick_image(favourites: list[str], data: gr.SelectData) -> tuple[Any, str]:
        key = favourite_key((data.value or {}).get("caption") or "")
        return key, favourites_label(favourites, key)

    def star(favourites: list[str], key: str | None) -> tuple[list[str], str]:
        if not key:
            raise gr.Error("Open an image of the history first, then press ☆.")
        marked = toggle(favourites, key)
        return marked, favourites_label(marked, key)

    t.thumbs.select(pick_image, t.favourites, [t.current, t.fav_label], **private)
    # Focus back on the open image, so that ←/→ go on walking after ☆.
    zipped = Favourites(h).zip
    t.fav.click(star, [t.favourites, t.current], [t.favourites, t.fav_label], **private).then(
        None, None, None, js=REFOCUS, **private).then(zipped, t.favourites, t.fav_zip, **private)
    tab.select(zipped, t.favourites, t.fav_zip, **private)
    t.table.select(pick_row, t.ids, t.selected, **private)
    t.thumbs.select(pick_thumb, None, t.selected, **private)
    t.selected.change(h.job_detail, t.selected, detail_out, **private)
    t.cancel.click(h.cancel_job, t.selected, None, **private).then(
        refresh, [*page_in, t.selected], page_out + detail_out, **private)
    t.front.click(h.move_to_front, t.selected, None, **private).then(
        refresh, [*page_in, t.selected], page_out + detail_out, **private)
