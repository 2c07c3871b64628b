"""The Gradio GUI: ``flashvsr-q app`` serves three tabs on a local web page.

- **Upscale**: a video or an image in; checkpoint, recipe, attention backend, tiling and VRAM budget; the pre-flight
  memory estimate; a live progress bar; input and output side by side (synced players, comparison slider); the
  result (with the input's audio) to download.
- **Quantize**: a shipped recipe or one edited in place, its per-layer plan, calibration on uploaded clips with
  the sensitivity plot, and export of a compressed checkpoint (which then appears in the checkpoint lists).
- **Evaluate**: a comparison of configurations on uploaded clips, as a table and plots.

Layout and event wiring only: every button calls one function of ``app.calls`` (the library API, as the CLI calls
it) inside a :class:`~flashvsr_q.app.jobs.Job`, so a long run never blocks the page, reports progress, and stops
when Cancel sets its event. Errors reach the page as the one-line FlashVSRError message (``gr.Error``).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from flashvsr_q.app.evaluate import evaluate_tab
from flashvsr_q.app.quantize import quantize_tab
from flashvsr_q.app.ui import AppState
from flashvsr_q.app.upscale import upscale_tab

CSS = """
.fq-status textarea { font-family: ui-monospace, monospace; font-size: 12px; }
"""
# Play, pause and seek the input and output players together (the two <video> elements of the Upscale tab).
SYNC_PLAYERS_JS = """
() => {
  const pair = () => [document.querySelector('#upscale-input-video video'),
                      document.querySelector('#upscale-output-video video')];
  const other = (a) => { const [x, y] = pair(); return a === x ? y : x; };
  const link = (a) => {
    if (a.dataset.fqLinked === '1') return;
    a.dataset.fqLinked = '1';
    a.addEventListener('play', () => { const o = other(a); if (o && o.paused) o.play(); });
    a.addEventListener('pause', () => { const o = other(a); if (o && !o.paused) o.pause(); });
    a.addEventListener('seeked', () => {
      const o = other(a);
      if (o && Math.abs(o.currentTime - a.currentTime) > 0.05) o.currentTime = a.currentTime;
    });
  };
  setInterval(() => { const [a, b] = pair(); if (a && b) { link(a); link(b); } }, 1000);
}
"""


# ---------------------------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------------------------


def build_app(output_dir: str | Path | None = None) -> tuple[gr.Blocks, AppState]:
    """The Blocks of the three tabs (not launched) and its server-side state."""
    state = AppState(output_dir)
    with gr.Blocks(title="flashvsr-q", analytics_enabled=False) as demo:
        gr.Markdown("## flashvsr-q: FlashVSR video super-resolution, quantized")
        with gr.Tabs():
            with gr.Tab("Upscale", id="upscale", elem_id="tab-upscale"):
                up = upscale_tab(state)
            with gr.Tab("Quantize", id="quantize", elem_id="tab-quantize"):
                qu = quantize_tab(state)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                ev = evaluate_tab(state)
        # an export adds the new checkpoint to the three checkpoint lists
        qu["export"].click(qu["export_fn"], qu["export_in"],
                           [qu["status"], up["checkpoint"], qu["checkpoint"], ev["checkpoint"]],
                           concurrency_id="device", concurrency_limit=1)
    return demo, state


def launch(host: str = "127.0.0.1", port: int = 7860, output_dir: str | Path | None = None,
           block: bool = True) -> gr.Blocks:
    """Serve the app on ``host:port`` (the queue keeps long jobs off the page's request path)."""
    demo, state = build_app(output_dir)
    demo.queue(default_concurrency_limit=1)
    print(f"flashvsr-q app: results go to {state.output_dir}", flush=True)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=False, show_error=False,
                allowed_paths=[str(state.output_dir)], footer_links=["settings"], css=CSS, js=SYNC_PLAYERS_JS,
                ssr_mode=False, mcp_server=False, inbrowser=False)
    return demo

