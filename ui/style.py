"""The page's look (CSS) and its few lines of script (HEAD): keyboard shortcut, toasts out of the way."""

from __future__ import annotations

__all__ = ["CSS", "HEAD"]

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
.studio-progress .loading .fill { width: 100% !important; opacity: 0.35; animation: studio-pulse 1.2s ease-in-out infinite; }
@keyframes studio-pulse { 50% { opacity: 0.8; } }
.studio-progress .more { font-size: 0.85em; color: #6b7280; }
.studio-progress .detail { font-size: 0.8em; color: #6b7280; }
.studio-progress .waiting .detail { color: #8a1f1f; }
#generate-btn { min-height: 48px; }

/* What runs now stays in view however long the form on the left is. */
.gradio-container { overflow: clip !important; }  /* hidden would make it the scroller, and nothing sticks */
#results-col { position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px); overflow-y: auto; }

/* Every image whole, with a caption under it rather than over it. */
#gallery .thumbnail-item, #job-images .thumbnail-item, #history-gallery .thumbnail-item { aspect-ratio: 3 / 4; }
#gallery .thumbnail-item img, #job-images .thumbnail-item img, #history-gallery .thumbnail-item img {
  object-fit: contain !important; height: calc(100% - 24px) !important; }
#gallery .caption-label, #job-images .caption-label, #history-gallery .caption-label {
  left: 0; right: 0; bottom: 0; max-width: 100%; border-radius: 0; border-left: 0; opacity: 0.9;
  font-size: 0.72em; text-align: center; }

/* The history table: words whole, short columns on one line, the prompt and progress wrap between words. */
#jobs-table .virtual-body, #jobs-table thead { font-size: 12px; }
#jobs-table .body-cell .cell-wrap { padding-left: 6px !important; padding-right: 6px !important; }
#jobs-table .cell-wrap, #jobs-table .cell-wrap span { word-break: normal !important; overflow-wrap: normal !important;
  hyphens: none; }
#jobs-table .virtual-row > .body-cell:not(:nth-child(4)):not(:nth-child(5)):not(:nth-child(7)) .cell-wrap span,
#jobs-table th .cell-wrap, #jobs-table th span { white-space: nowrap !important; }
#settings-text textarea { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap !important; }

/* Toasts at the bottom left, off the preview's buttons (top right). */
.toast-wrap { top: auto !important; bottom: 16px !important; left: 16px !important; right: auto !important;
  align-items: start !important; }

/* Workflow inputs, one box per node. */
.wf-node { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px 10px !important; }
.wf-node-title { font-weight: 600; font-size: 0.92em; }

/* The toolbox: a LoRA row's Remove beside its slider, notes in small print, the plot's grid whole. */
.lora-row { align-items: center !important; }
.lora-row button { max-height: 40px; align-self: center; }
.toolbox-note, .toolbox-note p { font-size: 0.85em !important; color: #6b7280; margin: 0 !important; }
#plot-grid img { object-fit: contain; }
/* A plot's many progress bars make the results column taller than its max-height: it scrolls, never wraps
   the gallery into a second column out of sight. */
#results-col { flex-wrap: nowrap !important; }
"""

#: Ctrl/Cmd+Enter anywhere on the page presses Generate (or Run workflow on the Workflow tab).
HEAD = """
<script>
document.addEventListener('keydown', (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === 'Enter') {
    const run = document.querySelector('#run-workflow');
    const btn = (run && run.offsetParent) ? run : document.querySelector('#generate-btn');
    if (btn) { e.preventDefault(); btn.click(); }
  }
});
</script>
"""
