"""The Upscale tab: a video or an image in, ``flashvsr_q.infer.upscale`` with a pre-flight estimate, progress and
Cancel, and the result beside the input (synced players, comparison slider, download, summary)."""

from __future__ import annotations

import dataclasses

import gradio as gr

from flashvsr_q.app import calls
from flashvsr_q.app.jobs import (
    JOBS,
    backend_choices,
    comparison_frames,
    describe_source,
    is_cancelled,
    output_name,
    tile_arg,
    vram_arg,
)
from flashvsr_q.app.ui import AppState, cancel_job, fail, follow, model_choice, model_widgets, session
from flashvsr_q.errors import FlashVSRError


def upscale_tab(state: AppState) -> dict:
    """Build the tab inside the current ``gr.Tab``; returns the components other tabs update."""
    with gr.Row():
        with gr.Column(scale=1, min_width=340):
            source = gr.File(label="Video or image", file_types=["video", "image"], elem_id="upscale-input")
            source_info = gr.Markdown("Upload a video or an image.", elem_id="upscale-input-info")
            with gr.Accordion("Model", open=True):
                checkpoint, recipe, device, dtype, variant = model_widgets(state)
                pipeline = gr.Radio(["tiny", "full"], value="tiny", label="Pipeline", elem_id="upscale-pipeline",
                                    info="tiny: TCDecoder (fast); full: Wan2.1 VAE decoder (Wan2.1_VAE.pth in the "
                                         "checkpoint folder; slower, more memory)")
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
            raise fail(exc) from None
        is_video = not info.startswith("image")
        return info, path if is_video else None, None, None, None

    source.change(show_source, source, [source_info, in_video, out_video, compare, result], queue=False)
    tiling.change(lambda mode: gr.update(visible=mode == "manual"), tiling, manual_row, queue=False)

    def refresh_backends(dev: str):
        names, note = backend_choices(dev)
        return gr.update(choices=names, value="auto"), note

    device.change(refresh_backends, device, [attention, attention_note], queue=False)

    model_in = [checkpoint, recipe, dtype, device, variant, pipeline]
    options_in = [attention, tiling, tile_size, tile_overlap, vram, scale, seed, color_fix, crf, codec, audio]

    def read(values: dict) -> tuple[str | None, calls.ModelChoice, calls.UpscaleOptions]:
        """The input path, model choice and options from the widgets' values (``values[component]``)."""
        v = values
        choice = model_choice(v[checkpoint], v[recipe], v[dtype], v[device], v[variant])
        choice = dataclasses.replace(choice, pipeline=v[pipeline])
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
            job = JOBS.start(session(request), lambda report, cancel: calls.preflight(path, choice, opt,
                                                                                       lines.append), "estimate")
            yield from follow(job, progress, lines)
            yield "\n".join(lines + ["", "pre-flight: " + job.result()])
        except Exception as exc:  # noqa: BLE001 - shown on the page as one line
            raise fail(exc) from None

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
            job = JOBS.start(session(request), lambda report, cancel: calls.run_upscale(
                path, output, choice, opt, report.frames, cancel, lines.append), "upscale")
            yield {status: "starting", **empty}
            for text in follow(job, progress, lines):
                yield {status: text}
            summary_ = job.result()
        except Exception as exc:  # noqa: BLE001 - cancelled: say so; anything else: one line
            if is_cancelled(exc):
                yield {status: "\n".join(lines + ["", "cancelled"]), **empty}
                return
            raise fail(exc) from None
        done = "done: " + summary_.describe()
        image_pair = comparison_frames(path, output)
        is_video = summary_.kind == "video"
        yield {status: "\n".join(lines + ["", done]), in_video: path if is_video else None,
               out_video: str(output) if is_video else None, compare: image_pair, result: str(output),
               summary: summary_.to_dict()}

    run.click(do_upscale, {source, *model_in, *options_in},
              [status, in_video, out_video, compare, result, summary], concurrency_id="device", concurrency_limit=1)
    cancel.click(cancel_job, None, status, queue=False)
    return {"checkpoint": checkpoint}


