"""The Gradio GUI: ``flashvsr-q app`` serves three tabs on a local web page.

- **Upscale**: a video or an image in; checkpoint, recipe, attention backend, tiling and VRAM budget; the pre-flight
  memory estimate; a live progress bar; input and output side by side (synced players, comparison slider); the
  result (with the input's audio) to download.
- **Quantize**: a shipped recipe or one edited in place, its per-layer plan, calibration on uploaded clips with
  the sensitivity plot, and export of a compressed checkpoint (which then appears in the checkpoint lists).
- **Evaluate**: a comparison of configurations on uploaded clips, as a table and plots.

Layout and event wiring only: every button calls one function of ``app_calls`` (the library API, as the CLI calls
it) inside a :class:`~flashvsr_q.app_jobs.Job`, so a long run never blocks the page, reports progress, and stops
when Cancel sets its event. Errors reach the page as the one-line FlashVSRError message (``gr.Error``).
"""

from __future__ import annotations

import logging
import re
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from flashvsr_q import app_calls as calls
from flashvsr_q.app_jobs import (
    DEFAULT_CHOICE,
    JOBS,
    RECIPE_NONE,
    Job,
    backend_choices,
    checkpoint_choices,
    comparison_frames,
    describe_source,
    device_choices,
    error_line,
    is_cancelled,
    output_name,
    recipe_choices,
    resolve_checkpoint,
    resolve_recipe,
    tile_arg,
    vram_arg,
)
from flashvsr_q.errors import FlashVSRError

log = logging.getLogger(__name__)

DTYPE_CHOICES = [("auto (bf16 on CUDA, fp32 on CPU)", "auto"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")]
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


class AppState:
    """Server-side settings shared by all sessions: where results go, and the checkpoints exported so far."""

    def __init__(self, output_dir: str | Path | None = None) -> None:
        self.output_dir = Path(output_dir) if output_dir else Path(tempfile.mkdtemp(prefix="flashvsr-q-app-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.exports: list[Path] = []

    def run_dir(self, kind: str) -> Path:
        """A fresh folder for one run's outputs."""
        folder = self.output_dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=folder))

    def checkpoints(self) -> list[tuple[str, str]]:
        return checkpoint_choices(self.exports)


# ---------------------------------------------------------------------------------------------------------------
# running a job from an event handler
# ---------------------------------------------------------------------------------------------------------------


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _fail(exc: BaseException) -> gr.Error:
    """The page-side form of any failure: one readable line; the stack trace goes to the server log only."""
    if not isinstance(exc, FlashVSRError):
        log.error("unexpected error in the app:\n%s", "".join(traceback.format_exception(exc)))
    return gr.Error(error_line(exc), print_exception=False)


def _follow(job: Job, progress: gr.Progress, lines: list[str]) -> Iterator[str]:
    """While ``job`` runs: move the progress bar and yield the log so far (about twice a second)."""
    for update in job.updates():
        if update is not None:
            total = int(update.total) if update.total else None
            progress((int(update.done), total), desc=update.text, unit=update.unit)
        yield "\n".join(lines[-40:])


def _model_choice(checkpoint: str, recipe: str, dtype: str, device: str, variant: str) -> calls.ModelChoice:
    return calls.ModelChoice(resolve_checkpoint(checkpoint), resolve_recipe(recipe),
                             None if dtype in (None, "auto") else dtype, device or None, variant or "v1.1")


def _model_widgets(state: AppState, with_recipe: bool = True, prefix: str = "upscale"):
    """Checkpoint, recipe, device, dtype and LQ-variant widgets (the same in every tab)."""
    checkpoint = gr.Dropdown(state.checkpoints(), value=DEFAULT_CHOICE, label="Checkpoint", allow_custom_value=True,
                             info="the default, a checkpoint folder, or type the path of an official or compressed "
                                  "checkpoint folder", elem_id=f"{prefix}-checkpoint")
    recipe = None
    if with_recipe:
        recipe = gr.Dropdown(recipe_choices(), value=RECIPE_NONE, label="Recipe", allow_custom_value=True,
                             info="none = use the checkpoint as stored; a recipe is applied on the fly",
                             elem_id=f"{prefix}-recipe")
    with gr.Row():
        devices = device_choices()
        device = gr.Dropdown(devices, value=devices[0], label="Device", elem_id=f"{prefix}-device")
        dtype = gr.Dropdown(DTYPE_CHOICES, value="auto", label="Compute dtype", elem_id=f"{prefix}-dtype")
        variant = gr.Dropdown(["v1.1", "v1"], value="v1.1", label="Official folder version",
                              info="only for official FlashVSR folders", elem_id=f"{prefix}-variant")
    return checkpoint, recipe, device, dtype, variant


# ---------------------------------------------------------------------------------------------------------------
# Upscale tab
# ---------------------------------------------------------------------------------------------------------------


def _upscale_tab(state: AppState) -> dict:
    with gr.Row():
        with gr.Column(scale=1, min_width=340):
            source = gr.File(label="Video or image", file_types=["video", "image"], elem_id="upscale-input")
            source_info = gr.Markdown("Upload a video or an image.", elem_id="upscale-input-info")
            with gr.Accordion("Model", open=True):
                checkpoint, recipe, device, dtype, variant = _model_widgets(state)
                names, unavailable = backend_choices(device.value)
                attention = gr.Dropdown(names, value="auto", label="Attention backend", elem_id="upscale-attention")
                attention_note = gr.Markdown(unavailable)
            with gr.Accordion("Tiling and memory", open=True):
                tiling = gr.Radio(["auto", "off", "manual"], value="auto", label="Tiling",
                                  info="auto fits the VRAM budget", elem_id="upscale-tiling")
                with gr.Row(visible=False) as manual_row:
                    tile_size = gr.Number(256, label="Tile size (input px)", precision=0, minimum=32)
                    tile_overlap = gr.Number(32, label="Overlap (input px)", precision=0, minimum=0)
                vram = gr.Textbox("auto", label="VRAM budget", info="e.g. 8GB; auto = free device memory",
                                  elem_id="upscale-vram")
            with gr.Accordion("Output", open=False):
                with gr.Row():
                    scale = gr.Number(4, label="Scale", precision=0, minimum=1, maximum=8)
                    seed = gr.Number(0, label="Seed", precision=0)
                with gr.Row():
                    color_fix = gr.Dropdown(["adain", "wavelet", "none"], value="adain", label="Colour fix")
                    crf = gr.Slider(0, 51, value=18, step=1, label="CRF (video quality)")
                    codec = gr.Dropdown(["libx264", "libx265"], value="libx264", label="Codec")
                audio = gr.Checkbox(True, label="Copy audio and subtitles")
            with gr.Row():
                estimate = gr.Button("Estimate memory", elem_id="upscale-estimate")
                run = gr.Button("Upscale", variant="primary", elem_id="upscale-run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="upscale-cancel")
            status = gr.Textbox(label="Status", lines=6, max_lines=20, interactive=False, elem_id="upscale-status",
                                elem_classes="fq-status")
        with gr.Column(scale=2):
            with gr.Row():
                in_video = gr.Video(label="Input", interactive=False, height=320, elem_id="upscale-input-video")
                out_video = gr.Video(label="Output", interactive=False, height=320, elem_id="upscale-output-video")
            compare = gr.ImageSlider(label="Input | output (middle frame)", interactive=False, max_height=480,
                                     elem_id="upscale-compare")
            result = gr.File(label="Result (download)", interactive=False, elem_id="upscale-result")
            summary = gr.JSON(label="Summary", elem_id="upscale-summary")

    def show_source(path: str | None):
        if not path:
            return "Upload a video or an image.", None, None, None, None
        try:
            info = describe_source(path)
        except FlashVSRError as exc:
            raise _fail(exc) from None
        is_video = not info.startswith("image")
        return info, path if is_video else None, None, None, None

    source.change(show_source, source, [source_info, in_video, out_video, compare, result], queue=False)
    tiling.change(lambda mode: gr.update(visible=mode == "manual"), tiling, manual_row, queue=False)

    def refresh_backends(dev: str):
        names, note = backend_choices(dev)
        return gr.update(choices=names, value="auto"), note

    device.change(refresh_backends, device, [attention, attention_note], queue=False)

    model_in = [checkpoint, recipe, dtype, device, variant]
    options_in = [attention, tiling, tile_size, tile_overlap, vram, scale, seed, color_fix, crf, codec, audio]

    def read(values: dict) -> tuple[str | None, calls.ModelChoice, calls.UpscaleOptions]:
        """The input path, model choice and options from the widgets' values (``values[component]``)."""
        v = values
        choice = _model_choice(v[checkpoint], v[recipe], v[dtype], v[device], v[variant])
        options = calls.UpscaleOptions(v[attention], tile_arg(v[tiling], v[tile_size], v[tile_overlap]),
                                       vram_arg(v[vram]), int(v[scale] or 4), v[color_fix], int(v[seed] or 0),
                                       float(v[crf]), v[codec], bool(v[audio]))
        return v[source], choice, options

    # (inputs given as a set: the handler gets one dict, and Gradio still passes the request and progress)
    def do_estimate(values: dict, request: gr.Request = None, progress=gr.Progress()):
        if not values[source]:
            raise gr.Error("upload a video or an image first")
        lines: list[str] = []
        try:
            path, choice, opt = read(values)
            job = JOBS.start(_session(request), lambda report, cancel: calls.preflight(path, choice, opt,
                                                                                       lines.append), "estimate")
            yield from _follow(job, progress, lines)
            yield "\n".join(lines + ["", "pre-flight: " + job.result()])
        except Exception as exc:  # noqa: BLE001 - shown on the page as one line
            raise _fail(exc) from None

    estimate.click(do_estimate, {source, *model_in, *options_in}, status, concurrency_id="device",
                   concurrency_limit=1)

    def do_upscale(values: dict, request: gr.Request = None, progress=gr.Progress()):
        if not values[source]:
            raise gr.Error("upload a video or an image first")
        lines: list[str] = []
        empty = {in_video: gr.update(), out_video: None, compare: None, result: None, summary: None}
        try:
            path, choice, opt = read(values)
            output = state.run_dir("upscale") / output_name(path, opt.scale)
            job = JOBS.start(_session(request), lambda report, cancel: calls.run_upscale(
                path, output, choice, opt, report.frames, cancel, lines.append), "upscale")
            yield {status: "starting", **empty}
            for text in _follow(job, progress, lines):
                yield {status: text}
            summary_ = job.result()
        except Exception as exc:  # noqa: BLE001 - cancelled: say so; anything else: one line
            if is_cancelled(exc):
                yield {status: "\n".join(lines + ["", "cancelled"]), **empty}
                return
            raise _fail(exc) from None
        done = "done: " + summary_.describe()
        image_pair = comparison_frames(path, output)
        is_video = summary_.kind == "video"
        yield {status: "\n".join(lines + ["", done]), in_video: path if is_video else None,
               out_video: str(output) if is_video else None, compare: image_pair, result: str(output),
               summary: summary_.to_dict()}

    run.click(do_upscale, {source, *model_in, *options_in},
              [status, in_video, out_video, compare, result, summary], concurrency_id="device", concurrency_limit=1)
    cancel.click(_cancel, None, status, queue=False)
    return {"checkpoint": checkpoint}


def _cancel(request: gr.Request = None) -> str | dict:
    if JOBS.cancel(_session(request)):
        gr.Info("cancelling: the job stops at its next check")
        return gr.update()
    gr.Info("nothing is running")
    return gr.update()


# ---------------------------------------------------------------------------------------------------------------
# Quantize tab
# ---------------------------------------------------------------------------------------------------------------


def _quantize_tab(state: AppState) -> dict:
    shipped = [(label, value) for label, value in recipe_choices() if value != RECIPE_NONE]
    values = [value for _, value in shipped]
    first = calls.DEFAULT_RECIPE if calls.DEFAULT_RECIPE in values else (values[0] if values else None)
    with gr.Row():
        with gr.Column(scale=1, min_width=340):
            checkpoint, _, device, dtype, variant = _model_widgets(state, with_recipe=False, prefix="quantize")
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
            choice = _model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            job = JOBS.start(_session(request), lambda report, cancel: calls.check_recipe(text, choice, lines.append),
                             "check")
            yield from _follow(job, progress, lines)
            yield job.result()
        except Exception as exc:  # noqa: BLE001 - one line on the page
            raise _fail(exc) from None

    check.click(do_check, [editor, *model_in], status, concurrency_id="device", concurrency_limit=1)

    report_dir = gr.State(None)  # the folder of the last sensitivity report, for "Write recipe"

    def do_calibrate(files, text, ckpt, dt, dev, var, n, f, s, obs, a, sch, grp, lr, request: gr.Request = None,
                     progress=gr.Progress()):
        if not files:
            raise gr.Error("upload at least one calibration clip")
        lines: list[str] = []
        keep = (gr.update(),) * 4
        try:
            choice = _model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            settings = calls.CalibrationOptions(int(n), int(f), int(s), obs, float(a) if str(a).strip() else None,
                                                None if sch == "none" else sch, grp, bool(lr))
            out = state.run_dir("calibration")
            job = JOBS.start(_session(request), lambda report, cancel: calls.run_calibration(
                list(files), out, choice, settings, text, report, cancel, lines.append), "calibrate")
            for text_ in _follow(job, progress, lines):
                yield text_, *keep
            stats, plot, markdown = job.result()
        except Exception as exc:  # noqa: BLE001 - cancelled: say so; anything else: one line
            if is_cancelled(exc):
                yield "\n".join(lines + ["", "cancelled"]), None, None, None, None
                return
            raise _fail(exc) from None
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
            choice = _model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            job = JOBS.start(_session(request), lambda report, cancel: calls.suggest_recipe(
                folder, choice, budget_, fallback_, None, lines.append), "suggest")
            for text_ in _follow(job, progress, lines):
                yield text_, gr.update()
            yaml_text = job.result()
        except Exception as exc:  # noqa: BLE001
            raise _fail(exc) from None
        yield "\n".join(lines + ["", "done: the editor holds the generated recipe"]), yaml_text

    suggest.click(do_suggest, [report_dir, *model_in, budget, fallback], [status, editor], concurrency_id="device",
                  concurrency_limit=1)

    def do_export(text, ckpt, dt, dev, var, stats, out_name, request: gr.Request = None, progress=gr.Progress()):
        lines: list[str] = []
        try:
            choice = _model_choice(ckpt, RECIPE_NONE, dt, dev, var)
            target = state.output_dir / "checkpoints" / calls.checkpoint_folder_name(out_name)
            job = JOBS.start(_session(request), lambda report, cancel: calls.export_checkpoint(
                text, choice, target, stats, report, cancel, lines.append), "export")
            for text_ in _follow(job, progress, lines):
                yield (text_, *[gr.update()] * 3)
            inspection = job.result()
        except Exception as exc:  # noqa: BLE001
            if is_cancelled(exc):
                yield ("\n".join(lines + ["", "cancelled"]), *[gr.update()] * 3)
                return
            raise _fail(exc) from None
        state.exports.append(target)
        yield ("\n".join(lines + ["", "done: " + inspection]), *[gr.update(choices=state.checkpoints())] * 3)

    cancel.click(_cancel, None, status, queue=False)
    return {"checkpoint": checkpoint, "export": export, "export_fn": do_export,
            "export_in": [editor, *model_in, stats_file, name], "status": status}


# ---------------------------------------------------------------------------------------------------------------
# Evaluate tab
# ---------------------------------------------------------------------------------------------------------------


def _evaluate_tab(state: AppState) -> dict:
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
            degrade = gr.Dropdown(["bicubic", "realbasicvsr"], value="bicubic", label="Degradation (HR -> LR)")
            with gr.Row():
                run = gr.Button("Evaluate", variant="primary", elem_id="evaluate-run")
                cancel = gr.Button("Cancel", variant="stop", elem_id="evaluate-cancel")
            status = gr.Textbox(label="Status", lines=8, max_lines=30, interactive=False, elem_id="evaluate-status",
                                elem_classes="fq-status")
        with gr.Column(scale=2):
            table = gr.Dataframe(label="Comparison", interactive=False, wrap=True, elem_id="evaluate-table")
            plots = gr.Gallery(label="Plots", columns=2, height="auto", elem_id="evaluate-plots")
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
            job = JOBS.start(_session(request), lambda report_, cancel: calls.run_evaluation(
                list(files), entries, out, options, report_, cancel, lines.append), "evaluate")
            for text in _follow(job, progress, lines):
                yield text, gr.update(), gr.update(), gr.update()
            result = job.result()
        except Exception as exc:  # noqa: BLE001
            if is_cancelled(exc):
                yield "\n".join(lines + ["", "cancelled"]), None, None, None
                return
            raise _fail(exc) from None
        yield ("\n".join(lines + ["", f"report written to {out}"]), result.table, result.plots, result.files)

    run.click(do_evaluate, [clips, configs, recipes, device, dtype, metrics, degrade], [status, table, plots, report],
              concurrency_id="device", concurrency_limit=1)
    cancel.click(_cancel, None, status, queue=False)
    return {"checkpoint": configs}


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
                up = _upscale_tab(state)
            with gr.Tab("Quantize", id="quantize", elem_id="tab-quantize"):
                qu = _quantize_tab(state)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate"):
                ev = _evaluate_tab(state)
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
