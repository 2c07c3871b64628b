"""The Quantize tab: a recipe (shipped or edited) and its per-layer plan, calibration with the sensitivity plot,
a recipe within a size budget, and the export of a compressed checkpoint."""

from __future__ import annotations

import re

import gradio as gr

from flashvsr_q.app import calls
from flashvsr_q.app.jobs import JOBS, RECIPE_NONE, is_cancelled, recipe_choices
from flashvsr_q.app.ui import AppState, cancel_job, fail, follow, model_choice, model_widgets, session


def quantize_tab(state: AppState) -> dict:
    """Build the tab; returns its checkpoint list and the export event's parts (wired by ``build_app``, since the
    export updates the checkpoint lists of every tab)."""
    shipped = [(label, value) for label, value in recipe_choices() if value != RECIPE_NONE]
    values = [value for _, value in shipped]
    first = calls.DEFAULT_RECIPE if calls.DEFAULT_RECIPE in values else (values[0] if values else None)
    with gr.Row():
        with gr.Column(scale=1, min_width=340):
            checkpoint, _, device, dtype, variant = model_widgets(state, with_recipe=False, prefix="quantize")
            recipe = gr.Dropdown(shipped, value=first, label="Recipe", info="load a shipped recipe into the editor",
                                 elem_id="quantize-recipe")
            editor = gr.Code(calls.read_recipe_text(first) if first else "", language="yaml", lines=18,
                             label="Recipe (YAML, editable)", interactive=True, elem_id="quantize-editor")
            check = gr.Button("Check recipe (per-layer plan)", elem_id="quantize-check")
            with gr.Accordion("Export", open=True):
                name = gr.Textbox("my-checkpoint", label="Name of the compressed checkpoint", elem_id="quantize-name")
                stats_file = gr.File(label="Calibration statistics used by the export (from Calibrate)",
                                     interactive=False, elem_id="quantize-stats")
                with gr.Row():
                    export = gr.Button("Export compressed checkpoint", variant="primary", elem_id="quantize-export")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="quantize-cancel")
            status = gr.Textbox(label="Status / plan", lines=12, max_lines=40, interactive=False,
                                elem_id="quantize-status", elem_classes="fq-status")
        with gr.Column(scale=1, min_width=340):
            with gr.Accordion("Calibration and sensitivity", open=True):
                clips = gr.File(label="Calibration footage (videos or images)", file_count="multiple",
                                file_types=["video", "image"], elem_id="quantize-clips")
                with gr.Row():
                    n_clips = gr.Number(2, label="Clips", precision=0, minimum=1)
                    frames = gr.Number(33, label="Frames per clip (8k+1, >= 33)", precision=0, minimum=33)
                    size = gr.Number(128, label="Crop side (output px, x128)", precision=0, minimum=128)
                with gr.Row():
                    observer = gr.Dropdown(["minmax", "percentile", "mse"], value="minmax", label="Observer")
                    alpha = gr.Textbox("", label="SmoothQuant alpha", info="blank: no smoothing; e.g. 0.5")
                with gr.Row():
                    schemes = calls.scheme_choices(device.value)
                    scheme = gr.Dropdown([("none (statistics only)", "none"), *[(s, s) for s in schemes]],
                                         value="int8_weight_only" if "int8_weight_only" in schemes else "none",
                                         label="Sensitivity of scheme", elem_id="quantize-scheme")
                    grouping = gr.Dropdown(["block", "kind", "layer"], value="block", label="Grouping")
                lr_input = gr.Checkbox(False, label="The footage is low-resolution (use it as the model input)")
                calibrate = gr.Button("Calibrate", elem_id="quantize-calibrate")
                with gr.Row():
                    budget = gr.Textbox("", label="Checkpoint size budget", info="e.g. 1.2GB, 800MiB",
                                        elem_id="quantize-budget")
                    fallback = gr.Dropdown([("keep (bf16)", "bf16"), *[(s, s) for s in schemes]], value="bf16",
                                           label="Most sensitive groups in")
                suggest = gr.Button("Write a recipe within the budget (into the editor)", elem_id="quantize-suggest")
            table = gr.Markdown(elem_id="quantize-sensitivity-table")
    sensitivity = gr.Image(label="Sensitivity (lower = more sensitive)", type="filepath", interactive=False,
                           elem_id="quantize-sensitivity")

    recipe.change(lambda r: calls.read_recipe_text(r) if r else gr.update(), recipe, editor, queue=False)
    model_in = [checkpoint, dtype, device, variant]

    def do_check(text, ckpt, dt, dev, var, request: gr.Request = None, progress=gr.Progress()):
        lines: list[str] = []
        try:
            choice = model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            job = JOBS.start(session(request), lambda report, cancel: calls.check_recipe(text, choice, lines.append),
                             "check")
            yield from follow(job, progress, lines)
            yield job.result()
        except Exception as exc:  # noqa: BLE001 - one line on the page
            raise fail(exc) from None

    check.click(do_check, [editor, *model_in], status, concurrency_id="device", concurrency_limit=1)

    report_dir = gr.State(None)  # the folder of the last sensitivity report, for "Write recipe"

    def do_calibrate(files, text, ckpt, dt, dev, var, n, f, s, obs, a, sch, grp, lr, request: gr.Request = None,
                     progress=gr.Progress()):
        if not files:
            raise gr.Error("upload at least one calibration clip")
        lines: list[str] = []
        keep = (gr.update(),) * 4
        try:
            choice = model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            settings = calls.CalibrationOptions(int(n), int(f), int(s), obs, float(a) if str(a).strip() else None,
                                                None if sch == "none" else sch, grp, bool(lr))
            out = state.run_dir("calibration")
            job = JOBS.start(session(request), lambda report, cancel: calls.run_calibration(
                list(files), out, choice, settings, text, report, cancel, lines.append), "calibrate")
            for text_ in follow(job, progress, lines):
                yield text_, *keep
            stats, plot, markdown = job.result()
        except Exception as exc:  # noqa: BLE001 - cancelled: say so; anything else: one line
            if is_cancelled(exc):
                yield "\n".join(lines + ["", "cancelled"]), None, None, None, None
                return
            raise fail(exc) from None
        markdown = re.sub(r"^# ", "#### ", markdown, flags=re.MULTILINE)  # the report's title as a small heading
        yield ("\n".join(lines + ["", "done: calibration"]), str(stats), str(plot) if plot else None, markdown,
               str(out) if plot else None)

    calibrate.click(do_calibrate, [clips, editor, *model_in, n_clips, frames, size, observer, alpha, scheme,
                                   grouping, lr_input],
                    [status, stats_file, sensitivity, table, report_dir], concurrency_id="device",
                    concurrency_limit=1)

    def do_suggest(folder, ckpt, dt, dev, var, budget_, fallback_, request: gr.Request = None,
                   progress=gr.Progress()):
        if not folder:
            raise gr.Error("run Calibrate with a sensitivity scheme first")
        lines: list[str] = []
        try:
            choice = model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            job = JOBS.start(session(request), lambda report, cancel: calls.suggest_recipe(
                folder, choice, budget_, fallback_, None, lines.append), "suggest")
            for text_ in follow(job, progress, lines):
                yield text_, gr.update()
            yaml_text = job.result()
        except Exception as exc:  # noqa: BLE001
            raise fail(exc) from None
        yield "\n".join(lines + ["", "done: the editor holds the generated recipe"]), yaml_text

    suggest.click(do_suggest, [report_dir, *model_in, budget, fallback], [status, editor], concurrency_id="device",
                  concurrency_limit=1)

    def do_export(text, ckpt, dt, dev, var, stats, out_name, request: gr.Request = None, progress=gr.Progress()):
        lines: list[str] = []
        try:
            choice = model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            target = state.output_dir / "checkpoints" / calls.checkpoint_folder_name(out_name)
            target.parent.mkdir(parents=True, exist_ok=True)  # the app's own folder; the quantize task needs it
            job = JOBS.start(session(request), lambda report, cancel: calls.export_checkpoint(
                text, choice, target, stats, report, cancel, lines.append), "export")
            for text_ in follow(job, progress, lines):
                yield (text_, *[gr.update()] * 3)
            inspection = job.result()
        except Exception as exc:  # noqa: BLE001
            if is_cancelled(exc):
                yield ("\n".join(lines + ["", "cancelled"]), *[gr.update()] * 3)
                return
            raise fail(exc) from None
        state.exports.append(target)
        yield ("\n".join(lines + ["", "done: " + inspection]), *[gr.update(choices=state.checkpoints())] * 3)

    cancel.click(cancel_job, None, status, queue=False)
    return {"checkpoint": checkpoint, "export": export, "export_fn": do_export,
            "export_in": [editor, *model_in, stats_file, name], "status": status}


