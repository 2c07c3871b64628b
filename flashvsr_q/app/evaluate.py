"""The Evaluate tab: configurations (checkpoints x recipes) compared on uploaded clips; table, plots, report."""

from __future__ import annotations

import gradio as gr

from flashvsr_q.app import calls
from flashvsr_q.app.jobs import (
    DEFAULT_CHOICE,
    JOBS,
    RECIPE_NONE,
    device_choices,
    is_cancelled,
    recipe_choices,
    resolve_checkpoint,
    resolve_recipe,
)
from flashvsr_q.app.ui import DTYPE_CHOICES, AppState, cancel_job, fail, follow, session
from flashvsr_q.eval.degrade import PRESETS as DEGRADATIONS


def evaluate_tab(state: AppState) -> dict:
    """Build the tab; returns its checkpoint list (updated after an export)."""
    with gr.Row():
        with gr.Column(scale=1, min_width=340):
            clips = gr.File(label="Clips (high-resolution ground truth)", file_count="multiple",
                            file_types=["video", "image"], elem_id="evaluate-clips")
            configs = gr.Dropdown(state.checkpoints(), value=[DEFAULT_CHOICE], multiselect=True,
                                  allow_custom_value=True, label="Checkpoints to compare",
                                  elem_id="evaluate-checkpoints")
            recipes = gr.Dropdown(recipe_choices(), value=[RECIPE_NONE], multiselect=True, label="Recipes",
                                  info="each checkpoint is run as stored and/or with these recipes on the fly",
                                  elem_id="evaluate-recipes")
            with gr.Row():
                devices = device_choices()
                device = gr.Dropdown(devices, value=devices[0], label="Device")
                dtype = gr.Dropdown(DTYPE_CHOICES, value="auto", label="Compute dtype")
            metrics = gr.CheckboxGroup(calls.metric_choices(), value=calls.default_metrics(), label="Metrics",
                                       elem_id="evaluate-metrics")
            degrade = gr.Dropdown(list(DEGRADATIONS), value="bicubic", label="Degradation (HR -> LR)",
                                  elem_id="evaluate-degradation")
            with gr.Row():
                run = gr.Button("Evaluate", variant="primary", elem_id="evaluate-run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="evaluate-cancel")
            status = gr.Textbox(label="Status", lines=8, max_lines=30, interactive=False, elem_id="evaluate-status",
                                elem_classes="fq-status")
        with gr.Column(scale=2):
            table = gr.Dataframe(label="Comparison", interactive=False, wrap=True, elem_id="evaluate-table")
            plots = gr.Gallery(label="Plots", columns=2, height=360, object_fit="contain", preview=False,
                               elem_id="evaluate-plots")
            report = gr.File(label="Report files", file_count="multiple", interactive=False, elem_id="evaluate-report")

    def do_evaluate(files, ckpts, recs, dev, dt, mets, deg, request: gr.Request = None, progress=gr.Progress()):
        if not files:
            raise gr.Error("upload at least one clip")
        if not ckpts:
            raise gr.Error("choose at least one checkpoint")
        lines: list[str] = []
        try:
            entries = [(resolve_checkpoint(c), resolve_recipe(r)) for c in ckpts for r in (recs or [RECIPE_NONE])]
            options = calls.EvaluateOptions(list(mets or []), deg, None if dt == "auto" else dt, dev)
            out = state.run_dir("evaluate")
            job = JOBS.start(session(request), lambda report_, cancel: calls.run_evaluation(
                list(files), entries, out, options, report_, cancel, lines.append), "evaluate")
            for text in follow(job, progress, lines):
                yield text, gr.update(), gr.update(), gr.update()
            result = job.result()
        except Exception as exc:  # noqa: BLE001
            if is_cancelled(exc):
                yield "\n".join(lines + ["", "cancelled"]), None, None, None
                return
            raise fail(exc) from None
        import pandas as pd

        table_ = pd.DataFrame(result.table[1:], columns=result.table[0])
        yield ("\n".join(lines + ["", f"done: report in {out / 'report'}"]), table_, result.plots, result.files)

    run.click(do_evaluate, [clips, configs, recipes, device, dtype, metrics, degrade], [status, table, plots, report],
              concurrency_id="device", concurrency_limit=1)
    cancel.click(cancel_job, None, status, queue=False)
    return {"checkpoint": configs}


