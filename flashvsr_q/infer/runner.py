"""Upscaling files and folders: jobs, segments, resume, OOM fallback, summary (the checks before: ``checks``).

    video file -> video file      (segments + remux; audio and subtitles copied; timestamps kept)
    image      -> image
    image folder -> image folder  (one PNG per input file, same names)
    folder of videos -> folder    (batch: one video each, same names)

Every output is written under a temporary name (``OUT.parts/`` work folder, ``.partial`` files) and renamed
when complete; an existing output is never replaced without ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from flashvsr_q.attention import LCSASettings
from flashvsr_q.errors import FlashVSRError
from flashvsr_q.infer.checks import (
    DTYPES,
    Job,
    Log,
    Preflight,
    load_model,
    log_stderr,
    plan_jobs,
    prepare,
    resolve_device,
    resolve_dtype,
)
from flashvsr_q.infer.memory import (
    MemoryPlan,
    device_budget,
    estimate,
    is_oom,
    module_bytes,
    peak_device_memory,
)
from flashvsr_q.infer.pipeline import (
    Cancelled,
    ChunkRunner,
    LRFrames,
    TiledStreams,
    UpscaleSettings,
    plan_memory,
    smaller_plan,
)
from flashvsr_q.infer.progress import ProgressBar, Summary, peak_rss, reset_device_peaks
from flashvsr_q.infer.resume import (
    STATE_NAME,
    Manifest,
    fingerprint,
    load_states,
    model_fingerprint,
    save_states,
    source_fingerprint,
)
from flashvsr_q.video.segments import EncoderSettings, SegmentedWriter
from flashvsr_q.infer.tiling import Geometry, TilePlan
from flashvsr_q.video.sources import ImageFolderWriter, write_image
from flashvsr_q.model import FlashVSR
from flashvsr_q.model.streaming import CHUNK_FRAMES

if TYPE_CHECKING:
    from flashvsr_q.infer.checks import CalibrationLike, RecipeLike

DEFAULT_SEGMENT_FRAMES = 480  # output frames between resume snapshots (rounded to whole chunks of 8)

# DTYPES, Job, load_model, plan_jobs, resolve_device and resolve_dtype live in ``checks``; importing them from here
# keeps working.
__all__ = ["DEFAULT_SEGMENT_FRAMES", "DTYPES", "Job", "load_model", "plan_jobs", "resolve_device", "resolve_dtype",
           "run_job", "upscale"]


# ---------------------------------------------------------------------------------------------------------------
# sinks: where a job's frames go
# ---------------------------------------------------------------------------------------------------------------


class _VideoSink:
    def __init__(self, job: Job, scale: int, encoder: EncoderSettings, audio: bool):
        self.writer = SegmentedWriter.for_source(job.output, job.source, scale, settings=encoder, copy_audio=audio)
        self.segment = None

    def write(self, segment: int, start: int, frames) -> None:
        if self.segment is None:
            self.segment = self.writer.open_segment(segment, start)
        for rgb in frames:
            self.segment.write(rgb)

    def close_segment(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    def finalize(self) -> None:
        self.close_segment()
        self.writer.finalize()

    def abort(self) -> None:
        if self.segment is not None:
            self.segment.abort()
            self.segment = None


class _ImageFolderSink:
    def __init__(self, job: Job):
        self.job = job
        self.writer = ImageFolderWriter(job.work_dir / "frames", [p.name for p in job.source.files], ".png")

    def write(self, segment: int, start: int, frames) -> None:
        for i, rgb in enumerate(frames):
            self.writer.write(start + i, rgb)

    def close_segment(self) -> None:
        pass

    def finalize(self) -> None:
        out = self.job.output
        if out.exists():
            shutil.rmtree(out)
        (self.job.work_dir / "frames").rename(out)
        shutil.rmtree(self.job.work_dir, ignore_errors=True)

    def abort(self) -> None:
        pass


class _ImageSink:
    def __init__(self, job: Job):
        self.job, self.frame = job, None

    def write(self, segment: int, start: int, frames) -> None:
        self.frame = frames[0]

    def close_segment(self) -> None:
        pass

    def finalize(self) -> None:
        write_image(self.job.output, self.frame)

    def abort(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------------------------
# one job
# ---------------------------------------------------------------------------------------------------------------


def _options(settings: UpscaleSettings, model: FlashVSR, encoder: EncoderSettings, audio: bool, cps: int) -> dict:
    return {"settings": dataclasses.asdict(settings), "dtype": str(model.dtype), "device": model.device.type,
            "backend": model.dit.backend.name, "encoder": dataclasses.asdict(encoder), "audio": audio,
            "chunks_per_segment": cps}


def _memory_plan_from(data: dict, model: FlashVSR, geometry: Geometry, settings: UpscaleSettings) -> MemoryPlan:
    plan = TilePlan.from_dict(data["tiles"])
    est = estimate(model.config, module_bytes(model), model.dtype, geometry, plan, kv_len=settings.lcsa.kv_len,
                   backend=model.dit.backend.name, offload=data["offload"], canvas_on_device=data["canvas_on_device"],
                   color_fix=settings.color_fix, local_range=settings.lcsa.local_range)
    return MemoryPlan(plan, data["offload"], data["canvas_on_device"], est, data.get("budget"))


def _plan_dict(mp: MemoryPlan) -> dict:
    return {"tiles": mp.plan.to_dict(), "offload": mp.offload, "canvas_on_device": mp.canvas_on_device,
            "budget": mp.budget}


def run_job(model: FlashVSR, job: Job, settings: UpscaleSettings, *, tile: str = "auto", vram: int | None = None,
            encoder: EncoderSettings | None = None, audio: bool = True, resume: bool = False,
            overwrite: bool = False, segment_frames: int = DEFAULT_SEGMENT_FRAMES, show_progress: bool = True,
            progress: Callable[[int, int], None] | None = None, cancel=None, log: Log = log_stderr) -> Summary:
    """Upscale one job (a video, an image or an image folder) with ``model``; see :func:`upscale`."""
    encoder = encoder or EncoderSettings()
    source, device = job.source, model.device
    geometry = Geometry(source.width, source.height, settings.scale)
    cps = max(1, round(segment_frames / CHUNK_FRAMES))
    budget = vram if vram is not None else device_budget(device)
    fp = fingerprint(source_fingerprint(source), model_fingerprint(model),
                     _options(settings, model, encoder, audio, cps))
    work = job.work_dir
    manifest = Manifest.load(work) if work is not None and work.exists() and resume else None
    if work is not None and work.exists() and manifest is None:
        if not (overwrite or resume):
            raise FlashVSRError(f"an interrupted run left {work}; use --resume to continue it or --overwrite to "
                                "start over")
        shutil.rmtree(work)
    if manifest is not None:
        manifest.check(fp)
        mp = _memory_plan_from(manifest.plan, model, geometry, settings)
    else:
        mp = plan_memory(model, geometry, tile, budget, settings)
    summary = Summary(str(source.path), str(job.output), job.kind, source.num_frames, (source.width, source.height),
                      (geometry.out_width, geometry.out_height), float(source.fps), device=str(device),
                      dtype=str(model.dtype).removeprefix("torch."), backend=model.dit.backend.name,
                      model=model.config.name, scale=settings.scale, color_fix=settings.color_fix)
    reset_device_peaks(device)
    while True:
        log(Preflight.of(source, job.output, geometry, mp, model).describe())
        try:
            _run(model, job, geometry, settings, mp, manifest, fp, encoder, audio, cps, summary, show_progress,
                 progress, cancel)
            break
        except Exception as exc:
            if not is_oom(exc):
                if isinstance(exc, FlashVSRError) and not isinstance(exc, Cancelled) and work is not None:
                    shutil.rmtree(work, ignore_errors=True)  # bad input mid-run: nothing to resume
                raise
            smaller = smaller_plan(model, geometry, mp, budget, settings)
            summary.oom_retries.append(f"{mp.plan.describe()} -> {smaller.plan.describe()}")
            log(f"out of device memory with {mp.plan.describe()}; retrying from the start with "
                f"{smaller.plan.describe()}")
            if work is not None:
                shutil.rmtree(work, ignore_errors=True)
            mp, manifest = smaller, None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary.tiling, summary.state_offload = mp.plan.describe(), mp.offload
    summary.estimated_peak = mp.estimate.peak
    peaks = peak_device_memory(device)
    if peaks is not None:
        summary.peak_allocated, summary.peak_reserved = peaks["allocated"], peaks["reserved"]
    summary.peak_rss = peak_rss()
    return summary


def _run(model, job, geometry, settings, mp, manifest, fp, encoder, audio, cps, summary, show_progress, progress,
         cancel) -> None:
    source, work = job.source, job.work_dir
    sink = (_VideoSink(job, settings.scale, encoder, audio) if job.kind == "video"
            else _ImageFolderSink(job) if job.kind == "image_folder" else _ImageSink(job))
    states, chunk, lr_pos, lr_tail, start_frame = None, 0, 0, None, 0
    if manifest is not None and manifest.progress.get("state"):
        states, extra = load_states(work / STATE_NAME, model.device)
        chunk, lr_pos, start_frame = extra["chunks"], extra["lr_position"], extra["frames"]
    elif work is not None:
        manifest = Manifest.create(work, fp, _plan_dict(mp))
    engine = TiledStreams(model, geometry, mp, settings, states)
    n = source.num_frames
    if lr_pos:
        first = min(lr_pos - 4, n - 1)
        reader = LRFrames((f.rgb for f in source.frames(first)), geometry, model.dtype, first, n)
        if first < lr_pos - 4:
            reader.take(first, lr_pos - 4)
        lr_tail = reader.take(lr_pos - 4, lr_pos)
    else:
        reader = LRFrames((f.rgb for f in source.frames(0)), geometry, model.dtype, 0, n)
    summary.resumed_from_frame = start_frame
    runner = ChunkRunner(engine, reader, settings, start_chunk=chunk, lr_tail=lr_tail, cancel=cancel)
    bar = ProgressBar(source.path.name, n, enabled=show_progress)
    bar.update(start_frame, n, since=start_frame)
    t0 = time.perf_counter()
    try:
        for result in runner:
            segment = result.index // cps
            sink.write(segment, result.start, result.frames)
            done = result.start + len(result.frames)
            if (result.index + 1) % cps == 0 or result.last:
                sink.close_segment()
                if manifest is not None:
                    extra = {"chunks": result.index + 1, "lr_position": result.lr_position, "frames": done}
                    save_states(work / STATE_NAME, engine.states, extra)
                    manifest.progress = {**extra, "segments": segment + 1, "state": STATE_NAME}
                    manifest.write()
            bar.update(done, n, since=start_frame)
            if progress is not None:
                progress(done, n)
        sink.finalize()
    except BaseException:
        sink.abort()
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------------------------


def upscale(
    input: str | Path, output: str | Path, *, checkpoint: str | Path | None = None, model: FlashVSR | None = None,
    recipe: RecipeLike | None = None, variant: str | None = None, calibration: CalibrationLike | None = None,
    scale: int = 4, tile: str = "auto",
    vram: int | str | None = None, attention: str = "auto", color_fix: str = "adain",
    dtype: str | torch.dtype | None = None, device: str | torch.device | None = None, seed: int = 0,
    lcsa: LCSASettings | None = None, codec: str = "libx264", crf: float = 18, preset: str = "medium",
    pix_fmt: str = "yuv420p", audio: bool = True, resume: bool = False, overwrite: bool = False,
    segment_frames: int = DEFAULT_SEGMENT_FRAMES, show_progress: bool = True,
    progress: Callable[[int, int], None] | None = None, cancel=None, log: Log = log_stderr,
) -> Summary | list[Summary] | None:
    """Upscale a video, an image, an image folder or a folder of videos; returns the summary (a list in batch mode,
    None when ``resume`` finds the output already complete).

    Args:
        input, output: paths (see the module docstring for the kinds).
        checkpoint: checkpoint folder (None: ``$FLASHVSR_Q_CHECKPOINT`` or the shipped small model); or pass
            ``model`` (already on its device and dtype; then checkpoint, recipe, variant, calibration and dtype
            must stay None).
        recipe: quantization recipe applied on the fly while loading: a shipped name (``int8-weight-only``), a
            YAML path or a ``Recipe``. The memory plan then counts the quantized weights.
        variant: ``"v1"`` | ``"v1.1"``: the LQ projection of an official folder (its files cannot tell; None means
            v1.1). Folders that record their architecture must agree.
        calibration: statistics from ``flashvsr-q calibrate`` (path or ``CalibrationStats``) for recipes with static
            activation scales or SmoothQuant.
        scale: integer 1..8 (trained for 4). tile: ``auto`` | ``off`` | ``SIZExOVERLAP`` in LR px.
        vram: device memory budget (bytes or "8GB"); None: the free CUDA memory, no limit on CPU.
        attention: backend name or ``auto``. color_fix: ``adain`` | ``wavelet`` | ``none``.
        dtype: ``bf16`` | ``fp32`` (default bf16 on CUDA, fp32 on CPU). device: ``cpu`` | ``cuda`` (default cuda
            when available).
        codec, crf, preset, pix_fmt: video encoder settings. audio: copy audio and subtitle streams.
        resume: continue an interrupted run from its manifest (refused if input, model or options changed).
        overwrite: replace an existing output (or an interrupted run's work folder).
        segment_frames: output frames per segment / resume snapshot.
        progress: called with (frames done, total); cancel: Event or callable, checked between tiles.
        log: receives the pre-flight report and notes, one message at a time (default: stderr).
    Raises:
        FlashVSRError (and subclasses): bad options, inputs, outputs, checkpoint, recipe or device, all checked
        before any frame is decoded; ``Cancelled`` when cancelled.
    """
    run = prepare(input, output, checkpoint=checkpoint, model=model, recipe=recipe, variant=variant,
                  calibration=calibration, scale=scale, tile=tile, vram=vram, attention=attention,
                  color_fix=color_fix, dtype=dtype, device=device, seed=seed, lcsa=lcsa, codec=codec, crf=crf,
                  preset=preset, pix_fmt=pix_fmt, resume=resume, overwrite=overwrite, log=log)
    if run.batch:
        Path(output).mkdir(exist_ok=True)
    summaries = []
    for job in run.jobs:
        summaries.append(run_job(run.model, job, run.settings, tile=tile, vram=run.budget, encoder=run.encoder,
                                 audio=audio, resume=resume, overwrite=overwrite, segment_frames=segment_frames,
                                 show_progress=show_progress, progress=progress, cancel=cancel, log=log))
    return summaries if run.batch else (summaries[0] if summaries else None)
